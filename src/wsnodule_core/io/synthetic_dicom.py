"""Write a small synthetic DICOM image series (for tests, demos and hybrid data sets).

The files are plain uncompressed single-frame images (CT Image Storage for ``modality='CT'``)
with every attribute that :func:`wsnodule_core.io.read_volume` and highdicom's DICOM-SEG writer
need, so a test can build a series with chosen UIDs, slice positions, orientation and modality.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

_SOP_CLASS_BY_MODALITY = {
    "CT": "1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage
    "MR": "1.2.840.10008.5.1.4.1.1.4",  # MR Image Storage
    "PT": "1.2.840.10008.5.1.4.1.1.128",  # PET Image Storage
}
_SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def _stored_values(array: np.ndarray, slope: float, intercept: float) -> np.ndarray:
    stored = np.round((np.asarray(array, dtype=np.float64) - intercept) / slope)
    if stored.min() >= 0 and stored.max() <= np.iinfo(np.uint16).max:
        return stored.astype(np.uint16)
    if stored.min() >= np.iinfo(np.int16).min and stored.max() <= np.iinfo(np.int16).max:
        return stored.astype(np.int16)
    raise ValueError(
        f"values {array.min()}..{array.max()} do not fit 16-bit stored pixels with slope {slope} and "
        f"intercept {intercept}; choose another rescale_intercept/rescale_slope."
    )


def write_synthetic_series(
    folder: str | Path,
    array_hu: np.ndarray,
    spacing: Sequence[float],
    origin: Sequence[float],
    *,
    modality: str = "CT",
    series_uid: str | None = None,
    study_uid: str | None = None,
    patient_id: str = "WSNODULE-SYNTH",
    slice_positions: Sequence[float] | None = None,
    orientation: Sequence[float] | None = None,
    sop_instance_uids: Sequence[str] | None = None,
    frame_of_reference_uid: str | None = None,
    series_description: str = "synthetic",
    rescale_slope: float = 1.0,
    rescale_intercept: float = -1024.0,
    file_prefix: str = "slice",
) -> list[Path]:
    """Write ``array_hu`` (z, y, x) as one DICOM file per slice in ``folder``.

    Parameters
    ----------
    folder
        Output folder (created if needed). Files are named ``{file_prefix}_{i:04d}.dcm`` in array
        order; existing files of the same name are replaced (this is a test/demo helper).
    array_hu
        Values (HU for CT) as ``(z, y, x)``; stored as 16-bit integers through
        ``rescale_slope``/``rescale_intercept`` (rounded), so give integers for exact round trips.
    spacing
        ``(z, y, x)`` mm; ``spacing[0]`` is the slice step when ``slice_positions`` is None and is
        also written as SliceThickness. PixelSpacing is ``(spacing[1], spacing[2])`` (row, column).
    origin
        World ``(x, y, z)`` LPS mm of voxel ``[0, 0, 0]`` (ImagePositionPatient of slice 0).
    slice_positions
        Optional position of each slice along the slice normal, in mm, as the dot product of
        ImagePositionPatient with the normal (for axial slices this is simply the IPP z value, as
        in LIDC's slice z positions). Slice ``i`` is then placed at
        ``origin + (slice_positions[i] - origin . normal) * normal``. Use it for uneven, missing
        or reversed slices.
    orientation
        ImageOrientationPatient (row cosines then column cosines); default axial ``(1,0,0,0,1,0)``.
    sop_instance_uids, frame_of_reference_uid, series_uid, study_uid
        UIDs to use; new ones are generated when None.

    Returns
    -------
    list of Path
        The files written, in array slice order.
    """
    array = np.asarray(array_hu)
    if array.ndim != 3:
        raise ValueError(f"array_hu must be 3D (z, y, x), got shape {array.shape}")
    n_slices, rows, cols = array.shape
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    iop = np.asarray(orientation if orientation is not None else (1, 0, 0, 0, 1, 0), dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    origin_arr = np.asarray(origin, dtype=float)
    if slice_positions is None:
        offsets = np.arange(n_slices) * float(spacing[0])
    else:
        if len(slice_positions) != n_slices:
            raise ValueError(f"{len(slice_positions)} slice_positions for {n_slices} slices")
        offsets = np.asarray(slice_positions, dtype=float) - float(origin_arr @ normal)
    if sop_instance_uids is not None and len(sop_instance_uids) != n_slices:
        raise ValueError(f"{len(sop_instance_uids)} sop_instance_uids for {n_slices} slices")
    stored = _stored_values(array, rescale_slope, rescale_intercept)
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    frame_uid = frame_of_reference_uid or generate_uid()
    sop_class = _SOP_CLASS_BY_MODALITY.get(modality.upper(), _SECONDARY_CAPTURE)

    paths = []
    for i in range(n_slices):
        sop_uid = sop_instance_uids[i] if sop_instance_uids is not None else generate_uid()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = sop_uid
        ds.Modality = modality
        ds.PatientID = patient_id
        ds.PatientName = f"{patient_id}^"  # one-component person name
        ds.PatientBirthDate = ""
        ds.PatientSex = "O"
        ds.StudyInstanceUID = study_uid
        ds.StudyID = "1"
        ds.StudyDate = "20000101"
        ds.StudyTime = "000000"
        ds.AccessionNumber = ""
        ds.ReferringPhysicianName = ""
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = 1
        ds.SeriesDescription = series_description
        ds.Manufacturer = "wsnodule-synthetic"
        ds.FrameOfReferenceUID = frame_uid
        ds.PositionReferenceIndicator = ""
        ds.InstanceNumber = i + 1
        ds.ImagePositionPatient = [float(v) for v in origin_arr + offsets[i] * normal]
        ds.ImageOrientationPatient = [float(v) for v in iop]
        ds.PixelSpacing = [float(spacing[1]), float(spacing[2])]
        ds.SliceThickness = float(spacing[0])
        ds.Rows, ds.Columns = rows, cols
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1 if stored.dtype == np.int16 else 0
        ds.RescaleSlope = rescale_slope
        ds.RescaleIntercept = rescale_intercept
        ds.RescaleType = "HU" if modality.upper() == "CT" else "US"
        if modality.upper() == "CT":
            ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
            ds.KVP = 120
        ds.PixelData = np.ascontiguousarray(stored[i]).tobytes()
        path = folder / f"{file_prefix}_{i:04d}.dcm"
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        paths.append(path)
    return paths
