"""Conversion between :class:`Volume` and ``SimpleITK.Image`` with the geometry kept exactly."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from wsnodule_core.errors import DimensionError
from wsnodule_core.io.volume import Volume, VolumeMetadata


def to_sitk(volume: Volume, array: np.ndarray | None = None) -> sitk.Image:
    """A SimpleITK image of ``volume`` (or of ``array`` on ``volume``'s grid)."""
    data = volume.array if array is None else np.asarray(array)
    if data.dtype == bool:
        data = data.astype(np.uint8)
    image = sitk.GetImageFromArray(np.ascontiguousarray(data))
    image.SetSpacing(tuple(float(s) for s in volume.spacing[::-1]))
    image.SetOrigin(tuple(float(o) for o in volume.origin))
    image.SetDirection(tuple(float(d) for d in volume.direction.ravel()))
    return image


def from_sitk(image: sitk.Image, metadata: VolumeMetadata | None = None) -> Volume:
    """A :class:`Volume` from a 3D SimpleITK image (spacing and axes reordered to ``(z, y, x)``)."""
    where = (metadata.source_path if metadata else None) or "image"
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise DimensionError(
            f"{where}: expected a single-channel 3D image, got a {image.GetDimension()}D image with "
            f"{image.GetNumberOfComponentsPerPixel()} component(s) per voxel and size {image.GetSize()}. "
            "Give a 3D scalar volume (split 4D or multi-channel images first)."
        )
    array = sitk.GetArrayFromImage(image)
    return Volume(
        array=array,
        spacing=tuple(image.GetSpacing()[::-1]),
        origin=tuple(image.GetOrigin()),
        direction=np.asarray(image.GetDirection(), dtype=float).reshape(3, 3),
        metadata=metadata or VolumeMetadata(),
    )


def sitk_grid(shape, spacing) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    """A grid's ``(z, y, x)`` shape and spacing as SimpleITK's ``(x, y, z)`` size and spacing.

    Origin and direction need no conversion: they are ``(x, y, z)`` on both sides.
    """
    size = tuple(int(n) for n in np.asarray(shape)[::-1])
    return size, tuple(float(s) for s in np.asarray(spacing, float)[::-1])  # type: ignore[return-value]
