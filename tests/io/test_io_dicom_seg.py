"""DICOM-SEG: written with highdicom, read back with highdicom, frames mapped to the right CT slices."""

from __future__ import annotations

import numpy as np
import pytest
from highdicom.seg import segread

from wsnodule_core.errors import InvalidVolumeError, NotDicomReferenceError, OutputExistsError
from wsnodule_core.io import list_dicom_series, read_volume, write_dicom_seg, write_volume


def test_two_label_seg_round_trip(make_series, tmp_path, check_seg_against_mask):
    # positions reversed w.r.t. file order, so array order != file order
    reference = read_volume(make_series(slice_positions=[37.5, 35.0, 32.5, 30.0]))
    mask = np.zeros(reference.shape, np.uint8)
    mask[1, 2:4, 1:3] = 1
    mask[2, 1, 1:4] = 4
    mask[3, 0, 0] = 1
    path = write_dicom_seg(mask, reference, tmp_path / "out" / "seg.dcm", segment_labels={4: "Nodule B"})
    check_seg_against_mask(path, reference, mask)
    seg = segread(path)
    first, second = seg.SegmentSequence
    assert first.SegmentLabel == "Nodule 1" and second.SegmentLabel == "Nodule B"
    assert first.SegmentedPropertyTypeCodeSequence[0].CodeValue == "27925004"  # SCT Nodule
    assert first.AnatomicRegionSequence[0].CodeValue == "39607008"  # SCT Lung
    assert first.SegmentAlgorithmType == "AUTOMATIC"
    assert seg.Modality == "SEG"
    assert seg.FrameOfReferenceUID == reference.metadata.extra["frame_of_reference_uid"]


def test_seg_in_series_folder_is_not_read_as_a_series(make_series):
    folder = make_series()
    reference = read_volume(folder)
    mask = np.zeros(reference.shape, bool)
    mask[2, 3, 3] = True
    write_dicom_seg(mask, reference, folder / "seg.dcm", algorithm_name=None)
    assert segread(folder / "seg.dcm").SegmentSequence[0].SegmentAlgorithmType == "MANUAL"
    assert len(list_dicom_series(folder)) == 1
    np.testing.assert_array_equal(read_volume(folder).array, reference.array)


def test_seg_needs_dicom_reference(make_series, tmp_path):
    reference = read_volume(write_volume(read_volume(make_series()), tmp_path / "ct.nrrd"))
    with pytest.raises(NotDicomReferenceError, match="ct.nrrd.*not from a DICOM series.*write_mask"):
        write_dicom_seg(np.ones(reference.shape, np.uint8), reference, tmp_path / "seg.dcm")


def test_seg_refuses_overwrite_and_empty_mask(make_series, tmp_path):
    reference = read_volume(make_series())
    (tmp_path / "seg.dcm").write_bytes(b"keep me")
    with pytest.raises(OutputExistsError, match="seg.dcm already exists"):
        write_dicom_seg(np.ones(reference.shape, np.uint8), reference, tmp_path / "seg.dcm")
    assert (tmp_path / "seg.dcm").read_bytes() == b"keep me"
    with pytest.raises(InvalidVolumeError, match="mask is empty"):
        write_dicom_seg(np.zeros(reference.shape, np.uint8), reference, tmp_path / "empty.dcm")
