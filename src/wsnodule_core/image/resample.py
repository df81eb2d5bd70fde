"""The one resampler: a :class:`Volume` (or a bare array) onto another grid, world position kept.

Everything goes through :func:`resample_to_grid` (SimpleITK's ``ResampleImageFilter``; the axis
order is converted in :mod:`wsnodule_core.io.sitk_bridge` only). The other functions only choose
the grid:

* :func:`resample_to_spacing`: the same physical box at a new spacing. The first voxel's outer
  corner stays where it was (the origin moves by half the spacing change along each axis);
  the size is ``round`` or ``ceil`` of ``shape * old / new``.
* :func:`resample_array`: the same for a bare ``(z, y, x)`` array with a spacing (no world
  geometry): new index ``j`` samples old index ``j r + (r - 1) / 2``, ``r = new / old``.
* :func:`resample_index_map`: a bare array sampled at ``(j + offset) * scale`` per axis.

Interpolators: ``"linear"`` and ``"bspline"`` give float32 (the input is cast first) unless
``keep_dtype`` (then SimpleITK interpolates in the input's pixel type, as integer images come out of
a scanner); ``"nearest"`` keeps the dtype (masks). Outside the input, voxels get ``fill``, or, with
``extrapolate``, the nearest edge value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np
import SimpleITK as sitk

from wsnodule_core.errors import InvalidSpacingError, ModelConfigError
from wsnodule_core.io.sitk_bridge import from_sitk, sitk_grid, to_sitk
from wsnodule_core.io.volume import Volume

Interpolator = Literal["linear", "nearest", "bspline"]
INTERPOLATORS = {"linear": sitk.sitkLinear, "nearest": sitk.sitkNearestNeighbor, "bspline": sitk.sitkBSpline}


@dataclass(frozen=True, eq=False)
class Grid:
    """A voxel grid in the world: ``shape`` and ``spacing`` ``(z, y, x)``, ``origin`` ``(x, y, z)``
    (the centre of voxel 0) and ``direction`` (the ITK 3 x 3 matrix), as in :class:`Volume`."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: np.ndarray

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(n) for n in self.shape))
        object.__setattr__(self, "spacing", tuple(float(s) for s in self.spacing))
        object.__setattr__(self, "origin", tuple(float(o) for o in self.origin))
        object.__setattr__(self, "direction", np.asarray(self.direction, float).reshape(3, 3))
        if len(self.shape) != 3 or min(self.shape) < 1:
            raise InvalidSpacingError(f"a grid needs three sizes >= 1 (z, y, x), got {self.shape}.")
        if len(self.spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in self.spacing):
            raise InvalidSpacingError(f"a grid needs three positive spacings (z, y, x) mm, got {self.spacing}.")

    @classmethod
    def of(cls, volume: Volume) -> "Grid":
        """The grid ``volume`` lies on."""
        return cls(volume.shape, volume.spacing, volume.origin, volume.direction)


def resample_to_grid(volume: Volume, grid: Grid | Volume, *, interpolator: Interpolator = "linear",
                     fill: float = 0.0, keep_dtype: bool = False, extrapolate: bool = False,
                     transform: np.ndarray | None = None) -> Volume:
    """``volume`` sampled on ``grid`` (a :class:`Grid` or another volume's grid) by world position.

    Parameters
    ----------
    volume
        What to resample; its metadata is kept.
    grid
        The output grid.
    interpolator
        ``"linear"``, ``"bspline"`` (float32 out unless ``keep_dtype``) or ``"nearest"`` (dtype kept).
    fill
        Value of output voxels outside ``volume``.
    keep_dtype
        Interpolate in the input's pixel type instead of float32.
    extrapolate
        Outside ``volume``, take the nearest edge value instead of ``fill``.
    transform
        A 3 x 3 matrix (world ``(x, y, z)``, about the world origin) mapping output points to input
        points, e.g. a rotation; None is the identity.

    Examples
    --------
    >>> iso = resample_to_spacing(ct, (1.0, 1.0, 1.0))                       # doctest: +SKIP
    >>> mask_on_ct = resample_to_grid(mask, ct, interpolator="nearest")      # doctest: +SKIP
    """
    if interpolator not in INTERPOLATORS:
        raise ModelConfigError(f"interpolator must be one of {list(INTERPOLATORS)}, got {interpolator!r}.")
    if isinstance(grid, Volume):
        grid = Grid.of(grid)
    image = to_sitk(volume)
    if interpolator != "nearest" and not keep_dtype and image.GetPixelID() != sitk.sitkFloat32:
        image = sitk.Cast(image, sitk.sitkFloat32)
    size, spacing = sitk_grid(grid.shape, grid.spacing)
    resampler = sitk.ResampleImageFilter()
    resampler.SetSize(size)
    resampler.SetOutputSpacing(spacing)
    resampler.SetOutputOrigin(grid.origin)
    resampler.SetOutputDirection(tuple(float(d) for d in grid.direction.ravel()))
    resampler.SetDefaultPixelValue(float(fill))
    resampler.SetInterpolator(INTERPOLATORS[interpolator])
    if extrapolate:
        resampler.SetUseNearestNeighborExtrapolator(True)
    if transform is not None:
        affine = sitk.AffineTransform(3)
        affine.SetMatrix(tuple(float(v) for v in np.asarray(transform, float).ravel()))
        resampler.SetTransform(affine)
    return from_sitk(resampler.Execute(image), volume.metadata)


def _spacing(spacing: float | Sequence[float]) -> np.ndarray:
    array = np.broadcast_to(np.asarray(spacing, dtype=float), (3,)).copy()
    if not np.all(np.isfinite(array)) or np.any(array <= 0):
        raise InvalidSpacingError(f"spacing must be positive mm (one value or (z, y, x)), got {spacing!r}.")
    return array


def spacing_grid(grid: Grid | Volume, spacing: float | Sequence[float], *,
                 size: Literal["round", "ceil"] = "round") -> Grid:
    """The grid covering ``grid``'s box at ``spacing`` (z, y, x) mm, the first voxel's corner kept.

    ``size``: ``"round"`` (the nearest number of voxels) or ``"ceil"`` (enough voxels to cover
    the box); at least one voxel per axis.
    """
    if isinstance(grid, Volume):
        grid = Grid.of(grid)
    old, new = np.asarray(grid.spacing, float), _spacing(spacing)
    extent = np.asarray(grid.shape) * old / new
    if size == "round":
        shape = np.maximum(1, np.round(extent))
    elif size == "ceil":
        shape = np.maximum(1, np.ceil(extent - 1e-6))
    else:
        raise ModelConfigError(f"size must be 'round' or 'ceil', got {size!r}.")
    origin = np.asarray(grid.origin) + grid.direction @ ((new - old)[::-1] / 2.0)
    return Grid(tuple(shape.astype(int)), tuple(new), tuple(origin), grid.direction)


def resample_to_spacing(volume: Volume, spacing: float | Sequence[float], *,
                        interpolator: Interpolator = "linear", fill: float = 0.0,
                        size: Literal["round", "ceil"] = "round", keep_dtype: bool = False,
                        extrapolate: bool = False) -> Volume:
    """``volume`` at ``spacing`` (z, y, x) mm over the same box (see :func:`spacing_grid`).

    A volume already at ``spacing`` (within 1e-6 mm) comes back as it is (cast to float32 for
    ``"linear"``/``"bspline"`` without ``keep_dtype``, as a resampled one would be). The other
    arguments are those of :func:`resample_to_grid`.
    """
    target = _spacing(spacing)
    if np.allclose(target, volume.spacing, atol=1e-6):
        if interpolator == "nearest" or keep_dtype or volume.array.dtype == np.float32:
            return volume
        return volume.with_array(np.asarray(volume.array, np.float32))
    return resample_to_grid(volume, spacing_grid(volume, target, size=size), interpolator=interpolator,
                            fill=fill, keep_dtype=keep_dtype, extrapolate=extrapolate)


def _index_volume(array: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0),
                  origin_zyx: Sequence[float] = (0.0, 0.0, 0.0)) -> Volume:
    """``array`` placed in a world where ``(x, y, z)`` are its (scaled) index axes."""
    return Volume(np.asarray(array), tuple(float(s) for s in spacing),
                  tuple(float(o) for o in np.asarray(origin_zyx, float)[::-1]), np.eye(3))


def resampled_shape(shape: Sequence[int], spacing: Sequence[float], new_spacing: Sequence[float]
                    ) -> tuple[int, int, int]:
    """Grid size covering the same extent at ``new_spacing`` (rounded, at least one voxel per axis)."""
    return tuple(max(1, int(round(n * s / t))) for n, s, t in zip(shape, spacing, new_spacing))  # type: ignore[return-value]


def resample_array(array: np.ndarray, spacing: Sequence[float], new_spacing: Sequence[float], *,
                   interpolator: Interpolator = "linear", shape: Sequence[int] | None = None) -> np.ndarray:
    """``array`` (z, y, x) at ``spacing`` resampled to ``new_spacing`` over the same extent.

    Voxel footprints keep their outer edge: new index ``j`` samples old index ``j r + (r - 1) / 2``
    with ``r = new / old``; outside, the edge value is repeated. ``shape`` forces the output size
    (to go back to an input grid exactly). Same grid: the array itself.
    """
    out_shape = tuple(shape) if shape is not None else resampled_shape(array.shape, spacing, new_spacing)
    ratio = np.asarray(new_spacing, float) / np.asarray(spacing, float)
    if out_shape == tuple(np.shape(array)) and np.allclose(ratio, 1.0):
        return np.asarray(array)
    source = _index_volume(array, spacing)
    target = np.asarray(new_spacing, float)
    grid = Grid(out_shape, tuple(target), tuple(((target - np.asarray(spacing, float)) / 2.0)[::-1]), np.eye(3))
    return resample_to_grid(source, grid, interpolator=interpolator, extrapolate=True).array


def resample_index_map(array: np.ndarray, shape: Sequence[int], scale: Sequence[float],
                       offset: Sequence[float], *, interpolator: Interpolator = "nearest",
                       fill: float = 0.0) -> np.ndarray:
    """``array`` (z, y, x) sampled at index ``(j + offset) * scale`` per axis into ``shape``.

    Nearest neighbour rounds half up; samples outside ``array`` get ``fill``. Booleans stay boolean.
    """
    data = np.asarray(array)
    source = _index_volume(data.view(np.uint8) if data.dtype == bool else data)
    scale, offset = np.asarray(scale, float), np.asarray(offset, float)
    grid = Grid(tuple(shape), tuple(scale), tuple((offset * scale)[::-1]), np.eye(3))
    out = resample_to_grid(source, grid, interpolator=interpolator, fill=fill).array
    return out.astype(bool) if data.dtype == bool else out
