"""Volumes in and out with their geometry: DICOM, NIfTI, MetaImage, NRRD and DICOM-SEG."""

from wsnodule_core.io.dicom_seg import write_dicom_seg
from wsnodule_core.io.dicom_series import DicomSeriesInfo, list_dicom_series, read_dicom_series
from wsnodule_core.io.naming import VolumeName, derived_name, volume_name
from wsnodule_core.io.readers import read_image_file, read_volume
from wsnodule_core.io.volume import Volume, VolumeMetadata, check_mask_matches
from wsnodule_core.io.writers import write_mask, write_volume

__all__ = [
    "DicomSeriesInfo",
    "Volume",
    "VolumeMetadata",
    "VolumeName",
    "check_mask_matches",
    "derived_name",
    "list_dicom_series",
    "read_dicom_series",
    "read_image_file",
    "read_volume",
    "volume_name",
    "write_dicom_seg",
    "write_mask",
    "write_volume",
]
