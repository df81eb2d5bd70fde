"""Insert real (LIDC) nodule shapes into a chest CT: isolated, juxtavascular or juxtapleural.

Each :class:`~wsnodule_core.data.nodule_shape.NoduleShape` is resampled from its own grid to
the target grid through a signed distance map (SimpleITK linear resampling onto a sub-voxel
grid, optionally with a random in-plane rotation and flip). The fraction of each voxel's
sub-voxels inside the surface is its occupancy ``f`` (partial volume; the threshold keeps the
source volume) and the binary nodule is the ``k`` most occupied voxels,
``k = round(volume_mm3 / voxel_volume)``, so the inserted volume matches the source volume to
half a voxel. Intensities follow the texture class, and the scan's own noise level
(estimated locally) is re-added so the nodule is not noiseless. A :class:`TexturedSource` (a real
VOI, :mod:`~wsnodule_core.data.real_nodules`) goes through the same placement and label rules
but resamples itself with its own HU, which are pasted with a blending weight instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence, runtime_checkable

import numpy as np
from scipy import ndimage

from wsnodule_core.data.nodule_shape import NoduleShape
from wsnodule_core.errors import (GeometryMismatchError, InsertionParameterError, LungSegmentationError,
                                  WsnoduleError)
from wsnodule_core.image.resample import Grid, resample_to_grid
from wsnodule_core.io.volume import Volume

PLACEMENTS = ("isolated", "juxtavascular", "juxtapleural")
#: Fewest target voxels a shape must cover: below 5 the half-voxel rounding alone can exceed 10 %.
MIN_VOXELS = 5
#: Sub-voxel size (mm) of the grid the partial-volume occupancy is computed on.
SUBVOXEL_MM = 0.6
Progress = Callable[[int, int], None]


class NodulePlacementError(WsnoduleError):
    """No valid place was found for a nodule (raised only when ``on_failure='raise'``)."""


@dataclass(frozen=True)
class NoduleRecord:
    """One inserted nodule: where it is, what it is, and where its shape came from."""

    label: int
    centre_zyx: tuple[float, float, float]
    centre_xyz: tuple[float, float, float]
    diameter_mm: float
    volume_mm3: float
    inserted_volume_mm3: float
    texture: str
    texture_rating: float
    placement: str
    lidc_annotation_ids: tuple[int, ...]
    shape_id: str
    patient_id: str
    slice_range: tuple[int, int]

    def to_dict(self) -> dict:
        return {
            "label": self.label,
            "centre_zyx": [round(float(v), 3) for v in self.centre_zyx],
            "centre_xyz": [round(float(v), 3) for v in self.centre_xyz],
            "diameter_mm": round(float(self.diameter_mm), 3),
            "volume_mm3": round(float(self.volume_mm3), 3),
            "inserted_volume_mm3": round(float(self.inserted_volume_mm3), 3),
            "texture": self.texture,
            "texture_rating": round(float(self.texture_rating), 3),
            "placement": self.placement,
            "lidc_annotation_ids": [int(i) for i in self.lidc_annotation_ids],
            "shape_id": self.shape_id,
            "patient_id": self.patient_id,
            "slice_range": [int(self.slice_range[0]), int(self.slice_range[1])],
        }

    @classmethod
    def from_dict(cls, data: dict) -> "NoduleRecord":
        return cls(
            label=int(data["label"]),
            centre_zyx=tuple(float(v) for v in data["centre_zyx"]),  # type: ignore[arg-type]
            centre_xyz=tuple(float(v) for v in data["centre_xyz"]),  # type: ignore[arg-type]
            diameter_mm=float(data["diameter_mm"]),
            volume_mm3=float(data["volume_mm3"]),
            inserted_volume_mm3=float(data["inserted_volume_mm3"]),
            texture=str(data["texture"]),
            texture_rating=float(data["texture_rating"]),
            placement=str(data["placement"]),
            lidc_annotation_ids=tuple(int(i) for i in data.get("lidc_annotation_ids", ())),
            shape_id=str(data.get("shape_id", "")),
            patient_id=str(data.get("patient_id", "")),
            slice_range=(int(data["slice_range"][0]), int(data["slice_range"][1])),
        )


@dataclass(frozen=True)
class SkippedNodule:
    """A shape that was not inserted, and why."""

    shape_id: str
    placement: str
    reason: str


@dataclass(frozen=True, eq=False)
class InsertionResult:
    """The volume with nodules, the label map (uint16, one label per nodule) and the records."""

    volume: Volume
    label_mask: np.ndarray
    nodules: list[NoduleRecord]
    skipped: list[SkippedNodule] = field(default_factory=list)


@dataclass(frozen=True, eq=False)
class ResampledShape:
    """A shape on the target spacing.

    ``occupancy`` is the fraction of each voxel inside the nodule (partial volume, from the
    sub-voxel grid ``fine``, whose threshold is chosen so that the occupancy sums to the source
    volume); ``mask`` is the ``k = round(volume / voxel volume)`` voxels of highest occupancy.
    """

    mask: np.ndarray
    occupancy: np.ndarray
    fine: np.ndarray  # signed distance (mm) on the sub-voxel grid
    factors: tuple[int, int, int]
    threshold: float
    spacing: tuple[float, float, float]

    @property
    def volume_mm3(self) -> float:
        return float(self.mask.sum() * np.prod(self.spacing))

    @classmethod
    def from_fine(cls, fine: np.ndarray, factors: tuple[int, int, int], spacing: tuple[float, float, float],
                  volume_mm3: float) -> "ResampledShape":
        fine_voxel = float(np.prod(spacing)) / float(np.prod(factors))
        n_fine = int(np.clip(round(volume_mm3 / fine_voxel), 1, fine.size))
        threshold = float(np.partition(fine.ravel(), n_fine - 1)[n_fine - 1])
        occupancy = block_mean(fine <= threshold, factors)
        k = int(round(volume_mm3 / float(np.prod(spacing))))
        coarse_distance = block_mean(fine, factors)
        order = np.lexsort((coarse_distance.ravel(), -occupancy.ravel()))  # most occupied first
        mask = np.zeros(occupancy.size, bool)
        mask[order[:k]] = True
        return cls(mask.reshape(occupancy.shape), occupancy, fine, factors, threshold, spacing)

    def core_occupancy(self, fraction: float) -> np.ndarray:
        """Occupancy of the innermost ``fraction`` of the nodule's volume (a part-solid core)."""
        inside = self.fine[self.fine <= self.threshold]
        n = max(1, int(round(fraction * inside.size)))
        core_threshold = float(np.partition(inside, n - 1)[n - 1])
        return block_mean(self.fine <= core_threshold, self.factors)


@dataclass(frozen=True, eq=False)
class TexturedShape(ResampledShape):
    """A resampled nodule that brings its own HU (a real-texture source).

    ``hu`` is the nodule and its surroundings on the target spacing; ``weight`` (0..1) how much of
    it replaces the background: 1 where the occupancy is full, the occupancy at the edge, fading
    to 0 over the source's blending margin outside. The engine pastes ``w * hu + (1 - w) * background``.
    """

    hu: np.ndarray
    weight: np.ndarray


@runtime_checkable
class TexturedSource(Protocol):
    """A nodule source that resamples itself with its own intensities (e.g. ``RealNodule``).

    Besides :meth:`resample` it has what the engine records of a :class:`NoduleShape`:
    ``shape_id``, ``patient_id``, ``diameter_mm``, ``volume_mm3``, ``texture``, ``texture_rating``
    and ``annotation_ids``.
    """

    def resample(self, spacing: Sequence[float], *, angle_deg: float = 0.0, flip_x: bool = False,
                 min_voxels: int = MIN_VOXELS) -> TexturedShape: ...


def block_mean(array: np.ndarray, factors: Sequence[int]) -> np.ndarray:
    fz, fy, fx = factors
    z, y, x = (n // f for n, f in zip(array.shape, factors))
    blocks = np.asarray(array, np.float32).reshape(z, fz, y, fy, x, fx)
    return blocks.mean(axis=(1, 3, 5), dtype=np.float32)


def target_voxels(shape: NoduleShape, spacing: Sequence[float]) -> int:
    """How many voxels of ``spacing`` the shape's volume fills (rounded)."""
    return int(round(shape.volume_mm3 / float(np.prod(spacing))))


def is_resolvable(shape: NoduleShape, spacing: Sequence[float], min_voxels: int = MIN_VOXELS) -> bool:
    """True when the shape fills at least ``min_voxels`` voxels of the target grid."""
    return target_voxels(shape, spacing) >= min_voxels


def signed_distance(mask: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    inside = ndimage.distance_transform_edt(mask, sampling=spacing)
    outside = ndimage.distance_transform_edt(~mask, sampling=spacing)
    return (outside - inside).astype(np.float32)


def resample_shape(
    shape: NoduleShape,
    spacing: Sequence[float],
    *,
    angle_deg: float = 0.0,
    flip_x: bool = False,
    min_voxels: int = MIN_VOXELS,
) -> ResampledShape:
    """Resample ``shape`` to ``spacing`` (z, y, x) mm, rotated in-plane by ``angle_deg``.

    The mask's signed distance map is resampled linearly onto a sub-voxel grid; its threshold
    keeps the source volume, the block means give the partial-volume occupancy and the ``k``
    most occupied voxels form the binary nodule, ``k = round(volume_mm3 / voxel volume)``, so
    the volume is kept to half a voxel. Raises :class:`ValueError` when ``k < min_voxels`` (see :func:`is_resolvable`).
    """
    spacing = tuple(float(s) for s in spacing)
    k = target_voxels(shape, spacing)
    if k < max(1, min_voxels):
        raise InsertionParameterError(
            f"shape {shape.shape_id or '?'} ({shape.volume_mm3:.1f} mm3) fills only {k} voxel(s) of "
            f"spacing {spacing} mm; at least {min_voxels} are needed to keep its volume within 10 %. "
            "Check is_resolvable(shape, spacing) first, or use a finer spacing or a larger shape."
        )
    src_spacing = tuple(float(s) for s in shape.spacing)
    mask = np.pad(np.asarray(shape.mask, bool), 3)
    sdf = signed_distance(mask, src_spacing)
    frame = nodule_frame(mask.shape, src_spacing, spacing, angle_deg=angle_deg, flip_x=flip_x)
    fine = resample_to_grid(centred_volume(sdf, src_spacing), frame.fine, fill=float(sdf.max()) + 100.0,
                            transform=frame.matrix).array
    return ResampledShape.from_fine(fine, frame.factors, spacing, shape.volume_mm3)


@dataclass(frozen=True, eq=False)
class NoduleFrame:
    """The target-spacing grid around a nodule crop, its sub-voxel grid and the in-plane turn.

    Both grids are centred on the world origin, where :func:`centred_volume` puts the crop's centre;
    ``matrix`` maps output points to crop points (rotation, optional x-flip).
    """

    coarse: Grid
    fine: Grid
    factors: tuple[int, int, int]
    matrix: np.ndarray


def centred_volume(array: np.ndarray, spacing: Sequence[float]) -> Volume:
    """``array`` as a volume whose centre lies on the world origin (identity direction)."""
    centre_idx = (np.array(array.shape) - 1) / 2.0
    return Volume(array, tuple(spacing), tuple(-(centre_idx * np.array(spacing))[::-1]), np.eye(3))


def nodule_frame(crop_shape: Sequence[int], crop_spacing: Sequence[float], spacing: Sequence[float], *,
                 angle_deg: float = 0.0, flip_x: bool = False) -> NoduleFrame:
    """The grids of ``spacing`` that hold a crop of ``crop_shape`` turned by any in-plane angle."""
    extent = np.array(crop_shape) * np.array(crop_spacing)  # (z, y, x) mm
    half_xy = 0.5 * math.hypot(extent[1], extent[2])
    half = np.array([0.5 * extent[0], half_xy, half_xy]) + 2 * np.array(spacing)
    size = np.maximum(3, 2 * np.ceil(half / np.array(spacing)).astype(int) + 1)  # odd: centred
    out_origin = -((size - 1) / 2.0) * np.array(spacing)

    theta = math.radians(angle_deg)
    matrix = np.array([[math.cos(theta), -math.sin(theta), 0.0],
                       [math.sin(theta), math.cos(theta), 0.0],
                       [0.0, 0.0, 1.0]])
    if flip_x:
        matrix = matrix @ np.diag([-1.0, 1.0, 1.0])
    # Sub-voxel grid: each target voxel is split into f_z x f_y x f_x sub-voxels (about 0.6 mm).
    factors = np.clip(np.ceil(np.array(spacing) / SUBVOXEL_MM), 1, 8).astype(int)
    fine_spacing = np.array(spacing) / factors
    fine_origin = out_origin - 0.5 * np.array(spacing) + 0.5 * fine_spacing
    fine = Grid(tuple(size * factors), tuple(fine_spacing), tuple(fine_origin[::-1]), np.eye(3))
    coarse = Grid(tuple(size), tuple(float(s) for s in spacing), tuple(out_origin[::-1]), np.eye(3))
    return NoduleFrame(coarse, fine, tuple(int(f) for f in factors), matrix)  # type: ignore[arg-type]


def estimate_noise_sd(values: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Robust noise SD of a CT region: MAD of the in-plane second difference, scaled to sigma."""
    a = np.asarray(values, np.float32)
    if a.shape[-1] < 3:
        return 0.0
    diff = a[..., 2:] - 2 * a[..., 1:-1] + a[..., :-2]  # white noise: var = 6 sigma^2
    if mask is not None:
        keep = mask[..., 1:-1] & mask[..., 2:] & mask[..., :-2]
        diff = diff[keep]
    if diff.size < 10:
        return 0.0
    mad = float(np.median(np.abs(diff - np.median(diff))))
    return 1.4826 * mad / math.sqrt(6.0)


#: Grid step (mm) of the distance maps used to propose candidate positions.
CANDIDATE_GRID_MM = 2.0


@dataclass(frozen=True, eq=False)
class _Maps:
    """Full-resolution lungs and vessels, and coarse distance maps (mm) to propose positions."""

    lungs: np.ndarray
    vessels: np.ndarray
    spacing: tuple[float, float, float]
    factors: tuple[int, int, int]
    dist_out: np.ndarray  # coarse: mm from lung to the nearest non-lung voxel (0 outside)
    dist_vessel: np.ndarray | None  # coarse: mm to the nearest vessel voxel

    @classmethod
    def build(cls, lungs: np.ndarray, vessels: np.ndarray, spacing: tuple[float, float, float]) -> "_Maps":
        # Exact distance transforms of a 512 x 512 CT take ~15 s each: propose positions on a
        # grid of about 2 mm instead; every proposal is then checked exactly at full resolution.
        factors = tuple(max(1, int(CANDIDATE_GRID_MM // s)) for s in spacing)
        coarse = tuple(slice(f // 2, None, f) for f in factors)
        coarse_spacing = tuple(s * f for s, f in zip(spacing, factors))
        dist_out = ndimage.distance_transform_edt(lungs[coarse], sampling=coarse_spacing).astype(np.float32)
        dist_vessel = None
        if vessels.any():
            near = ndimage.maximum_filter(vessels, size=factors)[coarse] if max(factors) > 1 else vessels
            dist_vessel = ndimage.distance_transform_edt(~near, sampling=coarse_spacing).astype(np.float32)
        return cls(lungs, vessels, spacing, factors, dist_out, dist_vessel)  # type: ignore[arg-type]

    def to_full(self, coarse_flat: int) -> np.ndarray:
        index = np.array(np.unravel_index(coarse_flat, self.dist_out.shape))
        return index * np.array(self.factors) + np.array(self.factors) // 2


def _ball(radius_mm: float, spacing: Sequence[float]) -> np.ndarray:
    half = [int(math.floor(radius_mm / s)) for s in spacing]
    grids = np.meshgrid(*[np.arange(-h, h + 1) * s for h, s in zip(half, spacing)], indexing="ij")
    return sum(g * g for g in grids) <= radius_mm ** 2 + 1e-9


def _window(array: np.ndarray, start: np.ndarray, shape: Sequence[int], pad: Sequence[int], fill) -> np.ndarray:
    """``array[start - pad : start + shape + pad]``, with ``fill`` where it leaves the array."""
    lo = start - np.asarray(pad)
    hi = start + np.asarray(shape) + np.asarray(pad)
    out = np.full(tuple(hi - lo), fill, dtype=array.dtype)
    src_lo, src_hi = np.maximum(lo, 0), np.minimum(hi, array.shape)
    if np.all(src_hi > src_lo):
        out[tuple(slice(a - l, b - l) for a, b, l in zip(src_lo, src_hi, lo))] = \
            array[tuple(slice(a, b) for a, b in zip(src_lo, src_hi))]
    return out


def _placement_ok(placement: str, start: np.ndarray, mask: np.ndarray, maps: _Maps, taken: np.ndarray,
                  margin_mm: float, outside_tolerance: float) -> bool:
    """Check a position exactly, on the full-resolution masks."""
    region = tuple(slice(int(a), int(a + n)) for a, n in zip(start, mask.shape))
    if np.any(taken[region][mask]):
        return False
    outside = 1.0 - float(maps.lungs[region][mask].mean())
    if placement == "isolated":
        if outside > 0:
            return False
        ball = _ball(margin_mm, maps.spacing)
        pad = [b // 2 for b in ball.shape]
        grown = ndimage.binary_dilation(np.pad(mask, [(p, p) for p in pad]), structure=ball)
        lungs = _window(maps.lungs, start, mask.shape, pad, False)
        vessels = _window(maps.vessels, start, mask.shape, pad, False)
        return not np.any(grown & (~lungs | vessels))
    touching = ndimage.binary_dilation(np.pad(mask, 1)) & ~np.pad(mask, 1)
    if placement == "juxtavascular":
        vessel_overlap = float(maps.vessels[region][mask].mean())
        touches = np.any(touching & _window(maps.vessels, start, mask.shape, (1, 1, 1), False))
        return outside <= outside_tolerance and vessel_overlap <= 0.25 and (touches or vessel_overlap > 0)
    if placement == "juxtapleural":
        touches = np.any(touching & ~_window(maps.lungs, start, mask.shape, (1, 1, 1), False))
        return outside <= outside_tolerance and (touches or outside > 0)
    raise InsertionParameterError(f"unknown placement {placement!r}; use one of {PLACEMENTS}.")


def _candidates(placement: str, radius_mm: float, maps: _Maps, margin_mm: float) -> np.ndarray:
    """Coarse-grid positions likely to pass :func:`_placement_ok` (flat indices of the coarse grid)."""
    d = maps.dist_out
    step = max(s * f for s, f in zip(maps.spacing, maps.factors))
    if placement == "isolated":
        ok = d >= radius_mm + margin_mm
        if maps.dist_vessel is not None:
            ok &= maps.dist_vessel >= radius_mm + margin_mm
    elif placement == "juxtavascular":
        dv = maps.dist_vessel
        ok = (d >= 0.8 * radius_mm) & (dv > 0) & (dv >= radius_mm - step) & (dv <= radius_mm + step)  # type: ignore[operator]
    else:
        ok = (d >= 0.45 * radius_mm) & (d <= radius_mm + 0.5 * step)
    return np.flatnonzero(ok)


def _nodule_intensity(texture: str, rng: np.random.Generator, background: np.ndarray,
                      core: np.ndarray | None, lung_level: float) -> np.ndarray:
    """HU of the nodule itself (before partial-volume blending) for its texture class."""
    if texture == "solid":
        return np.full(background.shape, rng.uniform(0.0, 60.0), np.float32)
    ggo = rng.uniform(-700.0, -300.0) if texture == "ground_glass" else rng.uniform(-600.0, -300.0)
    # Ground glass lets the parenchyma (and vessels) show through: shift the local texture.
    texture_hu = np.clip(background - lung_level, -150.0, 150.0)
    values = np.maximum(ggo + texture_hu, background).astype(np.float32)
    if texture == "part_solid" and core is not None:
        solid = rng.uniform(0.0, 60.0)
        values = (1.0 - core) * values + core * solid
    return values.astype(np.float32)


def insert_nodules(
    volume: Volume,
    lungs: np.ndarray,
    shapes: Sequence[NoduleShape],
    *,
    rng: np.random.Generator | None = None,
    seed: int | None = None,
    placements: Sequence[str] | str = PLACEMENTS,
    per_shape: bool = False,
    vessels: np.ndarray | None = None,
    max_tries: int = 200,
    margin_mm: float = 3.0,
    outside_tolerance: float = 0.1,
    augment: bool = True,
    min_voxels: int = MIN_VOXELS,
    on_failure: str = "skip",
    avoid: np.ndarray | None = None,
    progress: Progress | None = None,
) -> InsertionResult:
    """Insert ``shapes`` into ``volume`` (HU) inside the boolean ``lungs`` mask.

    Parameters
    ----------
    volume, lungs
        The CT and its lung mask (same grid).
    shapes
        Nodule shapes, each on its own spacing: :class:`NoduleShape` (painted with a synthetic
        intensity of its texture class) or a :class:`TexturedSource` such as
        :class:`~wsnodule_core.data.real_nodules.RealNodule` (pasted with its own HU).
    rng, seed
        Randomness (one of them; ``seed`` makes a new generator).
    placements
        Placement kinds (from ``PLACEMENTS``) drawn at random for each shape, or, with
        ``per_shape=True``, one placement per shape in order.
    vessels
        Boolean vessel mask; needed for ``juxtavascular`` and used to keep ``isolated`` nodules
        ``margin_mm`` away from vessels. Without it, juxtavascular falls back to lung voxels
        above -400 HU (what :func:`derive_vessels` computes).
    max_tries
        Candidate positions tried per shape before giving up.
    outside_tolerance
        Largest fraction of a nodule allowed outside the lung mask (juxtapleural/-vascular).
    augment
        Random in-plane rotation and x-flip of each shape (volume preserved).
    min_voxels
        Shapes filling fewer target voxels are skipped (their volume cannot be kept within 10 %).
    on_failure
        ``"skip"`` records a :class:`SkippedNodule`; ``"raise"`` raises :class:`NodulePlacementError`.
    avoid
        Boolean mask of known lesions (same grid): no nodule overlaps or touches it.
    """
    if rng is None:
        rng = np.random.default_rng(seed)
    lungs = np.asarray(lungs, bool)
    if lungs.shape != volume.shape:
        raise GeometryMismatchError(
            f"the lung mask has shape {lungs.shape} but the volume has shape {volume.shape}; "
            "give a lung mask on the volume's grid."
        )
    if not lungs.any():
        raise LungSegmentationError("the lung mask is empty: nodules can only be inserted inside the lungs; "
                                    "check the lung segmentation.")
    if isinstance(placements, str):
        placements = (placements,)
    if per_shape and len(placements) != len(shapes):
        raise InsertionParameterError(f"per_shape=True needs one placement per shape: got {len(placements)} "
                                      f"placements for {len(shapes)} shapes; give one per shape, or "
                                      "per_shape=False to draw each shape's placement from them.")
    for p in placements:
        if p not in PLACEMENTS:
            raise InsertionParameterError(f"unknown placement {p!r}; use one of {PLACEMENTS}.")
    if on_failure not in ("skip", "raise"):
        raise InsertionParameterError(f"on_failure must be 'skip' or 'raise', got {on_failure!r}.")

    spacing = tuple(float(s) for s in volume.spacing)
    image = np.asarray(volume.array, np.float32).copy()
    if vessels is None:
        vessels = derive_vessels(volume, lungs)
    vessels = np.asarray(vessels, bool) & lungs
    maps = _Maps.build(lungs, vessels, spacing)  # type: ignore[arg-type]
    parenchyma = lungs & ~vessels
    lung_level = float(np.median(image[parenchyma])) if parenchyma.any() else -850.0
    labels = np.zeros(volume.shape, np.uint16)
    taken = np.zeros(volume.shape, bool)
    if avoid is not None:
        if np.shape(avoid) != volume.shape:
            raise GeometryMismatchError(f"the avoid mask has shape {np.shape(avoid)} but the volume has "
                                        f"shape {volume.shape}; give it on the volume's grid.")
        taken |= ndimage.binary_dilation(np.asarray(avoid, bool))
    records: list[NoduleRecord] = []
    skipped: list[SkippedNodule] = []

    for i, shape in enumerate(shapes):
        placement = placements[i] if per_shape else placements[int(rng.integers(len(placements)))]
        if placement == "juxtavascular" and maps.dist_vessel is None:
            placement = "isolated"
        record_or_reason = _insert_one(shape, placement, image, labels, taken, maps, rng, len(records) + 1,
                                       volume, lung_level, max_tries, margin_mm, outside_tolerance,
                                       augment, min_voxels)
        if isinstance(record_or_reason, NoduleRecord):
            records.append(record_or_reason)
        else:
            if on_failure == "raise":
                raise NodulePlacementError(
                    f"nodule shape {shape.shape_id or i} ({placement}): {record_or_reason}. Give a larger "
                    "lung mask, fewer or smaller nodules, or a larger max_tries."
                )
            skipped.append(SkippedNodule(shape.shape_id, placement, record_or_reason))
        if progress is not None:
            progress(i + 1, len(shapes))
    out = volume.with_array(image.astype(volume.array.dtype) if volume.array.dtype.kind == "f"
                            else np.rint(image).astype(volume.array.dtype))
    return InsertionResult(out, labels, records, skipped)


def derive_vessels(volume: Volume, lungs: np.ndarray, threshold_hu: float = -400.0) -> np.ndarray:
    """Vessels of a real CT: lung voxels brighter than ``threshold_hu`` (small specks removed)."""
    bright = np.asarray(lungs, bool) & (np.asarray(volume.array) > threshold_hu)
    return ndimage.binary_opening(bright, structure=np.ones((1, 2, 2), bool)) | (
        bright & ndimage.binary_erosion(bright))


def _insert_one(shape, placement, image, labels, taken, maps, rng, label, volume, lung_level,
                max_tries, margin_mm, outside_tolerance, augment, min_voxels):
    spacing = maps.spacing
    if not is_resolvable(shape, spacing, min_voxels):
        return (f"too small for the grid: {shape.volume_mm3:.1f} mm3 fills "
                f"{target_voxels(shape, spacing)} voxel(s) of {spacing} mm (fewer than {min_voxels})")
    angle = float(rng.uniform(0.0, 360.0)) if augment else 0.0
    flip = bool(rng.integers(2)) if augment else False
    if isinstance(shape, TexturedSource):
        res = shape.resample(spacing, angle_deg=angle, flip_x=flip, min_voxels=min_voxels)
    else:
        res = resample_shape(shape, spacing, angle_deg=angle, flip_x=flip, min_voxels=min_voxels)
    # crop to the soft support
    support = (res.occupancy > 0) | res.mask
    if isinstance(res, TexturedShape):
        support |= res.weight > 0
    bbox = ndimage.find_objects(support.astype(np.uint8))[0]
    mask, occ = res.mask[bbox], res.occupancy[bbox]
    size = np.array(mask.shape)
    com = np.array(ndimage.center_of_mass(mask))
    radius_mm = 0.5 * max(float(shape.diameter_mm), 1.0)
    cands = _candidates(placement, radius_mm, maps, margin_mm)
    if cands.size == 0:
        return f"no {placement} position in this lung mask fits a {shape.diameter_mm:.1f} mm nodule"
    for _ in range(max_tries):
        centre = maps.to_full(int(cands[int(rng.integers(cands.size))]))
        start = centre - np.round(com).astype(int)
        stop = start + size
        if np.any(start < 0) or np.any(stop > np.array(labels.shape)):
            continue
        region = tuple(slice(int(a), int(b)) for a, b in zip(start, stop))
        if not maps.lungs[tuple(np.round(start + com).astype(int))]:
            continue  # the nodule's centre must lie in the lungs
        if not _placement_ok(placement, start, mask, maps, taken, margin_mm, outside_tolerance):
            continue
        if isinstance(res, TexturedShape):
            _paste(image, region, res.weight[bbox], res.hu[bbox])
        else:
            part_solid = shape.texture == "part_solid"
            core = res.core_occupancy(float(rng.uniform(0.2, 0.5)))[bbox] if part_solid else None
            _paint(image, region, occ, core, shape.texture, rng, lung_level)
        labels[region][mask] = label
        taken[region] |= ndimage.binary_dilation(mask, iterations=1)
        zyx = start + com
        zs = np.flatnonzero(mask.any(axis=(1, 2))) + start[0]
        return NoduleRecord(
            label=label,
            centre_zyx=tuple(float(v) for v in zyx),  # type: ignore[arg-type]
            centre_xyz=tuple(float(v) for v in volume.index_to_world(zyx)),  # type: ignore[arg-type]
            diameter_mm=float(shape.diameter_mm),
            volume_mm3=float(shape.volume_mm3),
            inserted_volume_mm3=float(mask.sum() * np.prod(spacing)),
            texture=shape.texture,
            texture_rating=float(shape.texture_rating),
            placement=placement,
            lidc_annotation_ids=tuple(int(a) for a in shape.annotation_ids),
            shape_id=shape.shape_id,
            patient_id=shape.patient_id,
            slice_range=(int(zs.min()), int(zs.max())),
        )
    return f"no valid {placement} position found in {max_tries} tries"


def _paint(image, region, occ, core, texture, rng, lung_level):
    background = image[region]
    nodule = _nodule_intensity(texture, rng, background, core, lung_level)
    lung_like = background < -500
    sd = estimate_noise_sd(background, lung_like if lung_like.sum() > 30 else None)
    blended = (1.0 - occ) * background + occ * nodule
    if texture != "ground_glass" and sd > 0:
        # the blended background keeps (1 - f) of its noise: add the rest so the SD stays the scan's
        noise = ndimage.gaussian_filter(rng.standard_normal(background.shape).astype(np.float32), 0.6)
        noise *= sd / max(float(noise.std()), 1e-6)
        solid_part = occ if core is None else occ * core
        blended += noise * np.sqrt(np.clip(1.0 - (1.0 - solid_part) ** 2, 0.0, 1.0))
    image[region] = np.where(occ > 0, blended, background)


def _paste(image, region, weight, hu):
    """A real-texture nodule: ``w * hu + (1 - w) * background`` (its own noise comes with its HU)."""
    background = image[region]
    image[region] = np.where(weight > 0, weight * hu + (1.0 - weight) * background, background)
