"""The :class:`Volume` type: a 3D array with the geometry that places it in the patient.

Conventions (kept everywhere in wsnodule):

* ``array`` is indexed ``(z, y, x)``: slice, row, column.
* ``spacing`` is in millimetres in the same ``(z, y, x)`` order.
* ``origin`` is the world position, in millimetres in the patient (LPS) frame as
  DICOM and ITK define it, of the *centre* of voxel ``[0, 0, 0]``, given as
  ``(x, y, z)`` world coordinates.
* ``direction`` is the 3x3 ITK direction matrix: column ``j`` is the unit world
  vector along index axis ``j``, where index axes are ordered ``(x, y, z)``
  (column, row, slice), exactly as ``SimpleITK.Image.GetDirection()``.

World points are always ``(x, y, z)``; voxel indices are always ``(z, y, x)``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from wsnodule_core.errors import (
    DimensionError,
    GeometryMismatchError,
    InvalidSpacingError,
    InvalidVolumeError,
    NonFiniteValuesError,
)

Triple = tuple[float, float, float]


@dataclass(frozen=True)
class VolumeMetadata:
    """What is known about where a volume came from.

    ``dicom_files`` lists the source DICOM files in slice order (index 0 is
    ``array[0]``) when the volume was read from DICOM; the DICOM-SEG writer
    references them.
    """

    modality: str | None = None
    patient_id: str | None = None
    study_uid: str | None = None
    series_uid: str | None = None
    source_path: str | None = None
    source_format: str | None = None
    dicom_files: tuple[str, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def is_ct(self) -> bool:
        """True when the modality is CT or unknown (values then taken as HU)."""
        return self.modality is None or self.modality.upper() == "CT"


@dataclass(frozen=True, eq=False)
class Volume:
    """A 3D image (or mask) with its spacing, origin, direction and metadata."""

    array: np.ndarray
    spacing: Triple = (1.0, 1.0, 1.0)
    origin: Triple = (0.0, 0.0, 0.0)
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))
    metadata: VolumeMetadata = field(default_factory=VolumeMetadata)

    def __post_init__(self) -> None:
        array = np.asarray(self.array)
        where = self.metadata.source_path or "this volume"
        if array.ndim != 3:
            raise DimensionError(
                f"{where}: expected a 3D volume (z, y, x) but got an array of shape {array.shape} "
                f"({array.ndim}D). Give a 3D image: a single 2D slice or a 4D/multi-channel "
                "image cannot be used as a CT volume."
            )
        if min(array.shape) < 1:
            raise DimensionError(f"{where}: the volume is empty (shape {array.shape}).")
        spacing = tuple(float(s) for s in self.spacing)
        if len(spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing):
            raise InvalidSpacingError(
                f"{where}: voxel spacing must be three positive finite millimetre values "
                f"(z, y, x), got {self.spacing}. Fix the header's spacing (PixelSpacing / "
                "slice positions in DICOM, pixdim in NIfTI) or give the spacing explicitly."
            )
        origin = tuple(float(o) for o in self.origin)
        if len(origin) != 3 or not all(np.isfinite(o) for o in origin):
            raise InvalidVolumeError(f"{where}: origin must be three finite numbers, got {self.origin}.")
        direction = np.asarray(self.direction, dtype=float).reshape(3, 3)
        if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-4):
            raise InvalidVolumeError(
                f"{where}: the direction matrix is not orthonormal:\n{direction}\n"
                "Check the file's orientation header."
            )
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            bad = int(np.count_nonzero(~np.isfinite(array)))
            raise NonFiniteValuesError(
                f"{where}: {bad} voxel(s) are NaN or infinite. Replace them (for CT, with -1024 HU "
                "outside the body) before using the volume."
            )
        object.__setattr__(self, "array", array)
        object.__setattr__(self, "spacing", spacing)
        object.__setattr__(self, "origin", origin)
        object.__setattr__(self, "direction", direction)

    # --- shape and geometry --------------------------------------------------

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.array.shape)  # type: ignore[return-value]

    @property
    def voxel_volume_mm3(self) -> float:
        return float(np.prod(self.spacing))

    @property
    def affine(self) -> np.ndarray:
        """4x4 matrix taking homogeneous voxel indices ``(z, y, x, 1)`` to world ``(x, y, z, 1)``."""
        spacing_xyz = np.asarray(self.spacing[::-1])
        linear_xyz = self.direction @ np.diag(spacing_xyz)  # index (x, y, z) -> world
        affine = np.eye(4)
        affine[:3, :3] = linear_xyz[:, ::-1]  # index (z, y, x) -> world
        affine[:3, 3] = self.origin
        return affine

    def index_to_world(self, indices_zyx: Sequence[float] | np.ndarray) -> np.ndarray:
        """World ``(x, y, z)`` mm of voxel indices ``(z, y, x)``; accepts ``(3,)`` or ``(n, 3)``."""
        idx = np.asarray(indices_zyx, dtype=float)
        flat = np.atleast_2d(idx)
        world = flat @ self.affine[:3, :3].T + self.affine[:3, 3]
        return world.reshape(idx.shape)

    def world_to_index(self, points_xyz: Sequence[float] | np.ndarray) -> np.ndarray:
        """Continuous voxel indices ``(z, y, x)`` of world points ``(x, y, z)``; round to get voxels."""
        pts = np.asarray(points_xyz, dtype=float)
        flat = np.atleast_2d(pts)
        inverse = np.linalg.inv(self.affine[:3, :3])
        idx = (flat - self.affine[:3, 3]) @ inverse.T
        return idx.reshape(pts.shape)

    def same_geometry(self, other: "Volume", atol: float = 1e-4) -> bool:
        """True when ``other`` has the same shape, spacing, origin and direction."""
        return (
            self.shape == other.shape
            and np.allclose(self.spacing, other.spacing, atol=atol)
            and np.allclose(self.origin, other.origin, atol=atol)
            and np.allclose(self.direction, other.direction, atol=atol)
        )

    # --- derived volumes -------------------------------------------------------

    def with_array(self, array: np.ndarray, **metadata_changes: Any) -> "Volume":
        """A volume with this geometry and a new array of the same shape (for masks, maps)."""
        array = np.asarray(array)
        if array.shape != self.shape:
            raise GeometryMismatchError(
                f"array of shape {array.shape} cannot take the geometry of a volume of shape "
                f"{self.shape}; resample it to the reference grid first."
            )
        metadata = dataclasses.replace(self.metadata, **metadata_changes) if metadata_changes else self.metadata
        return Volume(array, self.spacing, self.origin, self.direction.copy(), metadata)

    def __repr__(self) -> str:
        return (
            f"Volume(shape={self.shape}, dtype={self.array.dtype}, spacing={self.spacing}, "
            f"origin={self.origin}, modality={self.metadata.modality!r})"
        )


ORIGIN_TOLERANCE_MM = 1e-3
"""Origins closer than this (or 1 % of the finest spacing, if larger) are one grid (NIfTI keeps float32)."""
SPACING_TOLERANCE = 1e-4
"""Relative spacing difference below which two spacings are equal."""
DIRECTION_TOLERANCE = 1e-3
"""Largest difference of direction cosines taken as the same orientation."""


def geometry_differences(volume: Volume, reference: Volume) -> list[str]:
    """How ``volume``'s grid differs from ``reference``'s (shape, spacing, origin, direction), in words;
    empty when they are one grid within the tolerances above."""
    found = []
    if volume.shape != reference.shape:
        found.append(f"shape {volume.shape} instead of {reference.shape} (z, y, x)")
    if not np.allclose(volume.spacing, reference.spacing, rtol=SPACING_TOLERANCE, atol=0):
        found.append(f"spacing {_mm(volume.spacing)} instead of {_mm(reference.spacing)} mm (z, y, x)")
    shift = np.asarray(volume.origin) - np.asarray(reference.origin)
    if np.abs(shift).max() > max(ORIGIN_TOLERANCE_MM, 0.01 * min(reference.spacing)):
        found.append(f"origin {_mm(volume.origin)} instead of {_mm(reference.origin)} mm (x, y, z): "
                     f"shifted by {float(np.linalg.norm(shift)):.1f} mm")
    if np.abs(volume.direction - reference.direction).max() > DIRECTION_TOLERANCE:
        found.append(f"direction {np.round(volume.direction, 4).tolist()} instead of "
                     f"{np.round(reference.direction, 4).tolist()}")
    return found


def _mm(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


def check_same_grid(volume: Volume, reference: Volume, what: str) -> None:
    """Raise :class:`GeometryMismatchError` naming each difference when ``volume`` (a mask, named
    ``what``) is not on ``reference``'s voxel grid."""
    found = geometry_differences(volume, reference)
    if found:
        raise GeometryMismatchError(
            f"{what} is not on its image's voxel grid: {'; '.join(found)}. Resample it onto the image's "
            "grid (or export it again from the image it was drawn on)."
        )


def check_mask_matches(mask: np.ndarray | Volume, reference: Volume) -> np.ndarray:
    """Return the mask's array after checking that it lies on ``reference``'s voxel grid."""
    if isinstance(mask, Volume):
        if not mask.same_geometry(reference):
            raise GeometryMismatchError(
                f"the mask's geometry (shape {mask.shape}, spacing {mask.spacing}, origin "
                f"{mask.origin}) differs from the reference volume's (shape {reference.shape}, "
                f"spacing {reference.spacing}, origin {reference.origin}). Resample the mask onto "
                "the reference grid first."
            )
        return mask.array
    array = np.asarray(mask)
    if array.shape != reference.shape:
        raise GeometryMismatchError(
            f"the mask has shape {array.shape} but the reference volume has shape "
            f"{reference.shape} (z, y, x); a mask must be on the volume's voxel grid."
        )
    return array
