"""Real-texture nodules: a LIDC VOI (its own HU inside its mask) as a source of the insertion engine.

A :class:`RealNodule` is the VOI's crop and mask on the VOI's grid. It resamples itself onto the
target spacing with the shape engine's sub-voxel rule (:func:`~wsnodule_core.data.insertion.nodule_frame`):
the mask's signed distance gives the occupancy and the label voxels exactly as for a
:class:`~wsnodule_core.data.nodule_shape.NoduleShape`, and the crop's HU come along on the same
grid and turn. The blending weight is the occupancy of a soft-edged nodule: sub-voxels inside
count 1, those outside count ``1 - d / margin_mm`` (``d`` their distance to the surface) where
the crop has data, so the VOI's own surroundings fade into the background over ``margin_mm``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from wsnodule_core.data.insertion import (MIN_VOXELS, ResampledShape, TexturedShape, block_mean,
                                          signed_distance, centred_volume, nodule_frame, target_voxels)
from wsnodule_core.data.lidc.vois import LidcVoi, load_voi, read_voi_table, touches_in_plane_border
from wsnodule_core.data.nodule_shape import texture_class
from wsnodule_core.errors import InsertionParameterError
from wsnodule_core.image.resample import resample_to_grid
from wsnodule_core.io.volume import Volume

#: Width (mm) over which the VOI's surroundings fade into the background outside its mask.
MARGIN_MM = 2.0
#: Voxels of empty crop added on each side before resampling (the surface lies between voxels).
_PAD = 3


@dataclass(frozen=True, eq=False)
class RealNodule:
    """A real nodule crop: ``image`` (HU) and boolean ``mask`` (z, y, x) at ``spacing`` mm.

    ``texture_rating`` is the readers' texture rating (1..5; 0 when the VOI has none), ``name``
    the VOI's name (the records' ``shape_id``) and ``notes`` what the builder should tell about it.
    """

    image: np.ndarray
    mask: np.ndarray
    spacing: tuple[float, float, float]
    diameter_mm: float
    texture_rating: float
    name: str
    patient_id: str
    series_uid: str = ""
    ratings: Mapping[str, float] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    margin_mm: float = MARGIN_MM
    annotation_ids: tuple[int, ...] = ()
    centre_xyz: tuple[float, float, float] | None = None

    @property
    def volume_mm3(self) -> float:
        return float(np.count_nonzero(self.mask) * np.prod(self.spacing))

    @property
    def texture(self) -> str:
        return texture_class(self.texture_rating) if self.texture_rating > 0 else "unrated"

    @property
    def shape_id(self) -> str:
        return self.name

    def resample(self, spacing: Sequence[float], *, angle_deg: float = 0.0, flip_x: bool = False,
                 min_voxels: int = MIN_VOXELS) -> TexturedShape:
        """This nodule on ``spacing`` (see :func:`resample_real_nodule`)."""
        return resample_real_nodule(self, spacing, angle_deg=angle_deg, flip_x=flip_x, min_voxels=min_voxels)


def real_nodule(voi: LidcVoi, image: Volume, mask: Volume) -> RealNodule:
    """A :class:`RealNodule` from a VOI and its loaded image and mask (:func:`load_voi`)."""
    array = np.asarray(mask.array) > 0
    notes = ()
    if touches_in_plane_border(array):
        note = (f"VOI {voi.name}: its mask touches the crop's in-plane border, so the nodule may be cut "
                "there; it is inserted as cropped.")
        notes = (note,)
    return RealNodule(np.asarray(image.array, np.float32), array, tuple(float(s) for s in image.spacing),
                      float(voi.diameter_mm), float(voi.texture or 0.0), voi.name, voi.patient_id,
                      voi.series_uid, dict(voi.ratings), notes, centre_xyz=tuple(voi.centre_xyz))


def load_real_nodules(vois: str | os.PathLike | Sequence[LidcVoi] | None = None) -> list[RealNodule]:
    """Every VOI of a folder (default ``$WSNODULE_DATA/lidc-vois``) or of a list, as :class:`RealNodule`.

    The reader's errors (missing folder or file, bad table, other grid, empty mask) pass through.
    """
    table = read_voi_table(vois) if vois is None or isinstance(vois, (str, os.PathLike)) else list(vois)
    return [real_nodule(voi, *load_voi(voi)) for voi in table]


def resample_real_nodule(nodule: RealNodule, spacing: Sequence[float], *, angle_deg: float = 0.0,
                         flip_x: bool = False, min_voxels: int = MIN_VOXELS) -> TexturedShape:
    """``nodule`` on ``spacing`` (z, y, x) mm: occupancy and label voxels as for a shape, plus HU and weight.

    Raises :class:`InsertionParameterError` when it fills fewer than ``min_voxels`` target voxels.
    """
    spacing = tuple(float(s) for s in spacing)
    k = target_voxels(nodule, spacing)  # type: ignore[arg-type]
    if k < max(1, min_voxels):
        raise InsertionParameterError(
            f"VOI {nodule.name} ({nodule.volume_mm3:.1f} mm3) fills only {k} voxel(s) of spacing {spacing} "
            f"mm; at least {min_voxels} are needed to keep its volume within 10 %. Use a finer spacing, or "
            "leave it out (is_resolvable(nodule, spacing)).")
    # odd padded sizes put the crop's centre on a voxel centre: at equal spacing the HU are copied exactly
    pad = [(_PAD, _PAD + (n + 1) % 2) for n in nodule.mask.shape]
    mask = np.pad(nodule.mask, pad)
    crop = nodule.spacing
    sdf = signed_distance(mask, crop)
    frame = nodule_frame(mask.shape, crop, spacing, angle_deg=angle_deg, flip_x=flip_x)

    def onto(array: np.ndarray, grid, fill: float, **kwargs) -> np.ndarray:
        source = centred_volume(array, crop)
        return resample_to_grid(source, grid, fill=fill, transform=frame.matrix, **kwargs).array

    fine = onto(sdf, frame.fine, float(sdf.max()) + 100.0)
    base = ResampledShape.from_fine(fine, frame.factors, spacing, nodule.volume_mm3)
    known = onto(np.pad(np.ones(nodule.mask.shape, np.float32), pad), frame.fine, 0.0)
    hu = onto(np.pad(nodule.image, pad, mode="edge"), frame.coarse, 0.0, extrapolate=True)
    weight = blend_weight(fine, base.threshold, known, nodule.margin_mm, frame.factors)
    return TexturedShape(base.mask, base.occupancy, base.fine, base.factors, base.threshold, base.spacing,
                         hu.astype(np.float32), weight)


def blend_weight(fine: np.ndarray, threshold: float, known: np.ndarray, margin_mm: float,
                 factors: Sequence[int]) -> np.ndarray:
    """Per target voxel, the mean over its sub-voxels of 1 inside the surface (``fine <= threshold``)
    and ``known * (1 - d / margin_mm)`` outside it (``d = fine - threshold``, clipped at 0)."""
    outside = np.zeros_like(fine) if margin_mm <= 0 else \
        np.clip(1.0 - (fine - threshold) / margin_mm, 0.0, 1.0) * np.clip(known, 0.0, 1.0)
    return block_mean(np.where(fine <= threshold, 1.0, outside), factors)
