"""A training case: CT image, nodule label map, lungs, nodule records, and its weak labels.

Weak labels come in two kinds: per axial slice (the NAM paper's slice-level labels) and per
patch (LUNA16-style: a patch is positive when a nodule centre lies in its centre region).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from wsnodule_core.data.insertion import PLACEMENTS, NoduleRecord, insert_nodules
from wsnodule_core.data.nodule_shape import NoduleShape
from wsnodule_core.errors import GeometryMismatchError, WsnoduleError
from wsnodule_core.io.volume import Volume


@dataclass(frozen=True)
class PatchLabel:
    """A patch: its first voxel ``start`` (z, y, x), size in voxels, label and centre."""

    start: tuple[int, int, int]
    size: tuple[int, int, int]
    label: int

    @property
    def centre(self) -> tuple[float, float, float]:
        return tuple(s + (n - 1) / 2.0 for s, n in zip(self.start, self.size))  # type: ignore[return-value]

    @property
    def region(self) -> tuple[slice, slice, slice]:
        return tuple(slice(s, s + n) for s, n in zip(self.start, self.size))  # type: ignore[return-value]


@dataclass(frozen=True, eq=False)
class Patches:
    """Patches cut from a case: ``images`` (n, z, y, x) float32 HU and ``labels`` (n,) 0/1."""

    images: np.ndarray
    labels: np.ndarray
    patches: list[PatchLabel]


@dataclass(frozen=True, eq=False)
class Case:
    """One case of a data set.

    ``mask`` is a label map on ``image``'s grid (0 background, ``k`` = nodule ``k``);
    ``lungs`` a boolean array on the same grid; ``source`` says where the image came from
    ('phantom', 'hybrid:<series>', 'lidc', ...). ``negatives_ok`` is False when the image may
    hold an unlabelled lesion, so negative patches must not be drawn from it.
    ``negative_sites_xyz`` are world points where nodule-free examples are centred (a crop of real
    lung): patch cutters centre their negatives there, as they centre positives on nodules, instead
    of drawing lung voxels. ``unsafe_slices``: axial slices that may hold an unlabelled lesion (a
    background's known tumour); slice sets take no negative from them.
    """

    case_id: str
    image: Volume
    mask: Volume
    lungs: np.ndarray
    nodules: list[NoduleRecord]
    source: str
    negatives_ok: bool = True
    notes: tuple[str, ...] = field(default_factory=tuple)
    negative_sites_xyz: tuple[tuple[float, float, float], ...] = ()
    unsafe_slices: tuple[int, ...] = ()  # z indices that may hold an unlabelled lesion: no negatives there

    def __post_init__(self) -> None:
        if not self.image.same_geometry(self.mask):
            raise GeometryMismatchError(f"case {self.case_id}: the mask's geometry differs from the image's.")
        if np.shape(self.lungs) != self.image.shape:
            raise GeometryMismatchError(
                f"case {self.case_id}: the lung mask has shape {np.shape(self.lungs)}, the image {self.image.shape}."
            )

    def slice_labels(self, min_area_mm2: float = 0.0) -> np.ndarray:
        """Per axial slice: 1 when the slice holds nodule voxels, else 0 (int8, length z).

        ``min_area_mm2 > 0`` applies the NAM rule: a slice is positive only when its nodule
        area is at least that many square millimetres.
        """
        area_per_voxel = float(self.image.spacing[1] * self.image.spacing[2])
        counts = np.count_nonzero(np.asarray(self.mask.array) > 0, axis=(1, 2))
        if min_area_mm2 <= 0:
            return (counts > 0).astype(np.int8)
        return ((counts > 0) & (counts * area_per_voxel >= min_area_mm2)).astype(np.int8)

    def _patch_size(self, patch_size_mm: float | Sequence[float]) -> np.ndarray:
        size_mm = np.broadcast_to(np.asarray(patch_size_mm, float), (3,))
        return np.maximum(1, np.round(size_mm / np.asarray(self.image.spacing))).astype(int)

    def patch_labels(
        self,
        patch_size_mm: float | Sequence[float] = 32.0,
        stride_mm: float | Sequence[float] | None = None,
        *,
        centre_fraction: float = 0.5,
    ) -> list[PatchLabel]:
        """Sliding-window patches whose centre lies in the lungs, with LUNA16-style labels.

        A patch is 1 when a nodule centre lies inside its central region (``centre_fraction``
        of its size along each axis), 0 when it holds no nodule voxel; patches that touch a
        nodule without holding its centre in the central region are ambiguous and left out.
        """
        size = self._patch_size(patch_size_mm)
        stride = self._patch_size(stride_mm if stride_mm is not None else patch_size_mm)
        shape = np.array(self.image.shape)
        starts = [np.unique(np.r_[np.arange(0, max(n - s, 0) + 1, st), max(n - s, 0)])
                  for n, s, st in zip(shape, size, stride)]
        size = np.minimum(size, shape)
        centres = np.array([n.centre_zyx for n in self.nodules], float).reshape(-1, 3)
        labels = np.asarray(self.mask.array) > 0
        lungs = np.asarray(self.lungs, bool)
        out: list[PatchLabel] = []
        for z in starts[0]:
            for y in starts[1]:
                for x in starts[2]:
                    start = np.array([z, y, x])
                    centre = np.round(start + (size - 1) / 2.0).astype(int)
                    if not lungs[tuple(centre)]:
                        continue
                    out_label = self._label(start, size, centres, labels, centre_fraction)
                    if out_label is not None:
                        out.append(PatchLabel(tuple(int(v) for v in start), tuple(int(v) for v in size),
                                              out_label))
        return out

    @staticmethod
    def _label(start, size, centres, labels, centre_fraction) -> int | None:
        lo = start + (size - 1) / 2.0 - centre_fraction * size / 2.0
        hi = start + (size - 1) / 2.0 + centre_fraction * size / 2.0
        if len(centres) and np.any(np.all((centres >= lo) & (centres <= hi), axis=1)):
            return 1
        region = tuple(slice(int(s), int(s + n)) for s, n in zip(start, size))
        return None if labels[region].any() else 0

    def extract_patches(
        self,
        patch_size_mm: float | Sequence[float] = 32.0,
        stride_mm: float | Sequence[float] | None = None,
        *,
        n_negative: int | None = None,
        seed: int = 0,
        centre_fraction: float = 0.5,
    ) -> Patches:
        """Cut the labelled patches: one centred on each nodule (label 1), and ``n_negative``
        negatives (default: as many as positives, at least one) drawn from the sliding-window
        patches in the lungs that hold no nodule voxel. No negatives when ``negatives_ok`` is False.
        """
        size = np.minimum(self._patch_size(patch_size_mm), self.image.shape)
        shape = np.array(self.image.shape)
        chosen: list[PatchLabel] = []
        for nodule in self.nodules:
            start = np.clip(np.round(np.asarray(nodule.centre_zyx) - (size - 1) / 2.0).astype(int), 0, shape - size)
            chosen.append(PatchLabel(tuple(int(v) for v in start), tuple(int(v) for v in size), 1))
        if self.negatives_ok:
            negatives = [p for p in self.patch_labels(patch_size_mm, stride_mm, centre_fraction=centre_fraction)
                         if p.label == 0]
            want = max(1, len(self.nodules)) if n_negative is None else n_negative
            rng = np.random.default_rng(seed)
            if negatives and want > 0:
                pick = rng.choice(len(negatives), size=min(want, len(negatives)), replace=False)
                chosen.extend(negatives[int(i)] for i in sorted(pick))
        image = np.asarray(self.image.array, np.float32)
        images = (np.stack([image[p.region] for p in chosen]) if chosen
                  else np.zeros((0, *size), np.float32))
        return Patches(images, np.array([p.label for p in chosen], np.int8), chosen)


def case_from_insertion(case_id: str, image: Volume, lungs: np.ndarray, shapes: Sequence[NoduleShape], *,
                        rng: np.random.Generator, source: str, vessels: np.ndarray | None = None,
                        placements: Sequence[str] = PLACEMENTS, negatives_ok: bool = True,
                        notes: tuple[str, ...] = (), **insert_kwargs) -> Case:
    """Insert ``shapes`` into ``image`` and wrap the result as a :class:`Case`."""
    result = insert_nodules(image, lungs, shapes, rng=rng, vessels=vessels, placements=placements,
                            **insert_kwargs)
    skipped = tuple(f"skipped {s.shape_id} ({s.placement}): {s.reason}" for s in result.skipped)
    return Case(case_id, result.volume, image.with_array(result.label_mask), np.asarray(lungs, bool),
                result.nodules, source, negatives_ok, tuple(notes) + skipped)


def make_phantom_case(
    case_id: str,
    *,
    seed: int,
    shape: tuple[int, int, int] = (48, 192, 192),
    spacing: tuple[float, float, float] = (5.0, 1.8, 1.8),
    shapes: Sequence[NoduleShape] = (),
    n_nodules: int | None = None,
    placements: Sequence[str] = PLACEMENTS,
    phantom_kwargs: dict | None = None,
    **insert_kwargs,
) -> Case:
    """A procedural chest phantom (``wsnodule_core.data.phantom``) with LIDC shapes inserted.

    ``n_nodules`` (default: all) of ``shapes`` are inserted, in order; the phantom's vessel
    mask guides the juxtavascular placement.
    """
    try:
        from wsnodule_core.data.phantom import make_phantom
    except ImportError as error:  # pragma: no cover - the phantom ships with the package
        raise WsnoduleError("the chest phantom module (wsnodule_core.data.phantom) is not available "
                            "in this installation; reinstall wsnodule.") from error
    rng = np.random.default_rng(seed)
    phantom = make_phantom(shape, spacing, seed=int(rng.integers(2**31)), **(phantom_kwargs or {}))
    chosen = list(shapes)[: len(shapes) if n_nodules is None else n_nodules]
    return case_from_insertion(case_id, phantom.volume, np.asarray(phantom.lungs, bool), chosen, rng=rng,
                               source="phantom", vessels=np.asarray(phantom.vessels, bool),
                               placements=placements, **insert_kwargs)
