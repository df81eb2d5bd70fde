"""Reading synthetic DICOM series: slice order, values, geometry, metadata, series choice."""

from __future__ import annotations

import shutil
import warnings

import numpy as np
import pytest
import SimpleITK as sitk
import pydicom
from pydicom.fileset import FileSet
from pydicom.uid import RLELossless

from wsnodule_core.errors import MultipleSeriesError, SeriesNotFoundError
from wsnodule_core.io import list_dicom_series, read_volume
from wsnodule_core.io.synthetic_dicom import write_synthetic_series


def test_slices_are_ordered_by_position_not_file_name(make_series, ramp):
    array = ramp()
    # file 0 is the highest slice: positions decrease with the file index
    folder = make_series(array=array, slice_positions=[37.5, 35.0, 32.5, 30.0])
    volume = read_volume(folder)
    np.testing.assert_array_equal(volume.array, array[::-1])
    assert volume.origin == (-10.0, 20.0, 30.0)  # the lowest slice
    assert volume.spacing == (2.5, 0.7, 0.8)
    np.testing.assert_array_equal(volume.direction, np.eye(3))
    names = [p.rsplit("/", 1)[-1] for p in volume.metadata.dicom_files]
    assert names == ["slice_0003.dcm", "slice_0002.dcm", "slice_0001.dcm", "slice_0000.dcm"]


def test_values_are_hu_int16_and_metadata_filled(make_series, ramp):
    array = ramp(offset=-1024)
    folder = make_series(array=array, patient_id="P1", study_uid="1.2.3", series_uid="1.2.3.4")
    volume = read_volume(folder)
    assert volume.array.dtype == np.int16
    np.testing.assert_array_equal(volume.array, array)  # stored = HU + 1024, intercept -1024
    md = volume.metadata
    assert (md.modality, md.patient_id, md.study_uid, md.series_uid) == ("CT", "P1", "1.2.3", "1.2.3.4")
    assert md.source_format == "dicom" and md.source_path == str(folder)
    assert len(md.extra["sop_instance_uids"]) == 4


def test_non_integer_rescale_gives_exact_float32(make_series):
    array = np.full((3, 4, 4), -500, dtype=np.int16)
    array[1] = 301  # odd values with slope 2 cannot be stored: expect -500 and 301 -> rounded stored
    folder = make_series(array=array, rescale_slope=0.5, rescale_intercept=-1024.0)
    volume = read_volume(folder)
    # stored = (hu + 1024) / 0.5 exactly, so HU comes back exact; .5 steps need float
    assert volume.array.dtype == np.int16
    np.testing.assert_array_equal(volume.array, array)
    array_f = np.full((3, 4, 4), -500.5)
    volume_f = read_volume(make_series("f", array=array_f, rescale_slope=0.5))
    assert volume_f.array.dtype == np.float32
    np.testing.assert_array_equal(volume_f.array, array_f.astype(np.float32))


def test_oblique_series_matches_simpleitk(make_series):
    c, s = np.cos(0.3), np.sin(0.3)
    iop = (c, s, 0.0, 0.0, 0.0, -1.0)  # rotated coronal-like slices
    folder = make_series(orientation=iop)
    volume = read_volume(folder)
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder))
    image = sitk.ReadImage(files)
    assert np.allclose(volume.spacing[::-1], image.GetSpacing(), atol=1e-6)
    assert np.allclose(volume.origin, image.GetOrigin(), atol=1e-6)
    assert np.allclose(volume.direction.ravel(), image.GetDirection(), atol=1e-6)
    # hand-computed: normal = row x col
    assert np.allclose(volume.direction[:, 2], np.cross(iop[:3], iop[3:]))


def test_dicom_file_path_reads_its_series(make_series):
    folder = make_series()
    volume = read_volume(folder / "slice_0002.dcm")
    assert volume.shape == (4, 6, 5)


def test_single_slice_folder(make_series, ramp):
    volume = read_volume(make_series(array=ramp((1, 6, 5)), spacing=(1.25, 0.7, 0.8)))
    assert volume.shape == (1, 6, 5)
    assert volume.spacing == (1.25, 0.7, 0.8)  # SliceThickness as the notional step


def test_multiple_series_must_be_chosen(tmp_path, ramp):
    a, b = ramp(), ramp((3, 6, 5), offset=0)
    write_synthetic_series(tmp_path, a, (2.5, 0.7, 0.8), (0, 0, 0), series_uid="1.1", file_prefix="a",
                           series_description="lung")
    write_synthetic_series(tmp_path, b, (2.5, 0.7, 0.8), (0, 0, 0), series_uid="1.2", file_prefix="b",
                           series_description="soft")
    (tmp_path / "notes.txt").write_text("not DICOM")
    infos = list_dicom_series(tmp_path)
    found = [(i.series_uid, i.n_slices, i.description) for i in infos]
    assert found == [("1.1", 4, "lung"), ("1.2", 3, "soft")]
    listing = r"(?s)series_uid=.*1\.1 \(CT, 4 slices, 'lung'\).*1\.2 \(CT, 3"
    with pytest.raises(MultipleSeriesError, match=listing):
        read_volume(tmp_path)
    np.testing.assert_array_equal(read_volume(tmp_path, series_uid="1.2").array, b)
    with pytest.raises(SeriesNotFoundError, match="9.9"):
        read_volume(tmp_path, series_uid="9.9")
    # a file path picks its own series
    np.testing.assert_array_equal(read_volume(tmp_path / "b_0001.dcm").array, b)


def test_non_dicom_files_and_dicomdir_are_skipped(make_series, tmp_path):
    folder = make_series()
    shutil.copy(__file__, folder / "readme.py")
    fileset = FileSet()
    for f in sorted(folder.glob("*.dcm")):
        fileset.add(str(f))
    fileset.write(tmp_path / "fileset")
    shutil.copy(tmp_path / "fileset" / "DICOMDIR", folder / "DICOMDIR")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_volume(folder).shape == (4, 6, 5)


def test_progress_callback_reaches_one(make_series):
    seen = []
    read_volume(make_series(), progress=seen.append)
    assert seen == [0.25, 0.5, 0.75, 1.0]


def test_rle_compressed_series(make_series, ramp):
    # GDCM refuses pydicom's RLE encoding of these tiny slices; the pydicom decoder takes over
    folder = make_series()
    for path in sorted(folder.glob("*.dcm")):
        ds = pydicom.dcmread(path)
        ds.compress(RLELossless)
        ds.save_as(path)
    np.testing.assert_array_equal(read_volume(folder).array, ramp())
