"""Sparse annotations (points, boxes, marked slices) in voxel index space, and their simulation.

Every annotation is given in voxel indices ``(z, y, x)`` of one volume grid (``SparseAnnotations.shape``);
slices are axial (index ``z``). Simulation reads a ground-truth mask: a nodule is a 26-connected
component (``by="components"``) or one label value (``by="labels"``), numbered as
:func:`wsnodule_core.nodules.nodule_label_map` numbers them.

Point simulation follows PW4MedSeg's code: farthest-point sampling (FPS) over a random half of each
nodule's voxels (``sample_fraction=0.5``), the first point drawn at random from that half, distances in
millimetres (the voxel spacing is used, so anisotropic grids are sampled evenly in space). When a nodule
has fewer candidate voxels than points asked for, every candidate is returned (FPS cannot place more
distinct points than there are voxels).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
from scipy import ndimage

from wsnodule_core.errors import SparseAnnotationError
from wsnodule_core.io.volume import Volume
from wsnodule_core.nodules import nodule_label_map

Index = tuple[float, float, float]
IntIndex = tuple[int, int, int]


# --- annotation types -------------------------------------------------------


def _as_index(value: Sequence[float], what: str) -> Index:
    arr = np.asarray(value, dtype=float).reshape(-1)
    if arr.size != 3 or not np.all(np.isfinite(arr)):
        raise SparseAnnotationError(f"{what}: expected three finite voxel indices (z, y, x), got {value!r}.")
    return tuple(float(v) for v in arr)  # type: ignore[return-value]


def _as_int_index(value: Sequence[float], what: str) -> IntIndex:
    idx = _as_index(value, what)
    if any(v != round(v) for v in idx):
        raise SparseAnnotationError(f"{what}: box corners are whole voxel indices (z, y, x), got {value!r}.")
    return tuple(int(round(v)) for v in idx)  # type: ignore[return-value]


def _outside(index: Sequence[float], shape: Sequence[int]) -> bool:
    rounded = np.round(np.asarray(index, float))
    return bool(np.any(rounded < 0) or np.any(rounded > np.asarray(shape) - 1))


@dataclass(frozen=True)
class PointAnnotation:
    """Points ``(z, y, x)`` (continuous voxel indices allowed) with a label each: 1 nodule, 0 background.

    ``labels`` empty means every point is a nodule point. ``nodule`` optionally names the nodule (1..n)
    the points belong to; the pseudo-labeller normalises each :class:`PointAnnotation` on its own, so
    give one per nodule.
    """

    points: tuple[Index, ...]
    labels: tuple[int, ...] = ()
    nodule: int | None = None

    def __post_init__(self) -> None:
        points = tuple(_as_index(p, f"point {i}") for i, p in enumerate(self.points))
        if not points:
            raise SparseAnnotationError("a PointAnnotation needs at least one point; drop empty point sets.")
        labels = tuple(int(v) for v in self.labels)
        if labels and len(labels) != len(points):
            raise SparseAnnotationError(
                f"{len(points)} points but {len(labels)} labels: give one label per point (1 nodule, "
                "0 background) or none (all nodule).")
        bad = [i for i, v in enumerate(labels) if v not in (0, 1)]
        if bad:
            raise SparseAnnotationError(
                f"point {bad[0]} has label {labels[bad[0]]}; labels are 1 (nodule) or 0 (background).")
        object.__setattr__(self, "points", points)
        object.__setattr__(self, "labels", labels)

    def array(self) -> np.ndarray:
        """The points as an ``(n, 3)`` float array."""
        return np.asarray(self.points, dtype=float).reshape(-1, 3)

    def label_array(self) -> np.ndarray:
        """One label per point (all 1 when ``labels`` is empty)."""
        return np.asarray(self.labels, dtype=np.int8) if self.labels else np.ones(len(self.points), np.int8)

    def check_grid(self, shape: Sequence[int]) -> None:
        for i, p in enumerate(self.points):
            if _outside(p, shape):
                raise SparseAnnotationError(
                    f"point {i} {p} (z, y, x) of nodule {self.nodule} lies outside the volume grid "
                    f"{tuple(shape)}; points are voxel indices of the image they annotate: move or drop it.")


@dataclass(frozen=True)
class BoxAnnotation:
    """An axis-aligned box, corners ``lo`` and ``hi`` (z, y, x) voxel indices, both inclusive.

    ``planar=True`` marks a 2D box drawn on one axial slice (``lo[0] == hi[0]``): the nodule is inside
    it on that slice and may extend to neighbouring slices.
    """

    lo: IntIndex
    hi: IntIndex
    nodule: int | None = None
    planar: bool = False

    def __post_init__(self) -> None:
        lo = _as_int_index(self.lo, "box lo")
        hi = _as_int_index(self.hi, "box hi")
        if any(a > b for a, b in zip(lo, hi)):
            raise SparseAnnotationError(
                f"box of nodule {self.nodule}: lo {lo} exceeds hi {hi} on some axis; corners are (z, y, x) "
                "with lo <= hi (both inclusive): swap them.")
        if self.planar and lo[0] != hi[0]:
            raise SparseAnnotationError(
                f"planar box of nodule {self.nodule} spans slices {lo[0]}..{hi[0]}; a 2D box lies on one "
                "slice (lo[0] == hi[0]), or pass planar=False for a 3D box.")
        object.__setattr__(self, "lo", lo)
        object.__setattr__(self, "hi", hi)

    @classmethod
    def on_slice(cls, z: int, lo_yx: Sequence[int], hi_yx: Sequence[int], nodule: int | None = None
                 ) -> "BoxAnnotation":
        """A 2D box on slice ``z`` with in-plane corners ``(y, x)``."""
        return cls((z, *lo_yx), (z, *hi_yx), nodule=nodule, planar=True)  # type: ignore[arg-type]

    @property
    def slices(self) -> tuple[slice, slice, slice]:
        return tuple(slice(a, b + 1) for a, b in zip(self.lo, self.hi))  # type: ignore[return-value]

    @property
    def size(self) -> IntIndex:
        return tuple(b - a + 1 for a, b in zip(self.lo, self.hi))  # type: ignore[return-value]

    def contains(self, index: Sequence[float]) -> bool:
        idx = np.round(np.asarray(index, float))
        return bool(np.all(idx >= self.lo) and np.all(idx <= self.hi))

    def check_grid(self, shape: Sequence[int]) -> None:
        if _outside(self.lo, shape) or _outside(self.hi, shape):
            raise SparseAnnotationError(
                f"box {self.lo}..{self.hi} (z, y, x) of nodule {self.nodule} is not inside the volume grid "
                f"{tuple(shape)}; clip it to 0..n-1 on every axis.")


@dataclass(frozen=True)
class SliceAnnotation:
    """Marked axial slices: ``present[i]`` says whether slice ``slices[i]`` shows a nodule.

    Unmarked slices are unknown.
    """

    slices: tuple[int, ...]
    present: tuple[bool, ...]

    def __post_init__(self) -> None:
        slices = tuple(int(s) for s in self.slices)
        present = tuple(bool(p) for p in self.present)
        if len(slices) != len(present):
            raise SparseAnnotationError(
                f"{len(slices)} marked slices but {len(present)} present flags: give one flag per slice.")
        seen: dict[int, bool] = {}
        for s, p in zip(slices, present):
            if s in seen and seen[s] != p:
                raise SparseAnnotationError(f"slice {s} is marked both present and absent; keep one mark.")
            seen[s] = p
        object.__setattr__(self, "slices", slices)
        object.__setattr__(self, "present", present)

    @property
    def positive(self) -> tuple[int, ...]:
        return tuple(sorted({s for s, p in zip(self.slices, self.present) if p}))

    @property
    def negative(self) -> tuple[int, ...]:
        return tuple(sorted({s for s, p in zip(self.slices, self.present) if not p}))

    def check_grid(self, shape: Sequence[int]) -> None:
        bad = [s for s in self.slices if not 0 <= s < shape[0]]
        if bad:
            raise SparseAnnotationError(
                f"marked slice {bad[0]} is outside the volume's {shape[0]} slices (0..{shape[0] - 1}); "
                "slice indices are z indices of the annotated volume.")


@dataclass(frozen=True)
class SparseAnnotations:
    """Every sparse annotation of one volume of grid ``shape`` (z, y, x), validated together."""

    shape: IntIndex
    points: tuple[PointAnnotation, ...] = ()
    boxes: tuple[BoxAnnotation, ...] = ()
    slices: SliceAnnotation | None = None

    def __post_init__(self) -> None:
        shape = tuple(int(v) for v in self.shape)
        if len(shape) != 3 or min(shape) < 1:
            raise SparseAnnotationError(
                f"the grid shape must be three positive sizes (z, y, x), got {self.shape}.")
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "points", tuple(self.points))
        object.__setattr__(self, "boxes", tuple(self.boxes))
        for item in (*self.points, *self.boxes, *((self.slices,) if self.slices else ())):
            item.check_grid(shape)
        negative = set(self.slices.negative) if self.slices else set()
        for annotation in self.points:
            for i, (p, label) in enumerate(zip(annotation.points, annotation.label_array())):
                if label == 1 and int(round(p[0])) in negative:
                    raise SparseAnnotationError(
                        f"nodule point {i} {p} of nodule {annotation.nodule} lies on slice "
                        f"{int(round(p[0]))}, which is marked as showing no nodule; fix the point or the "
                        "slice mark.")
        for box in self.boxes:
            if box.planar and box.lo[0] in negative:
                raise SparseAnnotationError(
                    f"the 2D box {box.lo}..{box.hi} of nodule {box.nodule} lies on slice {box.lo[0]}, "
                    "which is marked as showing no nodule; fix the box or the slice mark.")

    @property
    def is_empty(self) -> bool:
        return not self.points and not self.boxes and self.slices is None

    def __or__(self, other: "SparseAnnotations") -> "SparseAnnotations":
        return combine(self, other)


def combine(*annotations: SparseAnnotations) -> SparseAnnotations:
    """One :class:`SparseAnnotations` holding all of ``annotations`` (same grid; slice marks merged)."""
    if not annotations:
        raise SparseAnnotationError("combine() needs at least one SparseAnnotations.")
    shape = annotations[0].shape
    for a in annotations[1:]:
        if a.shape != shape:
            raise SparseAnnotationError(f"cannot combine annotations of grids {shape} and {a.shape}; "
                                        "annotations must belong to the same volume.")
    marks: dict[int, bool] = {}
    for a in annotations:
        if a.slices is None:
            continue
        for s, p in zip(a.slices.slices, a.slices.present):
            if s in marks and marks[s] != p:
                raise SparseAnnotationError(f"slice {s} is marked present in one set and absent in another.")
            marks[s] = p
    slices = SliceAnnotation(tuple(marks), tuple(marks.values())) if marks else None
    return SparseAnnotations(shape, tuple(p for a in annotations for p in a.points),
                             tuple(b for a in annotations for b in a.boxes), slices)


# --- simulation ---------------------------------------------------------------


def _mask_spacing(mask: np.ndarray | Volume, spacing: Sequence[float] | None
                  ) -> tuple[np.ndarray, np.ndarray]:
    array = np.asarray(mask.array if isinstance(mask, Volume) else mask)
    if spacing is None:
        spacing = mask.spacing if isinstance(mask, Volume) else (1.0, 1.0, 1.0)
    sp = np.asarray(spacing, dtype=float).reshape(-1)
    if sp.size != 3 or not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise SparseAnnotationError(
            f"spacing must be three positive millimetre values (z, y, x), got {spacing}.")
    if array.ndim != 3:
        raise SparseAnnotationError(f"the ground-truth mask must be 3D (z, y, x), got shape {array.shape}.")
    return array, sp


def _nodules(mask: np.ndarray, by: str) -> tuple[np.ndarray, int, list]:
    if mask.dtype == bool:
        mask = mask.astype(np.uint8)
    ids, n = nodule_label_map(mask, by=by)
    return ids, n, ndimage.find_objects(ids)


def farthest_point_sampling(coords: np.ndarray, n: int, *, spacing: Sequence[float] = (1.0, 1.0, 1.0),
                            rng: np.random.Generator | None = None, start: int | None = None) -> np.ndarray:
    """Indices (into ``coords``, ``(m, 3)`` voxel indices) of ``min(n, m)`` farthest-point samples.

    Distances are in millimetres (``coords * spacing``); the first sample is ``start`` or random.
    """
    if n < 1:
        raise SparseAnnotationError(f"the number of points must be at least 1, got {n}.")
    pts = np.asarray(coords, float) * np.asarray(spacing, float)
    m = len(pts)
    if m == 0:
        raise SparseAnnotationError("farthest-point sampling needs at least one candidate voxel.")
    rng = rng or np.random.default_rng(0)
    first = int(rng.integers(m)) if start is None else int(start)
    chosen = [first]
    dist = np.sum((pts - pts[first]) ** 2, axis=1)
    for _ in range(min(n, m) - 1):
        nxt = int(np.argmax(dist))
        chosen.append(nxt)
        np.minimum(dist, np.sum((pts - pts[nxt]) ** 2, axis=1), out=dist)
    return np.asarray(chosen, dtype=int)


def simulate_points(mask: np.ndarray | Volume, n_points: int = 200, *, seed: int = 0,
                    spacing: Sequence[float] | None = None, by: str = "components",
                    sample_fraction: float = 0.5, n_background: int = 0,
                    background_shell_mm: tuple[float, float] = (2.0, 10.0)
                    ) -> SparseAnnotations:
    """``n_points`` farthest-point samples per nodule (one :class:`PointAnnotation` each).

    Candidates are a seeded random ``sample_fraction`` of the nodule's voxels (PW4MedSeg: half), at least
    ``n_points`` of them when the nodule has that many. ``n_background`` > 0 adds that many background
    points per nodule (label 0), farthest-point sampled in the shell ``background_shell_mm`` (min, max
    distance from the nodule) outside every nodule.
    """
    if n_points < 1:
        raise SparseAnnotationError(f"n_points must be >= 1 (points per nodule), got {n_points}.")
    if not 0 < sample_fraction <= 1:
        raise SparseAnnotationError(f"sample_fraction must be in (0, 1], got {sample_fraction}.")
    array, sp = _mask_spacing(mask, spacing)
    ids, n, boxes = _nodules(array, by)
    rng = np.random.default_rng(seed)
    out: list[PointAnnotation] = []
    any_nodule = ids > 0
    for k in range(1, n + 1):
        box = boxes[k - 1]
        offset = np.array([s.start for s in box])
        coords = np.argwhere(ids[box] == k)
        take = min(len(coords), max(n_points, int(np.ceil(sample_fraction * len(coords)))))
        pool = coords[np.sort(rng.choice(len(coords), size=take, replace=False))]
        pts = pool[farthest_point_sampling(pool, n_points, spacing=sp, rng=rng)] + offset
        labels: list[int] = [1] * len(pts)
        if n_background > 0:
            bg = _background_points(ids == k, any_nodule, box, sp, n_background, background_shell_mm, rng)
            pts = np.concatenate([pts, bg])
            labels += [0] * len(bg)
        out.append(PointAnnotation(tuple(map(tuple, pts.astype(float))), tuple(labels), nodule=k))
    return SparseAnnotations(array.shape, points=tuple(out))


def _background_points(nodule: np.ndarray, any_nodule: np.ndarray, box: tuple[slice, ...], sp: np.ndarray,
                       n: int, shell_mm: tuple[float, float], rng: np.random.Generator) -> np.ndarray:
    pad = np.ceil(shell_mm[1] / sp).astype(int) + 1
    crop = tuple(slice(max(s.start - p, 0), min(s.stop + p, dim))
                 for s, p, dim in zip(box, pad, nodule.shape))
    dist = ndimage.distance_transform_edt(~nodule[crop], sampling=sp)
    cand = np.argwhere((dist >= shell_mm[0]) & (dist <= shell_mm[1]) & ~any_nodule[crop])
    if len(cand) == 0:
        return np.zeros((0, 3))
    return cand[farthest_point_sampling(cand, n, spacing=sp, rng=rng)] + np.array([s.start for s in crop])


def _margin_voxels(margin: float | Sequence[float], unit: str, sp: np.ndarray) -> np.ndarray:
    m = np.broadcast_to(np.asarray(margin, float), (3,)).astype(float)
    if np.any(m < 0) or not np.all(np.isfinite(m)):
        raise SparseAnnotationError(f"box margins and jitter must be >= 0, got {margin}.")
    if unit == "mm":
        return m / sp
    if unit == "voxels":
        return m.copy()
    raise SparseAnnotationError(f"margin_unit is 'mm' or 'voxels', got {unit!r}.")


def simulate_boxes(mask: np.ndarray | Volume, *, margin: float | Sequence[float] = 0.0,
                   jitter: float | Sequence[float] = 0.0, margin_unit: str = "mm", planar: bool = False,
                   seed: int = 0, spacing: Sequence[float] | None = None, by: str = "components"
                   ) -> SparseAnnotations:
    """One box per nodule: tight (``margin=0, jitter=0``) or loose.

    Each face moves outward by ``margin`` plus a seeded uniform offset in ``[-jitter, +jitter]`` (per axis
    ``(z, y, x)`` or one value; ``margin_unit`` 'mm' or 'voxels'), never inward past the tight box (a box
    always holds its nodule), rounded outward and clipped to the grid. ``planar=True`` draws a 2D box on the
    nodule's slice of largest area instead (the z margin is then ignored).
    """
    array, sp = _mask_spacing(mask, spacing)
    ids, n, boxes = _nodules(array, by)
    margin_v = _margin_voxels(margin, margin_unit, sp)
    jitter_v = _margin_voxels(jitter, margin_unit, sp)
    rng = np.random.default_rng(seed)
    shape = np.array(array.shape)
    out: list[BoxAnnotation] = []
    for k in range(1, n + 1):
        box = boxes[k - 1]
        inside = ids[box] == k
        offset = np.array([s.start for s in box])
        if planar:
            z = int(np.argmax(inside.sum(axis=(1, 2))))
            yx = np.argwhere(inside[z])
            lo = np.array([z, *yx.min(axis=0)]) + offset
            hi = np.array([z, *yx.max(axis=0)]) + offset
        else:
            lo, hi = offset.copy(), np.array([s.stop - 1 for s in box])
        grow_lo = np.maximum(margin_v + rng.uniform(-1, 1, 3) * jitter_v, 0)
        grow_hi = np.maximum(margin_v + rng.uniform(-1, 1, 3) * jitter_v, 0)
        if planar:
            grow_lo[0] = grow_hi[0] = 0
        lo = np.clip(np.floor(lo - grow_lo + 1e-9), 0, shape - 1).astype(int)
        hi = np.clip(np.ceil(hi + grow_hi - 1e-9), 0, shape - 1).astype(int)
        out.append(BoxAnnotation(tuple(lo), tuple(hi), nodule=k, planar=planar))
    return SparseAnnotations(array.shape, boxes=tuple(out))


def simulate_slices(mask: np.ndarray | Volume, *, fraction: float = 1.0, every: int = 1, n_negative: int = 0,
                    negative_candidates: Iterable[int] | np.ndarray | None = None, seed: int = 0,
                    by: str = "components") -> SparseAnnotations:
    """Marked axial slices: nodule slices marked present, optional nodule-free slices marked absent.

    Per nodule, every ``every``-th of its slices (starting at its first) is kept, then a seeded random
    ``fraction`` of those (at least one slice per nodule: its largest-area slice when the others are
    dropped). ``n_negative`` nodule-free slices are drawn at random from ``negative_candidates`` (slice
    indices or a boolean per slice; default all slices) without any nodule voxel; ``n_negative=-1``
    marks all of them.
    """
    if every < 1:
        raise SparseAnnotationError(f"every must be >= 1 (1 = every nodule slice), got {every}.")
    if not 0 < fraction <= 1:
        raise SparseAnnotationError(f"fraction must be in (0, 1], got {fraction}.")
    array, _ = _mask_spacing(mask, None)
    ids, n, boxes = _nodules(array, by)
    rng = np.random.default_rng(seed)
    positive: set[int] = set()
    for k in range(1, n + 1):
        box = boxes[k - 1]
        area = np.count_nonzero(ids[box] == k, axis=(1, 2))
        zs = np.flatnonzero(area) + box[0].start
        kept = zs[::every]
        if fraction < 1:
            kept = kept[rng.random(len(kept)) < fraction]
        if len(kept) == 0:
            kept = np.array([box[0].start + int(np.argmax(area))])
        positive.update(int(z) for z in kept)
    has_nodule = np.count_nonzero(ids, axis=(1, 2)) > 0
    if negative_candidates is None:
        candidates = np.arange(array.shape[0])
    else:
        cand = np.asarray(list(negative_candidates) if not isinstance(negative_candidates, np.ndarray)
                          else negative_candidates)
        candidates = np.flatnonzero(cand) if cand.dtype == bool else cand.astype(int)
    candidates = np.array([z for z in candidates if 0 <= z < array.shape[0] and not has_nodule[z]], int)
    if n_negative < 0 or n_negative >= len(candidates):
        negative = candidates
    else:
        negative = (np.sort(rng.choice(candidates, size=n_negative, replace=False)) if n_negative
                    else candidates[:0])
    slices = sorted(positive) + [int(z) for z in negative]
    present = [True] * len(positive) + [False] * len(negative)
    marks = SliceAnnotation(tuple(slices), tuple(present)) if slices else None
    return SparseAnnotations(array.shape, slices=marks)
