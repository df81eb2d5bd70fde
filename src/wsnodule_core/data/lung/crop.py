"""The NAM lung-centred axial crop: every slice cut to ``size`` x ``size`` pixels around the lungs.

The crop keeps the geometry exact: crop voxel ``(k, j, i)`` lies at the world point of source
index ``(k, (j + offset_y) * scale_y, (i + offset_x) * scale_x)``; ``scale`` is 1 unless the
slices were resampled in-plane first (then it is new spacing / source spacing).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from wsnodule_core.data.lung.segmentation import LungSegmentation
from wsnodule_core.errors import GeometryMismatchError, LungSegmentationError
from wsnodule_core.image.resample import Grid, resample_index_map, resample_to_grid
from wsnodule_core.io.volume import Volume, check_mask_matches


@dataclass(frozen=True, eq=False)
class CropResult:
    """A lung-centred crop and how it maps to its source grid.

    ``offset_yx`` is the (resampled) in-plane index of crop pixel ``(0, 0)``; it is negative or
    runs past the image when the crop was padded with ``fill_hu``. ``scale_yx`` is source pixels
    per crop pixel along y and x (1.0 when not resampled).
    """

    volume: Volume
    offset_yx: tuple[int, int]
    scale_yx: tuple[float, float]
    source_shape: tuple[int, int, int]

    @property
    def size(self) -> int:
        return self.volume.shape[1]

    @property
    def resampled(self) -> bool:
        return self.scale_yx != (1.0, 1.0)

    def crop_to_source_index(self, indices_zyx: np.ndarray | tuple[float, float, float]) -> np.ndarray:
        """Continuous source indices ``(z, y, x)`` of crop indices (``(3,)`` or ``(n, 3)``)."""
        idx = np.array(indices_zyx, dtype=float)
        idx[..., 1] = (idx[..., 1] + self.offset_yx[0]) * self.scale_yx[0]
        idx[..., 2] = (idx[..., 2] + self.offset_yx[1]) * self.scale_yx[1]
        return idx


def lung_crop(
    volume: Volume,
    lungs: np.ndarray | Volume | LungSegmentation,
    *,
    size: int = 384,
    pixel_spacing_mm: float | None = None,
    fill_hu: float = -1024,
) -> CropResult:
    """Crop every axial slice to ``size`` x ``size`` pixels centred on the lung mask's bounding box.

    Parameters
    ----------
    volume
        The CT.
    lungs
        Lung mask on ``volume``'s grid (array, mask Volume or :class:`LungSegmentation`).
    size
        Crop side in pixels.
    pixel_spacing_mm
        When given, the slices are first resampled (linearly, SimpleITK) in-plane to this pixel
        spacing; the crop's array is then float32. Without it the crop keeps the source dtype.
    fill_hu
        Value of the padding where the crop runs past the image.
    """
    if isinstance(lungs, LungSegmentation):
        lungs = lungs.lungs
    mask = check_mask_matches(lungs, volume).astype(bool, copy=False)
    if int(size) < 1:
        raise LungSegmentationError(f"lung_crop: size must be a positive number of pixels, got {size}.")
    if pixel_spacing_mm is not None and not (np.isfinite(pixel_spacing_mm) and pixel_spacing_mm > 0):
        raise LungSegmentationError(
            f"lung_crop: pixel_spacing_mm must be a positive number of mm (or None), got {pixel_spacing_mm}."
        )
    if not mask.any():
        raise LungSegmentationError(
            "lung_crop: the lung mask is empty, so there is no lung to centre the crop on. "
            "Check the lung segmentation of this volume (segment_lungs) first."
        )
    size = int(size)
    if pixel_spacing_mm is None:
        scale = (1.0, 1.0)
    else:
        scale = (float(pixel_spacing_mm) / volume.spacing[1], float(pixel_spacing_mm) / volume.spacing[2])
    rows = np.flatnonzero(mask.any(axis=(0, 2)))
    cols = np.flatnonzero(mask.any(axis=(0, 1)))
    centre = (0.5 * (rows[0] + rows[-1]) / scale[0], 0.5 * (cols[0] + cols[-1]) / scale[1])
    offset = tuple(int(np.floor(c - (size - 1) / 2.0 + 0.5)) for c in centre)
    origin = volume.index_to_world([0.0, offset[0] * scale[0], offset[1] * scale[1]])
    if pixel_spacing_mm is None:
        array = _window(volume.array, offset, size, fill_hu)
        spacing = volume.spacing
    else:
        spacing = (volume.spacing[0], float(pixel_spacing_mm), float(pixel_spacing_mm))
        grid = Grid((volume.shape[0], size, size), spacing, tuple(origin), volume.direction)
        array = resample_to_grid(volume, grid, fill=float(fill_hu)).array
    origin_xyz = tuple(float(o) for o in origin)
    cropped = Volume(array, spacing, origin_xyz, volume.direction.copy(), volume.metadata)
    return CropResult(cropped, offset, scale, volume.shape)  # type: ignore[arg-type]


def _window(array: np.ndarray, offset: tuple[int, int], size: int, fill: float) -> np.ndarray:
    """``array[:, oy:oy+size, ox:ox+size]`` with ``fill`` where the window runs past the image."""
    dtype = np.result_type(array.dtype, np.min_scalar_type(fill)) if array.dtype != bool else bool
    out = np.full((array.shape[0], size, size), fill, dtype=dtype)
    ys = slice(max(0, offset[0]), min(array.shape[1], offset[0] + size))
    xs = slice(max(0, offset[1]), min(array.shape[2], offset[1] + size))
    if ys.start < ys.stop and xs.start < xs.stop:
        rows = slice(ys.start - offset[0], ys.stop - offset[0])
        cols = slice(xs.start - offset[1], xs.stop - offset[1])
        out[:, rows, cols] = array[:, ys, xs]
    return out


def crop_mask(mask: np.ndarray | Volume, crop: CropResult) -> np.ndarray:
    """A mask on the source grid cut (and resampled, nearest neighbour) like the crop."""
    array = np.asarray(mask.array if isinstance(mask, Volume) else mask).astype(bool, copy=False)
    if array.shape != crop.source_shape:
        raise GeometryMismatchError(
            f"crop_mask: the mask has shape {array.shape} but the crop was made from a volume of "
            f"shape {crop.source_shape}; give a mask on the source volume's grid."
        )
    return resample_index_map(array, (array.shape[0], crop.size, crop.size), (1.0, *crop.scale_yx),
                              (0.0, *crop.offset_yx))


def uncrop_mask(mask_crop: np.ndarray | Volume, crop_result: CropResult, reference: Volume) -> np.ndarray:
    """Put a mask from crop space back on ``reference``'s grid (nearest neighbour when resampled).

    Source voxels outside the crop are False.
    """
    data = mask_crop.array if isinstance(mask_crop, Volume) else mask_crop
    array = np.asarray(data).astype(bool, copy=False)
    if array.shape != crop_result.volume.shape:
        raise GeometryMismatchError(
            f"uncrop_mask: the mask has shape {array.shape} but the crop has shape "
            f"{crop_result.volume.shape}; give a mask made on the crop's grid."
        )
    if reference.shape != crop_result.source_shape:
        raise GeometryMismatchError(
            f"uncrop_mask: the reference volume has shape {reference.shape} but the crop was made "
            f"from a volume of shape {crop_result.source_shape}; give the crop's source volume."
        )
    (sy, sx), (oy, ox) = crop_result.scale_yx, crop_result.offset_yx
    return resample_index_map(array, reference.shape, (1.0, 1.0 / sy, 1.0 / sx), (0.0, -oy * sy, -ox * sx))
