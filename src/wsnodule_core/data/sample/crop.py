"""A box of a scan's voxel grid cut out with its HU and world geometry unchanged.

A voxel ``[k, j, i]`` of the crop is voxel ``start + [k, j, i]`` of the source: the crop keeps the
source's spacing and direction, and its origin is the world position of the box's first voxel. Nothing
is resampled, so the values are the source's, bit for bit.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from wsnodule_core.errors import GeometryMismatchError
from wsnodule_core.io.volume import Volume


@dataclass(frozen=True)
class CropBox:
    """Voxel box ``[start, stop)`` of a grid, both ``(z, y, x)``."""

    start: tuple[int, int, int]
    stop: tuple[int, int, int]

    def __post_init__(self) -> None:
        start = tuple(int(v) for v in self.start)
        stop = tuple(int(v) for v in self.stop)
        if len(start) != 3 or len(stop) != 3 or any(a < 0 or b <= a for a, b in zip(start, stop)):
            raise GeometryMismatchError(f"a crop box needs 0 <= start < stop on each of (z, y, x), got start "
                                        f"{self.start} and stop {self.stop}.")
        object.__setattr__(self, "start", start)
        object.__setattr__(self, "stop", stop)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(b - a for a, b in zip(self.start, self.stop))  # type: ignore[return-value]

    @property
    def slices(self) -> tuple[slice, slice, slice]:
        return tuple(slice(a, b) for a, b in zip(self.start, self.stop))  # type: ignore[return-value]

    def contains(self, mask: np.ndarray) -> bool:
        """True when every voxel of ``mask`` (on the source grid) lies in the box."""
        inside = np.zeros(mask.shape, dtype=bool)
        inside[self.slices] = True
        return not np.any(np.asarray(mask, dtype=bool) & ~inside)

    def to_dict(self) -> dict:
        return {"start_zyx": list(self.start), "stop_zyx": list(self.stop)}


def crop_volume(volume: Volume, box: CropBox) -> Volume:
    """The voxels of ``box`` as a Volume on the same world grid as ``volume`` (values unchanged).

    The crop keeps the source's identity (patient, series) but not its DICOM file list: it is not the
    whole series, so nothing may reference those files through it. The box is recorded in the
    metadata's ``extra['crop_start_zyx']``.

    Raises
    ------
    GeometryMismatchError
        When the box reaches outside the volume.
    """
    if any(b > n for b, n in zip(box.stop, volume.shape)):
        raise GeometryMismatchError(f"the crop box {box.start}..{box.stop} (z, y, x) reaches outside the volume "
                                    f"of shape {volume.shape}; clip it to the volume first.")
    origin = volume.index_to_world(np.asarray(box.start, dtype=float))
    extra = {**volume.metadata.extra, "crop_start_zyx": box.start}
    metadata = dataclasses.replace(volume.metadata, dicom_files=(), extra=extra)
    array = np.ascontiguousarray(volume.array[box.slices])
    return Volume(array, volume.spacing, tuple(origin), volume.direction.copy(), metadata)


def z_window(centre: float, n_slices: int, n_total: int) -> tuple[int, int]:
    """``[start, stop)`` of ``n_slices`` slices centred on slice ``centre``, shifted to fit ``n_total``."""
    n = min(int(n_slices), int(n_total))
    start = round(float(centre)) - n // 2
    start = min(max(start, 0), n_total - n)
    return start, start + n


def region_box(
    region: np.ndarray, z_range: tuple[int, int], margin_mm: float, spacing: Sequence[float]
) -> CropBox:
    """Slices ``z_range`` and, in-plane, the bounding box of ``region`` on those slices plus
    ``margin_mm`` (clipped to the grid).

    Raises
    ------
    GeometryMismatchError
        When ``region`` is empty on those slices.
    """
    z0, z1 = z_range
    in_plane = np.asarray(region[z0:z1], dtype=bool).any(axis=0)
    if not in_plane.any():
        raise GeometryMismatchError(f"the region is empty on slices {z0}..{z1 - 1}; no box can hold it.")
    rows, cols = np.flatnonzero(in_plane.any(axis=1)), np.flatnonzero(in_plane.any(axis=0))
    my, mx = (int(np.ceil(margin_mm / float(s))) for s in spacing[1:])
    shape = region.shape
    return CropBox((z0, max(rows[0] - my, 0), max(cols[0] - mx, 0)),
                   (z1, min(rows[-1] + my + 1, shape[1]), min(cols[-1] + mx + 1, shape[2])))
