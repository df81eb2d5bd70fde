"""Classical lung segmentation of a chest CT in Hounsfield units.

Steps (details in ``docs/lung.md``): pool the slices in-plane to about 1.4 mm pixels; threshold
air; remove the air outside the body; keep the large air components that reach the upper half of
the chest (lungs, not bowel gas); track the trachea and main bronchi and cut them out; split the
two lungs (deepest-point markers from a distance transform when they touch) and name them from
the world geometry; fill vessels, enclosed nodules and small border pockets (juxtapleural
nodules) of each lung; upsample and refine the border on the full grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy import ndimage

from wsnodule_core.data.lung._airways import AirwayParameters, track_airways
from wsnodule_core.data.lung._morphology import (
    PLANE_CROSS,
    ball_close,
    ball_dilate,
    ball_open,
    block_mean,
    component_sizes,
    fill_border_pockets,
    fill_enclosed_holes,
    padded_box,
    upsample,
)
from wsnodule_core.data.lung._sides import name_sides, split_lungs
from wsnodule_core.errors import LungSegmentationError
from wsnodule_core.io.volume import Volume

ProgressCallback = Callable[[int, int], None]
Spacing = tuple[float, float, float]


@dataclass(frozen=True, eq=False)
class LungSegmentation:
    """Boolean ``(z, y, x)`` masks on the CT's grid.

    ``left`` and ``right`` are the patient's left and right lungs (disjoint, ``lungs`` is their
    union); ``airways`` holds the trachea and main bronchi, never part of ``lungs``; ``body`` is
    everything inside the skin. ``spacing`` is the grid's ``(z, y, x)`` spacing in mm.
    """

    lungs: np.ndarray
    left: np.ndarray
    right: np.ndarray
    airways: np.ndarray
    body: np.ndarray
    spacing: Spacing

    def _ml(self, mask: np.ndarray) -> float:
        return float(np.count_nonzero(mask)) * float(np.prod(self.spacing)) / 1000.0

    @property
    def lungs_ml(self) -> float:
        return self._ml(self.lungs)

    @property
    def left_ml(self) -> float:
        return self._ml(self.left)

    @property
    def right_ml(self) -> float:
        return self._ml(self.right)

    @property
    def airways_ml(self) -> float:
        return self._ml(self.airways)

    @property
    def volume_ml(self) -> dict[str, float]:
        """Volumes in millilitres: ``lungs``, ``left``, ``right``, ``airways``, ``body``."""
        return {
            "lungs": self.lungs_ml,
            "left": self.left_ml,
            "right": self.right_ml,
            "airways": self.airways_ml,
            "body": self._ml(self.body),
        }

    def label_map(self) -> np.ndarray:
        """uint8 labels: 0 background, 1 right lung, 2 left lung, 3 airways."""
        labels = np.zeros(self.lungs.shape, dtype=np.uint8)
        labels[self.right] = 1
        labels[self.left] = 2
        labels[self.airways] = 3
        return labels


def segment_lungs(
    volume: Volume,
    *,
    air_threshold_hu: float = -320.0,
    airway_lumen_hu: float = -900.0,
    downsample: int | None = None,
    min_lung_ml: float = 50.0,
    bronchus_max_mm: float = 40.0,
    pocket_max_area_mm2: float = 2000.0,
    pocket_max_depth_mm: float = 35.0,
    pocket_max_length_mm: float = 45.0,
    closing_radius_mm: float = 3.0,
    opening_radius_mm: float = 2.0,
    progress: ProgressCallback | None = None,
) -> LungSegmentation:
    """Segment the lungs, their sides, the large airways and the body of a chest CT.

    Parameters
    ----------
    volume
        Axial chest CT in Hounsfield units (any in-plane and slice spacing).
    air_threshold_hu
        Voxels below this are air (lung parenchyma included).
    airway_lumen_hu
        Stricter threshold for the airway lumen while tracking the trachea and bronchi.
    downsample
        In-plane pooling factor for the heavy morphology; ``None`` picks about 1.4 mm pixels.
    min_lung_ml
        Air components smaller than this are never taken as lung.
    bronchus_max_mm
        How far (along z) below the carina the main bronchi are followed.
    pocket_max_area_mm2, pocket_max_depth_mm, pocket_max_length_mm
        Largest border pocket filled into a lung (area per slice, depth inside the slice's convex
        hull, extent along z): keeps juxtapleural nodules up to about 35 mm without bridging into
        the mediastinum.
    closing_radius_mm
        Radius of the final 3D ball closing of each lung.
    opening_radius_mm
        Radius of the opening that cuts thin links between the lungs and bowel gas.
    progress
        Called as ``progress(step, total)`` after each step.

    Raises
    ------
    LungSegmentationError
        When no air component of lung size is found inside the body, or ``downsample`` is not a
        positive integer.
    """
    total_steps = 7

    def report(step: int) -> None:
        if progress is not None:
            progress(step, total_steps)

    hu_full = volume.array
    shape = volume.shape
    if downsample is not None and (int(downsample) != downsample or downsample < 1):
        raise LungSegmentationError(
            "segment_lungs: downsample must be a positive integer (or None for automatic), "
            f"got {downsample!r}."
        )
    factor = int(downsample) if downsample else max(1, min(4, int(round(1.4 / min(volume.spacing[1:])))))
    spacing = (volume.spacing[0], volume.spacing[1] * factor, volume.spacing[2] * factor)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    hu = block_mean(hu_full, factor)
    air = hu < air_threshold_hu
    report(1)

    body = _body_mask(air)
    report(2)

    superior_is_up = volume.affine[2, 0] > 0
    min_voxels = int(np.ceil(min_lung_ml / voxel_ml))
    candidates = _lung_components(air & body, min_voxels, superior_is_up)
    report(3)

    params = AirwayParameters(lumen_hu=airway_lumen_hu, bronchus_max_mm=bronchus_max_mm)
    lumen = track_airways(hu, candidates, body, spacing, superior_is_up, params)
    airways = ball_dilate(lumen, 2.0, (1e6, spacing[1], spacing[2])) & air
    # From here on, work inside the candidates' bounding box (the distance transforms dominate the time).
    box = padded_box(candidates, spacing, 20.0)
    offset = np.array([sl.start for sl in box], dtype=float)
    lungs = candidates[box] & ~airways[box]
    # An opening breaks thin bridges (a thin diaphragm over bowel gas) before the lungs are chosen again.
    kept = _lung_components(ball_open(lungs, opening_radius_mm, spacing), min_voxels, superior_is_up)
    lungs = _drop_small(lungs & ball_dilate(kept, opening_radius_mm + 0.5 * spacing[1], spacing), 0.02)
    if not lungs.any():
        raise LungSegmentationError(_NO_LUNG.format(what="only airways were found"))
    report(4)

    first, second = split_lungs(lungs, spacing, volume)
    left, right = name_sides(first, second, body[box], volume, factor, offset)
    report(5)

    fill = dict(
        body=body[box],
        spacing=spacing,
        inferior_step=-1 if superior_is_up else 1,
        max_area_mm2=pocket_max_area_mm2,
        max_depth_mm=pocket_max_depth_mm,
        max_length_mm=pocket_max_length_mm,
        closing_radius_mm=closing_radius_mm,
    )
    left_filled = np.zeros_like(air)
    right_filled = np.zeros_like(air)
    left_filled[box] = _fill_lung(left, right | airways[box], **fill)
    right_filled[box] = _fill_lung(right, left | airways[box], **fill) & ~left_filled[box]
    report(6)

    air_full = hu_full < air_threshold_hu
    airways_full = upsample(ndimage.binary_dilation(airways, PLANE_CROSS), factor, shape) & air_full
    left_full = _refine(left_filled, left_filled & ~air, air_full, factor, shape) & ~airways_full
    right_full = _refine(right_filled, right_filled & ~air, air_full, factor, shape) & ~airways_full
    both = left_full & right_full
    if both.any():
        keep_left = upsample(left_filled, factor, shape)
        left_full &= ~both | keep_left
        right_full &= ~(both & keep_left)
    report(7)
    return LungSegmentation(
        lungs=left_full | right_full,
        left=left_full,
        right=right_full,
        airways=airways_full,
        body=upsample(body, factor, shape),
        spacing=tuple(float(s) for s in volume.spacing),  # type: ignore[arg-type]
    )


_NO_LUNG = (
    "no lung found in the volume ({what}). segment_lungs needs an axial chest CT in Hounsfield "
    "units with the lungs inside the field of view; check the rescale slope/intercept and that the "
    "series is a chest CT."
)


def _body_mask(air: np.ndarray) -> np.ndarray:
    """What is not air connected to the in-plane image border: its largest part, holes filled per slice."""
    labels, count = ndimage.label(air)
    edges = (labels[:, 0], labels[:, -1], labels[:, :, 0], labels[:, :, -1])
    border = np.unique(np.concatenate([edge.ravel() for edge in edges]))
    outside = np.isin(labels, border[border > 0])
    inside = ~outside
    labels, count = ndimage.label(inside)
    if count == 0:
        raise LungSegmentationError(_NO_LUNG.format(what="no body: the image is all air"))
    sizes = component_sizes(labels, count)
    sizes[0] = 0
    body = labels == int(np.argmax(sizes))
    return ndimage.binary_fill_holes(body, structure=PLANE_CROSS)


def _lung_components(inner_air: np.ndarray, min_voxels: int, superior_is_up: bool) -> np.ndarray:
    """Air components of lung size that reach the upper half of the largest one (not bowel gas)."""
    labels, count = ndimage.label(inner_air)
    sizes = component_sizes(labels, count)
    sizes[0] = 0
    if count == 0 or sizes.max() < min_voxels:
        raise LungSegmentationError(
            _NO_LUNG.format(what=f"no air component inside the body is larger than {min_voxels} voxels")
        )
    largest = int(np.argmax(sizes))
    slices = ndimage.find_objects(labels)
    z_of = (lambda sl: sl[0].stop - 1) if superior_is_up else (lambda sl: -sl[0].start)
    ref = slices[largest - 1][0]
    middle = 0.5 * (ref.start + ref.stop - 1)
    middle_key = middle if superior_is_up else -middle
    keep = [
        index
        for index in range(1, count + 1)
        if sizes[index] >= max(min_voxels, 0.1 * sizes[largest]) and z_of(slices[index - 1]) >= middle_key
    ]
    return np.isin(labels, keep)


def _drop_small(mask: np.ndarray, fraction: float) -> np.ndarray:
    labels, count = ndimage.label(mask)
    if count <= 1:
        return mask
    sizes = component_sizes(labels, count)
    sizes[0] = 0
    return (sizes >= fraction * sizes.max())[labels] & mask


def _fill_lung(
    lung: np.ndarray,
    forbidden: np.ndarray,
    body: np.ndarray,
    spacing: Spacing,
    inferior_step: int,
    max_area_mm2: float,
    max_depth_mm: float,
    max_length_mm: float,
    closing_radius_mm: float,
) -> np.ndarray:
    """Vessels, enclosed nodules, juxtapleural pockets and a light closing (in the lung's box)."""
    if not lung.any():
        return lung
    box = padded_box(lung, spacing, closing_radius_mm + 2 * max(spacing))
    sub, sub_forbidden = lung[box], forbidden[box]
    filled = fill_enclosed_holes(sub, inferior_step)
    filled = fill_border_pockets(
        filled,
        spacing,
        max_area_mm2=max_area_mm2,
        max_depth_mm=max_depth_mm,
        max_length_mm=max_length_mm,
        forbidden=sub_forbidden,
        inferior_step=inferior_step,
    )
    if closing_radius_mm > 0:
        filled |= ball_close(filled, closing_radius_mm, spacing) & body[box] & ~sub_forbidden
    filled = fill_enclosed_holes(filled, inferior_step) & ~sub_forbidden
    out = np.zeros_like(lung)
    out[box] = filled
    return out


def _refine(
    mask: np.ndarray, added: np.ndarray, air_full: np.ndarray, factor: int, shape: tuple[int, int, int]
) -> np.ndarray:
    """Full-resolution mask: the coarse interior, plus border voxels that are air or were filled in."""
    if factor == 1:
        return mask.copy()
    interior = upsample(ndimage.binary_erosion(mask, PLANE_CROSS), factor, shape)
    band = upsample(ndimage.binary_dilation(mask, PLANE_CROSS), factor, shape) & ~interior
    return interior | (band & (air_full | upsample(added, factor, shape)))
