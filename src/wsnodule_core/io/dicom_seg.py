"""Write a label mask as a DICOM Segmentation (DICOM-SEG) that references its source CT series.

highdicom builds the object: one binary segment per label value, each frame referencing the CT
slice (SOP instance) it lies on, coded as a lung nodule (SCT 27925004 "Nodule", anatomic region
SCT 39607008 "Lung", category SCT 49755003 "Morphologically abnormal structure").
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes

import wsnodule_core
from wsnodule_core.errors import (
    GeometryMismatchError,
    InputPathNotFoundError,
    InvalidVolumeError,
    NotDicomReferenceError,
)
from wsnodule_core.io.volume import Volume, check_mask_matches
from wsnodule_core.io.writers import check_output_path, mask_storage_array, write_atomically

NODULE_CATEGORY = codes.cid7150.MorphologicallyAbnormalStructure
NODULE_TYPE = codes.SCT.Nodule
LUNG = codes.SCT.Lung


def _source_datasets(reference: Volume) -> list[pydicom.Dataset]:
    files = reference.metadata.dicom_files
    if not files:
        raise NotDicomReferenceError(
            f"the reference volume was read from {reference.metadata.source_format or 'an array'} "
            f"({reference.metadata.source_path or 'no file'}), not from a DICOM series, so a DICOM-SEG "
            "cannot reference its slices. Write the mask as NIfTI/NRRD with write_mask instead, or read "
            "the DICOM series with read_volume and segment that."
        )
    if len(files) != reference.shape[0]:
        raise GeometryMismatchError(
            f"the reference volume has {reference.shape[0]} slices but lists {len(files)} DICOM files; it "
            "was cropped or resampled after reading. Write the DICOM-SEG on the volume as read."
        )
    datasets = []
    for f in files:
        if not Path(f).is_file():
            raise InputPathNotFoundError(
                f"{f}: this source DICOM file of the reference volume is gone; the DICOM-SEG must read "
                "its headers. Put the series back or read it again from its new place."
            )
        datasets.append(pydicom.dcmread(f, stop_before_pixels=True))
    rows, cols = int(datasets[0].Rows), int(datasets[0].Columns)
    if (rows, cols) != reference.shape[1:]:
        raise GeometryMismatchError(
            f"the DICOM slices are {rows} x {cols} but the reference volume is {reference.shape[1:]}; "
            "write the DICOM-SEG on the volume as read."
        )
    return datasets


def write_dicom_seg(
    mask: np.ndarray | Volume,
    reference: Volume,
    path: str | os.PathLike,
    *,
    segment_labels: Mapping[int, str] | None = None,
    algorithm_name: str | None = "wsnodule",
    series_description: str = "wsnodule nodule segmentation",
    overwrite: bool = False,
) -> Path:
    """Write ``mask`` (labels on ``reference``'s grid) as a binary DICOM-SEG referencing the source series.

    Parameters
    ----------
    mask
        Label array of ``reference.shape`` (0 = background) or a Volume on the same grid. Each
        non-zero label value becomes one segment (segment numbers 1.. in increasing label order).
    reference
        The volume the mask was drawn on, as returned by ``read_volume`` on a DICOM series (its
        ``metadata.dicom_files`` must still exist).
    segment_labels
        Segment label text per label value; default ``"Nodule"`` (one label) or ``"Nodule <value>"``.
    algorithm_name
        Name recorded as the (AI) algorithm that made the mask; None records a manual segmentation.
    overwrite
        Replace an existing file at ``path``.

    Returns
    -------
    Path
        The file written. Empty slices are not stored as frames (highdicom's default).
    """
    labels_array = mask_storage_array(check_mask_matches(mask, reference), "mask")
    path = check_output_path(path, overwrite)
    sources = _source_datasets(reference)
    values = [int(v) for v in np.unique(labels_array) if v != 0]
    if not values:
        raise InvalidVolumeError(
            "the mask is empty (all zero): a DICOM-SEG needs at least one segmented voxel. Skip writing, "
            "or write an empty NIfTI/NRRD mask with write_mask."
        )
    segment_labels = dict(segment_labels or {})
    if algorithm_name is None:
        algorithm_type, algorithm = hd.seg.SegmentAlgorithmTypeValues.MANUAL, None
    else:
        algorithm_type = hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC
        algorithm = hd.AlgorithmIdentificationSequence(
            name=algorithm_name,
            family=codes.cid7162.ArtificialIntelligence,
            version=wsnodule_core.__version__,
        )
    descriptions = []
    for number, value in enumerate(values, start=1):
        default = "Nodule" if len(values) == 1 else f"Nodule {value}"
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=segment_labels.get(value, default),
                segmented_property_category=NODULE_CATEGORY,
                segmented_property_type=NODULE_TYPE,
                algorithm_type=algorithm_type,
                algorithm_identification=algorithm,
                anatomic_regions=[LUNG],
            )
        )
    # frame i of the pixel array is source slice i; one boolean plane per segment
    planes = np.stack([labels_array == v for v in values], axis=-1)
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=planes,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=max(int(sources[0].get("SeriesNumber", 0) or 0), 0) + 1000,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="wsnodule",
        manufacturer_model_name="wsnodule",
        software_versions=wsnodule_core.__version__,
        device_serial_number="0",
        series_description=series_description,
    )
    return write_atomically(path, overwrite, lambda tmp: seg.save_as(tmp))
