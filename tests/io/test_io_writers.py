"""Writing volumes and masks: geometry kept, dtypes, refusing to overwrite, atomic writes."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from wsnodule_core.errors import (
    GeometryMismatchError,
    InvalidVolumeError,
    OutputExistsError,
    UnsupportedFormatError,
)
from wsnodule_core.io import Volume, read_volume, write_mask, write_volume

SUFFIXES = ["nii", "nii.gz", "nrrd", "nhdr", "mhd", "mha"]


def _rotation(angle_z: float, angle_x: float) -> np.ndarray:
    cz, sz, cx, sx = np.cos(angle_z), np.sin(angle_z), np.cos(angle_x), np.sin(angle_x)
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    return rz @ rx


@pytest.fixture
def oblique() -> Volume:
    array = (np.arange(5 * 6 * 7).reshape(5, 6, 7) * 3 - 600).astype(np.int16)
    direction = _rotation(0.3, 0.2)
    return Volume(array, spacing=(2.5, 0.7, 0.8), origin=(-12.25, 30.5, -101.75), direction=direction)


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_volume_round_trip_keeps_values_and_geometry(tmp_path, oblique, suffix):
    path = write_volume(oblique, tmp_path / f"out/ct.{suffix}")  # parent folder created
    back = read_volume(path)
    assert back.array.dtype == np.int16
    np.testing.assert_array_equal(back.array, oblique.array)
    # NIfTI stores geometry as float32 (pixdim, quaternion): 1e-4 mm tolerance; text formats are exact
    atol = 1e-4 if suffix.startswith("nii") else 1e-12
    np.testing.assert_allclose(back.spacing, oblique.spacing, atol=atol)
    np.testing.assert_allclose(back.origin, oblique.origin, atol=atol)
    np.testing.assert_allclose(back.direction, oblique.direction, atol=atol)
    formats = {"nii": "nifti", "nii.gz": "nifti", "nrrd": "nrrd", "nhdr": "nrrd"}
    expected_format = formats.get(suffix, "metaimage")
    assert back.metadata.source_format == expected_format
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".wsnodule-tmp")]


def test_float_volume_round_trip(tmp_path, oblique):
    volume = oblique.with_array(oblique.array.astype(np.float32) / 7)
    back = read_volume(write_volume(volume, tmp_path / "f.nrrd"))
    assert back.array.dtype == np.float32
    np.testing.assert_array_equal(back.array, volume.array)


def test_refuses_to_overwrite(tmp_path, oblique):
    path = write_volume(oblique, tmp_path / "ct.nii.gz")
    before = path.read_bytes()
    with pytest.raises(OutputExistsError, match="ct.nii.gz already exists.*overwrite=True"):
        write_volume(oblique.with_array(oblique.array + 1), path)
    assert path.read_bytes() == before
    write_volume(oblique.with_array(oblique.array + 1), path, overwrite=True)
    np.testing.assert_array_equal(read_volume(path).array, oblique.array + 1)


def test_refuses_to_overwrite_metaimage_data_file(tmp_path, oblique):
    (tmp_path / "ct.raw").write_bytes(b"someone else's data")
    with pytest.raises(OutputExistsError, match="ct.raw already exists"):
        write_volume(oblique, tmp_path / "ct.mhd")
    assert (tmp_path / "ct.raw").read_bytes() == b"someone else's data"
    assert not (tmp_path / "ct.mhd").exists()


def test_unsupported_output_format(tmp_path, oblique):
    with pytest.raises(UnsupportedFormatError, match="ct.png.*cannot write"):
        write_volume(oblique, tmp_path / "ct.png")


@pytest.mark.parametrize("suffix", ["nii.gz", "nrrd", "mhd"])
def test_mask_uses_reference_geometry_and_uint8(tmp_path, oblique, suffix):
    mask = np.zeros(oblique.shape, bool)
    mask[1:3, 2:5, 3:6] = True
    path = write_mask(mask, oblique, tmp_path / f"mask.{suffix}")
    back = read_volume(path)
    assert back.array.dtype == np.uint8
    np.testing.assert_array_equal(back.array, mask.astype(np.uint8))
    assert back.same_geometry(oblique, atol=1e-4)
    # the voxel at index (1, 2, 3) is at the same world point in both, checked through SimpleITK
    image = sitk.ReadImage(str(path))
    world = image.TransformIndexToPhysicalPoint((3, 2, 1))
    np.testing.assert_allclose(world, oblique.index_to_world((1, 2, 3)), atol=1e-4)


def test_mask_labels_above_255_use_uint16(tmp_path, oblique):
    labels = np.zeros(oblique.shape, np.int64)
    labels[0, 0, 0], labels[2, 3, 4] = 7, 300
    back = read_volume(write_mask(labels, oblique, tmp_path / "labels.nrrd"))
    assert back.array.dtype == np.uint16
    np.testing.assert_array_equal(back.array, labels)


def test_mask_must_match_and_hold_labels(tmp_path, oblique):
    with pytest.raises(GeometryMismatchError, match="shape"):
        write_mask(np.zeros((2, 2, 2), np.uint8), oblique, tmp_path / "m.nrrd")
    with pytest.raises(InvalidVolumeError, match="integer labels.*Threshold"):
        write_mask(np.full(oblique.shape, 0.4), oblique, tmp_path / "m.nrrd")
    with pytest.raises(InvalidVolumeError, match="0..65535"):
        write_mask(np.full(oblique.shape, -1), oblique, tmp_path / "m.nrrd")
    assert not (tmp_path / "m.nrrd").exists()
