"""The two real chest CT series (WSNODULE_DATA): README geometry, round trips, DICOM-SEG, corruption."""

from __future__ import annotations

import shutil

import numpy as np
import pydicom
import pytest

from wsnodule_core.errors import CorruptDicomError
from wsnodule_core.io import read_volume, write_dicom_seg, write_volume


@pytest.mark.slow
def test_real_series_geometry_and_round_trips(real_series, tmp_path):
    folder, (n_slices, rows, cols, pixel_mm, slice_mm) = real_series
    volume = read_volume(folder)
    assert volume.shape == (n_slices, rows, cols)
    assert volume.spacing[1] == volume.spacing[2] == pytest.approx(pixel_mm, abs=5e-4)
    assert volume.spacing[0] == pytest.approx(slice_mm, abs=1e-6)
    assert volume.array.dtype == np.int16
    assert volume.metadata.modality == "CT" and len(volume.metadata.dicom_files) == n_slices
    # HU: slice 0 of the array equals the stored pixels of its file after rescale
    ds = pydicom.dcmread(volume.metadata.dicom_files[0])
    expected = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_array_equal(volume.array[0], expected)
    # slices ascend along the normal (z for axial)
    zs = [float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2])
          for f in volume.metadata.dicom_files[:3]]
    assert zs == sorted(zs)
    for suffix in ("nii.gz", "nrrd", "mhd"):
        back = read_volume(write_volume(volume, tmp_path / f"ct.{suffix}"))
        np.testing.assert_array_equal(back.array, volume.array)
        # these series' geometry is exact in float32 (binary fractions), so NIfTI is exact too
        assert back.spacing == volume.spacing and back.origin == volume.origin
        np.testing.assert_array_equal(back.direction, volume.direction)


@pytest.mark.slow
def test_real_series_dicom_seg(real_series_small, tmp_path, check_seg_against_mask):
    volume = read_volume(real_series_small)
    mask = np.zeros(volume.shape, np.uint8)
    zz, yy, xx = np.ogrid[: volume.shape[0], : volume.shape[1], : volume.shape[2]]
    # an ellipsoid "nodule" over 3 slices (5 mm spacing) around voxel (30, 300, 150)
    mask[((zz - 30) * 5.0) ** 2 + ((yy - 300) * 0.78125) ** 2 + ((xx - 150) * 0.78125) ** 2 <= 8.0**2] = 1
    assert mask.sum() > 0 and set(np.flatnonzero(mask.any(axis=(1, 2)))) == {29, 30, 31}
    path = write_dicom_seg(mask, volume, tmp_path / "seg.dcm")
    check_seg_against_mask(path, volume, mask)


def test_truncated_real_slice(real_series_small, tmp_path):
    files = sorted(real_series_small.iterdir())[:4]
    for f in files:
        shutil.copy(f, tmp_path / f.name)
    victim = tmp_path / files[2].name
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    with pytest.raises(CorruptDicomError, match=files[2].name):
        read_volume(tmp_path)
