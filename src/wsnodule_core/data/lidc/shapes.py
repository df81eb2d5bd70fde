"""Real nodule shapes from LIDC-IDRI (for phantom / hybrid insertion) and database statistics."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np

from wsnodule_core.data.lidc.annotations import (
    LidcNodule,
    ScanInfo,
    cluster_nodules,
    iter_scans,
    list_scans,
    select_nodules,
)
from wsnodule_core.data.lidc.consensus import MergeMethod, merge_reader_masks, volume_mm3
from wsnodule_core.data.lidc.scan import reader_masks, scan_grid
from wsnodule_core.data.nodule_shape import TEXTURES, NoduleShape, texture_class
from wsnodule_core.errors import LidcParameterError

ProgressCallback = Callable[[int, int], None]
CancelCallback = Callable[[], bool]


def _check_textures(textures: Iterable[str] | None) -> frozenset[str] | None:
    if textures is None:
        return None
    chosen = frozenset(textures)
    unknown = chosen - set(TEXTURES)
    if unknown or not chosen:
        raise LidcParameterError(f"textures must be a non-empty subset of {TEXTURES}, got {sorted(chosen)}; "
                                 "give None to keep every texture.")
    return chosen


def nodule_shape(
    nodule: LidcNodule,
    *,
    merge: MergeMethod = "consensus",
    consensus_level: float = 0.5,
    margin_vox: int = 2,
) -> NoduleShape | None:
    """The merged mask of one nodule as a :class:`NoduleShape` (None if the merge is empty).

    The mask is on the scan's native grid, spacing ``(slice spacing, pixel spacing, pixel
    spacing)``, cropped to the merged mask plus ``margin_vox`` empty voxels on each side.
    ``volume_mm3`` is that mask's voxel count x voxel volume, ``diameter_mm`` the mean over
    readers of pylidc's greatest axial diameter, ``texture_rating`` the mean texture rating.
    """
    merged = merge_reader_masks(reader_masks(nodule), merge, consensus_level)
    if not merged.mask.any():
        return None
    nz = np.nonzero(merged.mask)
    crop = merged.mask[tuple(slice(int(i.min()), int(i.max()) + 1) for i in nz)]
    mask = np.pad(crop, margin_vox, constant_values=False)
    spacing = scan_grid(nodule.annotations[0].scan).spacing
    return NoduleShape(
        mask=mask,
        spacing=spacing,
        diameter_mm=nodule.diameter_mm,
        volume_mm3=volume_mm3(mask, spacing),
        texture_rating=nodule.texture_rating,
        annotation_ids=nodule.annotation_ids,
        patient_id=nodule.patient_id,
        series_uid=nodule.series_uid,
        ratings=dict(nodule.ratings),
    )


def lidc_nodule_shapes(
    n: int | None = None,
    *,
    seed: int = 0,
    min_diameter_mm: float = 3.0,
    max_diameter_mm: float | None = None,
    min_readers: int = 2,
    consensus_level: float = 0.5,
    merge: MergeMethod = "consensus",
    textures: Iterable[str] | None = None,
    scan_filter: Callable[[ScanInfo], bool] | None = None,
    max_per_scan: int | None = 1,
    margin_vox: int = 2,
    progress: ProgressCallback | None = None,
    cancel: CancelCallback | None = None,
) -> list[NoduleShape]:
    """``n`` real nodule shapes from LIDC-IDRI, the same ones for the same arguments and seed.

    Scans are visited in a seeded random order and clustered one at a time, so a small
    ``n`` touches only a few dozen scans (about 0.1 s each). In each scan the nodules that
    qualify (at least ``min_readers`` annotations, mean diameter in
    ``[min_diameter_mm, max_diameter_mm]``, texture class in ``textures``) are shuffled and
    at most ``max_per_scan`` are taken (None: all). The shapes for a smaller ``n`` are the
    first ones of a larger ``n`` with the same seed and filters.

    Parameters
    ----------
    n
        Number of shapes; None visits every scan (slow: minutes).
    merge, consensus_level
        How readers are merged (:func:`~wsnodule_core.data.lidc.consensus.merge_reader_masks`).
    textures
        Texture classes to keep (subset of ``('ground_glass', 'part_solid', 'solid')``).
    scan_filter
        Keep only scans for which ``scan_filter(ScanInfo)`` is true.
    progress, cancel
        ``progress(scans_done, scans_total)``; ``cancel()`` returning True stops early and
        returns the shapes found so far.
    """
    if n is not None and n < 0:
        raise LidcParameterError(f"n must be >= 0 or None, got {n}; give a number of shapes, or None for "
                                 "every qualifying nodule.")
    if max_per_scan is not None and max_per_scan < 1:
        raise LidcParameterError(f"max_per_scan must be >= 1 or None, got {max_per_scan}; give None to take "
                                 "every qualifying nodule of a scan.")
    chosen_textures = _check_textures(textures)
    infos = list_scans(min_annotations=max(min_readers, 1))
    if scan_filter is not None:
        infos = [info for info in infos if scan_filter(info)]
    rng = np.random.default_rng(seed)
    shapes: list[NoduleShape] = []
    order = [infos[i].scan_id for i in rng.permutation(len(infos))]
    # small batches first: a small n is usually reached within the first few dozen scans
    batches = iter_scans(order, batch_size=8 if n is not None and n <= 8 else 24)
    for done, scan in enumerate(batches):
        if (n is not None and len(shapes) >= n) or (cancel is not None and cancel()):
            break
        nodules = select_nodules(
            cluster_nodules(scan),
            min_readers=min_readers,
            min_diameter_mm=min_diameter_mm,
            max_diameter_mm=max_diameter_mm,
        )
        if chosen_textures is not None:
            nodules = [x for x in nodules if texture_class(x.texture_rating) in chosen_textures]
        taken = 0
        for index in rng.permutation(len(nodules)):
            if (n is not None and len(shapes) >= n) or (max_per_scan is not None and taken >= max_per_scan):
                break
            shape = nodule_shape(
                nodules[index], merge=merge, consensus_level=consensus_level, margin_vox=margin_vox
            )
            if shape is not None:
                shapes.append(shape)
                taken += 1
        if progress is not None:
            progress(done + 1, len(infos))
    return shapes


@dataclass(frozen=True)
class LidcStatistics:
    """Per-nodule values over the database (one entry per nodule cluster)."""

    diameters_mm: np.ndarray
    texture_ratings: np.ndarray
    malignancy_ratings: np.ndarray
    n_readers: np.ndarray
    series_uids: tuple[str, ...]
    complete: bool

    @property
    def texture_classes(self) -> tuple[str, ...]:
        return tuple(texture_class(t) for t in self.texture_ratings)


def lidc_database_statistics(
    *,
    min_readers: int = 1,
    series_uids: Sequence[str] | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelCallback | None = None,
) -> LidcStatistics:
    """Diameter, texture and malignancy of every nodule cluster with >= ``min_readers`` readers.

    Clusters every scan (about 1-2 minutes for the 1018 scans); ``series_uids`` restricts
    it. ``progress(done, total)`` is called after each scan; when ``cancel()`` returns True
    the statistics gathered so far are returned with ``complete=False``.
    """
    infos = list_scans(series_uids=series_uids, min_annotations=max(min_readers, 1))
    rows: list[tuple[float, float, float, int, str]] = []
    complete = True
    for done, scan in enumerate(iter_scans([info.scan_id for info in infos])):
        if cancel is not None and cancel():
            complete = False
            break
        for nodule in select_nodules(cluster_nodules(scan), min_readers=min_readers):
            rows.append(
                (
                    nodule.diameter_mm,
                    nodule.texture_rating,
                    nodule.ratings["malignancy"],
                    nodule.n_readers,
                    nodule.series_uid,
                )
            )
        if progress is not None:
            progress(done + 1, len(infos))
    columns = list(zip(*rows)) if rows else [(), (), (), (), ()]
    return LidcStatistics(
        diameters_mm=np.asarray(columns[0], dtype=float),
        texture_ratings=np.asarray(columns[1], dtype=float),
        malignancy_ratings=np.asarray(columns[2], dtype=float),
        n_readers=np.asarray(columns[3], dtype=int),
        series_uids=tuple(columns[4]),
        complete=complete,
    )
