"""Bad input: each case raises its own exception whose message names the file and what to do."""

from __future__ import annotations

import os
import struct

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from wsnodule_core.errors import (
    CorruptDicomError,
    DimensionError,
    EmptyFolderError,
    InconsistentSeriesError,
    InputPathNotFoundError,
    InvalidSpacingError,
    MissingSlicesError,
    MixedOrientationError,
    NoDicomFilesError,
    NonCTModalityWarning,
    NonFiniteValuesError,
    UnsupportedFormatError,
)
from wsnodule_core.io import read_volume


def _edit(path, **changes):
    ds = pydicom.dcmread(path)
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    ds.save_as(path)


def test_missing_path(tmp_path):
    with pytest.raises(InputPathNotFoundError, match="nowhere.*no such file or folder"):
        read_volume(tmp_path / "nowhere")


def test_empty_folder_names_subfolders(tmp_path):
    with pytest.raises(EmptyFolderError, match="holds no files"):
        read_volume(tmp_path)
    (tmp_path / "series-1").mkdir()
    with pytest.raises(EmptyFolderError, match="sub-folders \\(series-1\\)"):
        read_volume(tmp_path)


def test_folder_without_dicom(tmp_path):
    (tmp_path / "a.txt").write_text("hello")
    (tmp_path / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    with pytest.raises(NoDicomFilesError, match=f"{tmp_path}.*none of its 2 file"):
        read_volume(tmp_path)


def test_truncated_header_is_corrupt(make_series):
    folder = make_series()
    path = folder / "slice_0001.dcm"
    path.write_bytes(path.read_bytes()[:300])  # cut inside the header
    with pytest.raises(CorruptDicomError, match="slice_0001.dcm.*truncated or damaged"):
        read_volume(folder)


def test_truncated_pixel_data_is_corrupt(make_series):
    folder = make_series()
    path = folder / "slice_0002.dcm"
    path.write_bytes(path.read_bytes()[:-20])  # header intact, pixel data short
    with pytest.raises(CorruptDicomError, match="slice_0002.dcm"):
        read_volume(folder)


def test_missing_slice(make_series):
    folder = make_series(slice_positions=[30.0, 32.5, 37.5, 40.0])  # 35.0 missing
    with pytest.raises(MissingSlicesError, match="slice_0001.dcm.*slice_0002.dcm.*5.000 mm.*2.500 mm"):
        read_volume(folder)


def test_slice_jitter_within_tolerance_is_accepted(make_series):
    # largest deviation from the regular grid: 0.2 mm = 8 % of the 2.5 mm step (< 10 %)
    volume = read_volume(make_series(slice_positions=[30.0, 32.7, 35.0, 37.5]))
    assert volume.spacing[0] == pytest.approx(2.5)


def test_duplicate_slice_positions(make_series):
    folder = make_series(slice_positions=[30.0, 32.5, 32.5, 35.0])
    with pytest.raises(InconsistentSeriesError, match="same position"):
        read_volume(folder)


def test_gantry_tilt(make_series):
    folder = make_series()
    for i in range(4):  # slices shifted 1 mm in y per slice: a tilted stack
        _edit(folder / f"slice_{i:04d}.dcm", ImagePositionPatient=[-10.0, 20.0 + i, 30.0 + 2.5 * i])
    with pytest.raises(InconsistentSeriesError, match="gantry tilt"):
        read_volume(folder)


def test_mixed_orientations(make_series):
    folder = make_series()
    _edit(folder / "slice_0003.dcm", ImageOrientationPatient=[1, 0, 0, 0, 0, -1])
    with pytest.raises(MixedOrientationError, match="(?s)2 different orientations.*slice_0003.dcm"):
        read_volume(folder)


def test_non_orthonormal_orientation(make_series):
    folder = make_series()
    for i in range(4):
        _edit(folder / f"slice_{i:04d}.dcm", ImageOrientationPatient=[1, 0, 0, 0.5, 1, 0])
    with pytest.raises(InconsistentSeriesError, match="slice_0000.dcm: ImageOrientationPatient.*not two"):
        read_volume(folder)


def test_non_ct_modality_warns_and_keeps_values(make_series):
    array = np.arange(4 * 6 * 5, dtype=np.int16).reshape(4, 6, 5) * 10
    folder = make_series(array=array, modality="MR", rescale_intercept=0.0)
    with pytest.warns(NonCTModalityWarning, match="modality is MR, not CT"):
        volume = read_volume(folder)
    assert volume.metadata.modality == "MR" and not volume.metadata.is_ct
    np.testing.assert_array_equal(volume.array, array)


def test_zero_pixel_spacing_in_dicom(make_series):
    folder = make_series()
    for i in range(4):
        _edit(folder / f"slice_{i:04d}.dcm", PixelSpacing=[0.0, 0.8])
    with pytest.raises(InvalidSpacingError, match="slice_0000.dcm: PixelSpacing"):
        read_volume(folder)


def _image(shape, dtype=np.int16):
    image = sitk.GetImageFromArray(np.zeros(shape, dtype))
    return image


def test_2d_image(tmp_path):
    sitk.WriteImage(_image((6, 5)), str(tmp_path / "slice.nii"))
    with pytest.raises(DimensionError, match="slice.nii.*2D image"):
        read_volume(tmp_path / "slice.nii")


def test_4d_volume(tmp_path):
    image = sitk.JoinSeries([_image((3, 6, 5)), _image((3, 6, 5))])
    sitk.WriteImage(image, str(tmp_path / "timeseries.nii.gz"))
    with pytest.raises(DimensionError, match="timeseries.nii.gz.*4D image"):
        read_volume(tmp_path / "timeseries.nii.gz")


@pytest.mark.parametrize("value", [0.0, -2.0])
def test_bad_nifti_pixdim(tmp_path, value):
    good = tmp_path / "good.nii"
    sitk.WriteImage(_image((3, 6, 5)), str(good))
    header = bytearray(good.read_bytes())
    header[76 + 4 * 3 : 76 + 4 * 4] = struct.pack("<f", value)  # pixdim[3]: the slice spacing
    bad = tmp_path / "bad.nii"
    bad.write_bytes(bytes(header))
    expected = f"bad.nii.*spacing \\[1.0, 1.0, {value}\\] \\(NIfTI pixdim\\)"
    with pytest.raises(InvalidSpacingError, match=expected):
        read_volume(bad)


def test_bad_metaimage_and_nrrd_spacing(tmp_path):
    image = _image((3, 6, 5))
    image.SetSpacing((0.5, 0.5, 2.0))
    sitk.WriteImage(image, str(tmp_path / "a.mhd"))
    header = (tmp_path / "a.mhd").read_text()
    header = header.replace("ElementSpacing = 0.5 0.5 2", "ElementSpacing = 0.5 0.5 0")
    (tmp_path / "a.mhd").write_text(header)
    with pytest.raises(InvalidSpacingError, match="a.mhd.*ElementSpacing"):
        read_volume(tmp_path / "a.mhd")
    sitk.WriteImage(image, str(tmp_path / "a.nrrd"))
    raw = (tmp_path / "a.nrrd").read_bytes()
    (tmp_path / "a.nrrd").write_bytes(raw.replace(b"(0,0,2)", b"(0,0,0)"))
    with pytest.raises(InvalidSpacingError, match="a.nrrd.*space directions"):
        read_volume(tmp_path / "a.nrrd")


def test_metaimage_without_raw(tmp_path):
    sitk.WriteImage(_image((3, 6, 5)), str(tmp_path / "scan.mhd"))
    os.remove(tmp_path / "scan.raw")
    with pytest.raises(InputPathNotFoundError, match="scan.mhd.*scan.raw.*missing"):
        read_volume(tmp_path / "scan.mhd")


def test_nan_values(tmp_path):
    array = np.zeros((3, 6, 5), np.float32)
    array[1, 2, 3] = np.nan
    sitk.WriteImage(sitk.GetImageFromArray(array), str(tmp_path / "nan.nii.gz"))
    with pytest.raises(NonFiniteValuesError, match="nan.nii.gz: 1 voxel"):
        read_volume(tmp_path / "nan.nii.gz")


def test_unsupported_file(tmp_path):
    (tmp_path / "photo.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    with pytest.raises(UnsupportedFormatError, match="photo.png.*not a volume format"):
        read_volume(tmp_path / "photo.png")
