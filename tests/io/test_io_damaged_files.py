"""Damaged volume files: cut short, or not what their name says, are refused with a WsnoduleError."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import SimpleITK as sitk

from wsnodule_core.errors import DamagedImageError, TruncatedImageError, VolumeReadError, WsnoduleError
from wsnodule_core.io import read_volume


def _image(dtype=np.int16) -> sitk.Image:
    array = (np.arange(6 * 8 * 7).reshape(6, 8, 7) - 1000).astype(dtype)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.7, 0.7, 2.5))
    return image


def _nifti_bytes(dtype=np.int16) -> bytes:
    """An uncompressed NIfTI-1 file's bytes (written by SimpleITK, read back)."""
    return _write(_image(dtype), "x.nii")


def _write(image: sitk.Image, name: str) -> bytes:
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        sitk.WriteImage(image, str(path))
        return path.read_bytes()


@pytest.mark.parametrize("cut", [1, 2 * 8 * 7 * 2])  # one byte; two whole slices of int16
def test_truncated_int16_nifti_is_refused(tmp_path, cut):
    path = tmp_path / "ct.nii"
    path.write_bytes(_nifti_bytes()[:-cut])
    with pytest.raises(TruncatedImageError, match=r"ct\.nii.*cut short.*(export|download) it again"):
        read_volume(path)


def test_truncated_int16_nifti_gz_is_refused(tmp_path):
    path = tmp_path / "ct.nii.gz"
    path.write_bytes(gzip.compress(_nifti_bytes()[: -2 * 8 * 7 * 2]))  # a complete gzip of a cut file
    with pytest.raises(TruncatedImageError, match=r"ct\.nii\.gz.*cut short"):
        read_volume(path)


@pytest.mark.parametrize("dtype", [np.int16, np.float32])
def test_cut_gzip_stream_is_refused(tmp_path, dtype):
    """A .nii.gz whose gzip stream itself ends early (an interrupted download): EOFError before."""
    full = gzip.compress(_nifti_bytes(dtype))
    path = tmp_path / "ct.nii.gz"
    path.write_bytes(full[: len(full) // 2])
    with pytest.raises(TruncatedImageError, match=r"ct\.nii\.gz.*cut short"):
        read_volume(path)


def test_complete_nifti_still_reads(tmp_path):
    for name, data in (("a.nii", _nifti_bytes()), ("b.nii.gz", gzip.compress(_nifti_bytes()))):
        (tmp_path / name).write_bytes(data)
        volume = read_volume(tmp_path / name)
        assert volume.shape == (6, 8, 7) and volume.array[-1, -1, -1] == 6 * 8 * 7 - 1 - 1000


def test_plain_nifti_saved_as_nii_gz_is_read(tmp_path):
    path = tmp_path / "plain.nii.gz"
    path.write_bytes(_nifti_bytes())  # not gzip-compressed, though the name says so
    volume = read_volume(path)
    assert volume.shape == (6, 8, 7) and np.allclose(volume.spacing, (2.5, 0.7, 0.7))


def test_plain_truncated_nifti_saved_as_nii_gz_is_refused(tmp_path):
    path = tmp_path / "plain.nii.gz"
    path.write_bytes(_nifti_bytes()[:-50])
    with pytest.raises(TruncatedImageError):
        read_volume(path)


def test_html_page_saved_as_nii_gz_is_refused(tmp_path):
    path = tmp_path / "scan.nii.gz"
    path.write_bytes(b"<!DOCTYPE html>\n<html><head><title>Sign in</title></head><body>" + b"x" * 600 + b"</html>")
    with pytest.raises(DamagedImageError, match=r"scan\.nii\.gz.*neither gzip.*nor a NIfTI.*web page"):
        read_volume(path)


def test_corrupt_gzip_data_is_refused(tmp_path):
    data = bytearray(gzip.compress(_nifti_bytes()))
    data[40:60] = b"\xff" * 20  # damage the deflate stream
    path = tmp_path / "ct.nii.gz"
    path.write_bytes(bytes(data))
    with pytest.raises(VolumeReadError, match=r"ct\.nii\.gz"):
        read_volume(path)


def test_damaged_file_errors_are_wsnodule_errors():
    assert issubclass(TruncatedImageError, VolumeReadError) and issubclass(DamagedImageError, WsnoduleError)
