"""Read a DICOM image series into a :class:`Volume`: pydicom checks the headers, SimpleITK decodes.

Headers are read with pydicom (fast, no pixel data) to group files by SeriesInstanceUID, order
slices by ImagePositionPatient along the slice normal and check that they form one regular grid.
Pixels are decoded slice by slice by SimpleITK/GDCM, which applies RescaleSlope/RescaleIntercept
and handles the compressed transfer syntaxes (JPEG, JPEG 2000, JPEG-LS, RLE); pydicom's own
decoders are the fallback for a slice GDCM refuses.

Values: the DICOM modality rescale is always applied (HU for CT). The array is ``int16`` when
every value is an integer in the int16 range (the usual CT case), else ``float32``; both are exact
for integer HU.

Geometry tolerance: every slice must lie within ``SLICE_TOLERANCE`` (10 %) of one slice step of
the regular grid from the first to the last slice, and within 10 % of a pixel of the stack axis
(no gantry tilt); otherwise the series is refused rather than silently distorted.
"""

from __future__ import annotations

import os
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut

from wsnodule_core.errors import (
    CorruptDicomError,
    EmptyFolderError,
    InconsistentSeriesError,
    InputPathNotFoundError,
    InvalidSpacingError,
    MissingSlicesError,
    MixedOrientationError,
    MultipleSeriesError,
    NoDicomFilesError,
    NonCTModalityWarning,
    SeriesNotFoundError,
    UnsupportedFormatError,
)
from wsnodule_core.io.volume import Volume, VolumeMetadata

SLICE_TOLERANCE = 0.1
"""Largest allowed distance of a slice from the regular grid, as a fraction of the slice step."""
ORIENTATION_TOLERANCE = 1e-3
"""Largest allowed difference between the ImageOrientationPatient cosines of two slices."""

_NON_IMAGE_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.66.4",  # Segmentation
    "1.2.840.10008.1.3.10",  # Media Storage Directory (DICOMDIR)
}

ProgressCallback = Callable[[float], None]


@dataclass(frozen=True)
class DicomSeriesInfo:
    """One image series found in a folder; ``files`` are sorted by name, not yet by position."""

    series_uid: str
    description: str
    modality: str
    n_slices: int
    study_uid: str
    patient_id: str
    files: tuple[Path, ...]

    def __str__(self) -> str:
        return f"{self.series_uid} ({self.modality}, {self.n_slices} slices, '{self.description}')"


@dataclass(frozen=True)
class _Slice:
    path: Path
    header: pydicom.Dataset


def _candidate_files(folder: Path) -> list[Path]:
    if not folder.exists():
        raise InputPathNotFoundError(f"{folder}: no such folder. Check the path.")
    entries = sorted(folder.iterdir())
    files = [p for p in entries if p.is_file() and not p.name.startswith(".")]
    if not files:
        subfolders = [p.name for p in entries if p.is_dir()]
        hint = (
            f" It has sub-folders ({', '.join(subfolders[:8])}): give the folder that holds the "
            "DICOM files of one series."
            if subfolders
            else " Give a folder holding a DICOM series, or a NIfTI/NRRD/MetaImage file."
        )
        raise EmptyFolderError(f"{folder}: the folder holds no files.{hint}")
    return files


def _read_header(path: Path) -> pydicom.Dataset | None:
    """The header of a DICOM file, None when the file is not DICOM (no 'DICM' preamble)."""
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except InvalidDicomError as exc:
        with open(path, "rb") as f:
            if f.read(132)[128:] != b"DICM":
                return None
        raise CorruptDicomError(
            f"{path}: this DICOM file is truncated or damaged ({exc}). Copy or download the series "
            "again, or remove this file from the folder."
        ) from exc
    except Exception as exc:  # pydicom raises many types on truncated or damaged headers
        raise CorruptDicomError(
            f"{path}: this DICOM file is truncated or damaged ({type(exc).__name__}: {exc}). "
            "Copy or download the series again, or remove this file from the folder."
        ) from exc


def _check_complete(path: Path, header: pydicom.Dataset) -> None:
    """pydicom returns a partial dataset for a file cut short; refuse image files missing key tags."""
    sop_class = header.get("SOPClassUID") or header.file_meta.get("MediaStorageSOPClassUID")
    if str(sop_class) in _NON_IMAGE_SOP_CLASSES:
        return
    is_image_class = sop_class is not None and "Image Storage" in getattr(sop_class, "name", "")
    missing = [k for k in ("SOPClassUID", "SeriesInstanceUID", "Rows", "Columns") if k not in header]
    if "SOPClassUID" in missing or (is_image_class and missing):
        raise CorruptDicomError(
            f"{path}: this DICOM file is truncated or damaged (its header ends before "
            f"{', '.join(missing)}). Copy or download the series again, or remove this file from the folder."
        )


def _is_image(header: pydicom.Dataset) -> bool:
    sop_class = str(header.get("SOPClassUID", header.file_meta.get("MediaStorageSOPClassUID", "")))
    return sop_class not in _NON_IMAGE_SOP_CLASSES and "Rows" in header and "SeriesInstanceUID" in header


def _scan(folder: Path) -> dict[str, list[_Slice]]:
    files = _candidate_files(folder)
    by_series: dict[str, list[_Slice]] = {}
    for path in files:
        header = _read_header(path)
        if header is not None:
            _check_complete(path, header)
        if header is not None and _is_image(header):
            by_series.setdefault(str(header.SeriesInstanceUID), []).append(_Slice(path, header))
    if not by_series:
        raise NoDicomFilesError(
            f"{folder}: none of its {len(files)} file(s) is a DICOM image (e.g. {files[0].name}). "
            "Give a folder holding a DICOM series, or a NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr) "
            "or MetaImage (.mhd, .mha) file."
        )
    return by_series


def _info(series_uid: str, slices: list[_Slice]) -> DicomSeriesInfo:
    first = slices[0].header
    return DicomSeriesInfo(
        series_uid=series_uid,
        description=str(first.get("SeriesDescription", "")),
        modality=str(first.get("Modality", "")),
        n_slices=len(slices),
        study_uid=str(first.get("StudyInstanceUID", "")),
        patient_id=str(first.get("PatientID", "")),
        files=tuple(s.path for s in slices),
    )


def list_dicom_series(folder: str | os.PathLike) -> list[DicomSeriesInfo]:
    """The DICOM image series in ``folder`` (not its sub-folders), largest first.

    Non-DICOM files, DICOMDIR and DICOM-SEG objects are skipped.
    """
    by_series = _scan(Path(folder))
    infos = [_info(uid, slices) for uid, slices in by_series.items()]
    return sorted(infos, key=lambda i: (-i.n_slices, i.series_uid))


def _choose_series(folder: Path, by_series: dict[str, list[_Slice]], series_uid: str | None) -> str:
    listing = "\n".join(f"  {_info(uid, s)}" for uid, s in by_series.items())
    if series_uid is not None:
        if series_uid not in by_series:
            raise SeriesNotFoundError(
                f"{folder}: no DICOM series with SeriesInstanceUID {series_uid}. The folder holds:\n"
                f"{listing}"
            )
        return series_uid
    if len(by_series) > 1:
        raise MultipleSeriesError(
            f"{folder}: the folder holds {len(by_series)} DICOM series; choose one with "
            f"series_uid=...:\n{listing}"
        )
    return next(iter(by_series))


def _float_list(header: pydicom.Dataset, keyword: str, path: Path, count: int) -> np.ndarray:
    value = header.get(keyword)
    if value is None or len(value) != count:
        raise InconsistentSeriesError(
            f"{path}: the slice has no valid {keyword}, so it cannot be placed in 3D. wsnodule reads "
            "cross-sectional image series only (CT, MR, PET slices with position and orientation)."
        )
    return np.asarray([float(v) for v in value], dtype=float)


def _orientation(slices: list[_Slice], folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    iops = [_float_list(s.header, "ImageOrientationPatient", s.path, 6) for s in slices]
    groups: list[tuple[np.ndarray, list[Path]]] = []
    for iop, s in zip(iops, slices):
        for ref, members in groups:
            if np.max(np.abs(ref - iop)) <= ORIENTATION_TOLERANCE:
                members.append(s.path)
                break
        else:
            groups.append((iop, [s.path]))
    if len(groups) > 1:
        desc = "\n".join(
            f"  {np.round(ref, 4).tolist()}: {len(m)} slice(s), e.g. {m[0].name}" for ref, m in groups
        )
        raise MixedOrientationError(
            f"{folder}: the slices of this series have {len(groups)} different orientations "
            f"(ImageOrientationPatient):\n{desc}\nSeparate them into one folder per orientation "
            "(e.g. axial and coronal reformats) and read one."
        )
    row, col = iops[0][:3], iops[0][3:]
    unit = np.allclose([row @ row, col @ col], 1, atol=ORIENTATION_TOLERANCE)
    if abs(row @ col) > ORIENTATION_TOLERANCE or not unit:
        raise InconsistentSeriesError(
            f"{slices[0].path}: ImageOrientationPatient {iops[0].tolist()} is not two orthogonal unit "
            "vectors. The header is damaged; export the series again."
        )
    # Gram-Schmidt: headers store cosines with a few decimals only.
    row = row / np.linalg.norm(row)
    col = col - (col @ row) * row
    col = col / np.linalg.norm(col)
    return row, col, np.cross(row, col)


def _check_same(slices: list[_Slice], folder: Path) -> np.ndarray:
    """Check rows, columns and pixel spacing agree; return PixelSpacing (row, column) in mm."""
    first = slices[0]
    pixel_spacing = _float_list(first.header, "PixelSpacing", first.path, 2)
    for s in slices:
        size, size0 = (s.header.Rows, s.header.Columns), (first.header.Rows, first.header.Columns)
        ps = _float_list(s.header, "PixelSpacing", s.path, 2)
        if size != size0 or not np.allclose(ps, pixel_spacing, rtol=1e-4):
            raise InconsistentSeriesError(
                f"{folder}: slices differ in size or pixel spacing: {first.path.name} is "
                f"{size0} at {pixel_spacing.tolist()} mm, {s.path.name} is {size} at {ps.tolist()} mm. "
                "Keep only the slices of one reconstruction in the folder."
            )
        if not np.all(ps > 0):
            raise InvalidSpacingError(
                f"{s.path}: PixelSpacing is {ps.tolist()} mm; it must be positive. The header is "
                "damaged: fix PixelSpacing (0028,0030) or export the series again from the scanner/PACS."
            )
        if s.header.get("NumberOfFrames") not in (None, "", 1, "1"):
            raise UnsupportedFormatError(
                f"{s.path}: multi-frame (enhanced) DICOM is not supported. Convert the series to "
                "NIfTI (e.g. with dcm2niix) or export it as single-frame images."
            )
    return pixel_spacing


def _slice_step(
    positions: np.ndarray,
    normal: np.ndarray,
    slices: list[_Slice],
    pixel_spacing: np.ndarray,
    folder: Path,
    tolerance: float,
) -> float:
    """Check the sorted slice positions form a regular grid and return the slice step (mm)."""
    n = len(slices)
    if n == 1:
        h = slices[0].header
        for keyword in ("SpacingBetweenSlices", "SliceThickness"):
            value = h.get(keyword)
            if value not in (None, "") and float(value) > 0:
                return float(value)
        return 1.0
    along = positions @ normal
    gaps = np.diff(along)
    median_gap = float(np.median(gaps))
    for i in np.flatnonzero(gaps < 1e-3 * max(median_gap, 1e-3)):
        raise InconsistentSeriesError(
            f"{folder}: slices {slices[i].path.name} and {slices[i + 1].path.name} lie at the same "
            f"position ({along[i]:.3f} mm along the slice normal). The series holds several "
            "acquisitions (phases, echoes, energies) or duplicated files; keep one of them."
        )
    offsets = positions - positions[0]
    in_plane = offsets - np.outer(offsets @ normal, normal)
    drift = np.linalg.norm(in_plane, axis=1).max()
    if drift > tolerance * float(pixel_spacing.min()):
        raise InconsistentSeriesError(
            f"{folder}: the slices are not stacked along their normal (shifted {drift:.2f} mm sideways "
            "over the stack): the series was acquired with gantry tilt. Resample it to a regular grid "
            "(e.g. with dcm2niix, which corrects tilt) and read the NIfTI file."
        )
    step = (along[-1] - along[0]) / (n - 1)
    deviation = np.abs(along - (along[0] + step * np.arange(n)))
    if deviation.max() > tolerance * step:
        worst = int(np.argmax(np.abs(gaps - median_gap)))
        raise MissingSlicesError(
            f"{folder}: the slices are unevenly spaced: the gap between {slices[worst].path.name} "
            f"({along[worst]:.3f} mm) and {slices[worst + 1].path.name} ({along[worst + 1]:.3f} mm) is "
            f"{gaps[worst]:.3f} mm where most gaps are {median_gap:.3f} mm (tolerance: "
            f"{tolerance:.0%} of a slice). Slices are missing or the series mixes reconstructions; "
            "copy the complete series again."
        )
    return float(step)


def _decode_slice(path: Path) -> np.ndarray:
    """Rescaled pixels of one slice: SimpleITK/GDCM first, pydicom's own decoders as a fallback."""
    try:
        return sitk.GetArrayFromImage(sitk.ReadImage(str(path), sitk.sitkFloat32))
    except RuntimeError as sitk_exc:
        sitk_reason = str(sitk_exc).strip().splitlines()[-1]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # pydicom only warns on short pixel data
            ds = pydicom.dcmread(path)
            return apply_modality_lut(ds.pixel_array, ds).astype(np.float32)
    except Exception as exc:
        raise CorruptDicomError(
            f"{path}: the pixel data cannot be decoded (truncated file or unsupported compression). "
            f"SimpleITK: {sitk_reason}; pydicom: {exc}. Copy the series again, or convert it to NIfTI "
            "with dcm2niix."
        ) from exc


def _read_pixels(slices: list[_Slice], rows: int, cols: int, progress: ProgressCallback | None) -> np.ndarray:
    out = np.empty((len(slices), rows, cols), dtype=np.float32)
    for i, s in enumerate(slices):
        pixels = _decode_slice(s.path).reshape(-1, cols)
        if pixels.shape != (rows, cols):
            raise CorruptDicomError(
                f"{s.path}: decoded {pixels.size} pixels where Rows x Columns is {rows} x {cols}. The "
                "file is damaged; copy the series again."
            )
        out[i] = pixels
        if progress is not None:
            progress((i + 1) / len(slices))
    return out


def _exact_dtype(values: np.ndarray) -> np.ndarray:
    info = np.iinfo(np.int16)
    in_range = values.size and values.min() >= info.min and values.max() <= info.max
    if in_range and np.all(values == np.rint(values)):
        return values.astype(np.int16)
    return values


def read_dicom_series(
    folder: str | os.PathLike,
    *,
    series_uid: str | None = None,
    progress: ProgressCallback | None = None,
    slice_tolerance: float = SLICE_TOLERANCE,
) -> Volume:
    """Read one DICOM image series from ``folder`` (not its sub-folders) as a :class:`Volume`.

    Parameters
    ----------
    folder
        A folder holding the series' files (other files and series may be there too).
    series_uid
        SeriesInstanceUID to read; required when the folder holds several series.
    progress
        Called with the fraction of slices decoded (0..1]; raise from it to cancel.
    slice_tolerance
        Largest distance of a slice from the regular grid, as a fraction of the slice step.

    Returns
    -------
    Volume
        Slices ordered by position along the slice normal (``array[0]`` lowest); values after the
        modality rescale (HU for CT) as int16 when exact, else float32; ``metadata.dicom_files``
        in array order and ``metadata.extra['sop_instance_uids']`` likewise.
    """
    folder = Path(folder)
    by_series = _scan(folder)
    uid = _choose_series(folder, by_series, series_uid)
    slices = by_series[uid]
    row, col, normal = _orientation(slices, folder)
    pixel_spacing = _check_same(slices, folder)
    positions = np.stack([_float_list(s.header, "ImagePositionPatient", s.path, 3) for s in slices])
    order = np.argsort(positions @ normal, kind="stable")
    slices = [slices[i] for i in order]
    positions = positions[order]
    step = _slice_step(positions, normal, slices, pixel_spacing, folder, slice_tolerance)

    first = slices[0].header
    modality = str(first.get("Modality", "")) or None
    if modality is not None and modality.upper() != "CT":
        warnings.warn(
            NonCTModalityWarning(
                f"{folder}: modality is {modality}, not CT. Values are the scanner's (after the DICOM "
                "rescale), not Hounsfield units; CT windows and HU thresholds do not apply."
            ),
            stacklevel=2,
        )
    array = _exact_dtype(_read_pixels(slices, int(first.Rows), int(first.Columns), progress))
    rescales = Counter(
        (str(s.header.get("RescaleSlope", 1)), str(s.header.get("RescaleIntercept", 0))) for s in slices
    )
    metadata = VolumeMetadata(
        modality=modality,
        patient_id=str(first.get("PatientID", "")) or None,
        study_uid=str(first.get("StudyInstanceUID", "")) or None,
        series_uid=uid,
        source_path=str(folder),
        source_format="dicom",
        dicom_files=tuple(str(s.path) for s in slices),
        extra={
            "series_description": str(first.get("SeriesDescription", "")),
            "series_date": str(first.get("SeriesDate", "")),  # DICOM DA text, YYYYMMDD ("" when absent)
            "study_date": str(first.get("StudyDate", "")),
            "sop_instance_uids": tuple(str(s.header.SOPInstanceUID) for s in slices),
            "frame_of_reference_uid": str(first.get("FrameOfReferenceUID", "")),
            "slice_thickness_mm": float(first.SliceThickness) if first.get("SliceThickness") else None,
            "manufacturer": str(first.get("Manufacturer", "")),
            "convolution_kernel": str(first.get("ConvolutionKernel", "")),
            "rescale_slope_intercept": tuple(rescales),
        },
    )
    return Volume(
        array=array,
        spacing=(step, float(pixel_spacing[0]), float(pixel_spacing[1])),
        origin=tuple(float(v) for v in positions[0]),
        direction=np.column_stack([row, col, normal]),
        metadata=metadata,
    )
