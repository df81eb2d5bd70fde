"""Hybrid cases: a real chest CT as background with real LIDC nodule shapes inserted.

The real scans carry no nodule annotations, so the label map holds only the inserted nodules.
A scan known to show an unlabelled lesion (see :data:`KNOWN_UNLABELLED_LESIONS`) is marked so
that no negative (nodule-free) patches are drawn from it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from wsnodule_core.data.cases import Case, case_from_insertion
from wsnodule_core.data.insertion import PLACEMENTS, derive_vessels
from wsnodule_core.data.nodule_shape import NoduleShape
from wsnodule_core.image.resample import resample_to_spacing
from wsnodule_core.image.window import AIR_HU
from wsnodule_core.errors import DatasetBuildError
from wsnodule_core.io.volume import Volume

#: Real series in ``$WSNODULE_DATA/chest-ct`` that hold a lesion nobody labelled.
KNOWN_UNLABELLED_LESIONS = {
    "tcga-34-2605": "a lung mass in the right lower lobe (TCGA-LUSC): not nodule-free, no negatives from it",
}


def known_lesion_boxes(name: str) -> tuple:
    """World boxes ``((x, y, z) lo, (x, y, z) hi)`` that inserted nodules keep clear of in the real
    series ``name`` (:data:`~wsnodule_core.data.nodule_free.KNOWN_LESION_BOXES`)."""
    from wsnodule_core.data.nodule_free import KNOWN_LESION_BOXES

    return KNOWN_LESION_BOXES.get(name, ())


def box_mask(ct: Volume, boxes) -> np.ndarray | None:
    """The voxels of ``ct`` inside any of the world ``boxes`` (the index box of each box's corners: exact
    for axis-aligned scans, a little larger for oblique ones); None when there are none."""
    if not boxes:
        return None
    from itertools import product

    mask = np.zeros(ct.shape, bool)
    for lo, hi in boxes:
        index = ct.world_to_index(np.array(list(product(*zip(lo, hi))), float))
        start = np.clip(np.floor(index.min(axis=0)).astype(int), 0, ct.shape)
        stop = np.clip(np.ceil(index.max(axis=0)).astype(int) + 1, 0, ct.shape)
        mask[tuple(slice(a, b) for a, b in zip(start, stop))] = True
    return mask


def tumour_boxes_of(ct: Volume) -> tuple:
    """World boxes of the annotated tumours of a Lung-PET-CT-Dx series (read from the collection's
    ``Annotation/`` folder beside ``Lung-PET-CT-Dx/``, every box of its subject: the reconstructions
    share one frame); () for any other CT."""
    parts = Path(ct.metadata.source_path or "").parts
    if "Lung-PET-CT-Dx" not in parts[:-1]:
        return ()
    at = len(parts) - 1 - parts[::-1].index("Lung-PET-CT-Dx")
    root = Path(*parts[:at])
    if not (root / "Annotation").is_dir():
        return ()
    from wsnodule_core.data.tumour_boxes import read_tumour_boxes

    series = read_tumour_boxes(root, [parts[at + 1]])
    return tuple((tuple(t.lo), tuple(t.hi)) for s in series for t in s.tumours)


def unsafe_slices(lesions: np.ndarray, margin_slices: int = 1) -> tuple[int, ...]:
    """The axial slices that a lesion mask ``(z, y, x)`` reaches, grown by ``margin_slices``."""
    reached = np.flatnonzero(np.asarray(lesions).any(axis=(1, 2)))
    grown = {int(z + d) for z in reached for d in range(-margin_slices, margin_slices + 1)}
    return tuple(sorted(z for z in grown if 0 <= z < lesions.shape[0]))


def series_name(ct: Volume) -> str:
    """A short subject name for a real CT: its source folder's name, else its series UID."""
    if ct.metadata.source_path:
        return Path(ct.metadata.source_path).name or Path(ct.metadata.source_path).parent.name
    return ct.metadata.series_uid or "ct"


def lesion_mask(ct: Volume, lesions: Sequence[tuple[Sequence[float], float]], margin_mm: float = 3.0
                ) -> np.ndarray | None:
    """Known lesions of ``ct`` as a boolean mask: a ball of ``diameter / 2 + margin_mm`` per lesion.

    ``lesions`` holds ``(centre_xyz, diameter_mm)`` pairs in world mm (e.g. the VOIs cut from this
    series); None when there are none. Give it as ``avoid`` so inserted nodules keep clear of them.
    """
    if not lesions:
        return None
    mask = np.zeros(ct.shape, bool)
    spacing = np.asarray(ct.spacing, float)
    for centre_xyz, diameter in lesions:
        centre = np.asarray(ct.world_to_index(centre_xyz), float)  # (z, y, x)
        radius = 0.5 * float(diameter) + margin_mm
        lo = np.maximum(np.floor(centre - radius / spacing).astype(int), 0)
        hi = np.minimum(np.ceil(centre + radius / spacing).astype(int) + 1, ct.shape)
        if np.any(hi <= lo):
            continue
        grid = np.meshgrid(*[(np.arange(a, b) - c) * s for a, b, c, s in zip(lo, hi, centre, spacing)],
                           indexing="ij")
        mask[tuple(slice(a, b) for a, b in zip(lo, hi))] |= sum(g * g for g in grid) <= radius ** 2
    return mask


def make_hybrid_case(
    ct: Volume,
    case_id: str,
    *,
    seed: int,
    shapes: Sequence[NoduleShape],
    n_nodules: int | None = None,
    lungs: np.ndarray | None = None,
    spacing: Sequence[float] | None = None,
    placements: Sequence[str] = PLACEMENTS,
    subject: str | None = None,
    **insert_kwargs,
) -> Case:
    """Insert ``n_nodules`` (default: all) of ``shapes`` into the real CT ``ct``.

    Parameters
    ----------
    ct
        The real chest CT (HU).
    lungs
        Its lung mask; by default :func:`wsnodule_core.data.lung.segment_lungs` computes it.
    spacing
        Resample the CT (and a given lung mask) to this (z, y, x) spacing first, so that a data
        set shares one grid.
    subject
        The real series' name (default from the CT's path); a name in
        :data:`KNOWN_UNLABELLED_LESIONS` marks the case as not safe for negatives.
    """
    if spacing is not None:
        ct = resample_to_spacing(ct, spacing, fill=AIR_HU, keep_dtype=True)
        if lungs is not None:
            raise DatasetBuildError(
                f"both a lung mask and spacing={spacing} were given: the mask is on the CT's own grid, not "
                "the resampled one. Give either lungs (on the CT's grid) or spacing (the lungs are then "
                "segmented)."
            )
    if lungs is None:
        from wsnodule_core.data.lung import segment_lungs

        lungs = np.asarray(segment_lungs(ct).lungs, bool)
    subject = subject or series_name(ct)
    lesion = KNOWN_UNLABELLED_LESIONS.get(subject)
    vessels = derive_vessels(ct, lungs)
    rng = np.random.default_rng(seed)
    chosen = list(shapes)[: len(shapes) if n_nodules is None else n_nodules]
    notes = (f"{subject}: {lesion}",) if lesion else ()
    return case_from_insertion(case_id, ct, lungs, chosen, rng=rng, source=f"hybrid:{subject}", vessels=vessels,
                               placements=placements, negatives_ok=lesion is None, notes=notes,
                               **insert_kwargs)
