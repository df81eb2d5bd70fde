import numpy as np
import pytest
import SimpleITK as sitk

from wsnodule_core.errors import (
    DimensionError,
    GeometryMismatchError,
    InvalidSpacingError,
    InvalidVolumeError,
    NonFiniteValuesError,
)
from wsnodule_core.io.sitk_bridge import from_sitk, to_sitk
from wsnodule_core.io.volume import Volume, VolumeMetadata, check_mask_matches


def _oblique_direction():
    angle = np.deg2rad(30)
    rot_z = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    flip_y = np.diag([1.0, -1.0, 1.0])
    return rot_z @ flip_y


def test_index_to_world_by_hand_for_axis_aligned_volume():
    vol = Volume(np.zeros((4, 5, 6)), spacing=(3.0, 0.5, 0.7), origin=(-100.0, 20.0, 5.0))
    # voxel (z=2, y=1, x=3): x = -100 + 3*0.7, y = 20 + 1*0.5, z = 5 + 2*3
    np.testing.assert_allclose(vol.index_to_world((2, 1, 3)), (-97.9, 20.5, 11.0))
    np.testing.assert_allclose(vol.world_to_index((-97.9, 20.5, 11.0)), (2, 1, 3), atol=1e-12)


def test_world_index_mapping_matches_simpleitk_for_oblique_direction():
    vol = Volume(np.zeros((7, 8, 9), np.int16), spacing=(2.5, 0.8, 0.6), origin=(10.0, -20.0, 30.0),
                 direction=_oblique_direction())
    image = to_sitk(vol)
    rng = np.random.default_rng(0)
    for idx_zyx in rng.uniform(0, 6, size=(5, 3)):
        expected = image.TransformContinuousIndexToPhysicalPoint(tuple(float(v) for v in idx_zyx[::-1]))
        np.testing.assert_allclose(vol.index_to_world(idx_zyx), expected, atol=1e-9)
        np.testing.assert_allclose(vol.world_to_index(expected), idx_zyx, atol=1e-9)
    batch = rng.uniform(0, 6, size=(4, 3))
    np.testing.assert_allclose(vol.world_to_index(vol.index_to_world(batch)), batch, atol=1e-9)


def test_sitk_round_trip_keeps_geometry_and_values():
    array = np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4)
    vol = Volume(array, spacing=(5.0, 0.7, 0.6), origin=(1.0, 2.0, 3.0), direction=_oblique_direction(),
                 metadata=VolumeMetadata(modality="CT"))
    image = to_sitk(vol)
    assert image.GetSize() == (4, 3, 2)
    assert image.GetSpacing() == (0.6, 0.7, 5.0)
    back = from_sitk(image, vol.metadata)
    assert back.same_geometry(vol)
    np.testing.assert_array_equal(back.array, array)


def test_invalid_volumes_raise_specific_errors():
    with pytest.raises(DimensionError, match="3D"):
        Volume(np.zeros((4, 4)))
    with pytest.raises(DimensionError):
        from_sitk(sitk.Image([4, 4], sitk.sitkInt16))
    with pytest.raises(InvalidSpacingError, match="positive"):
        Volume(np.zeros((2, 2, 2)), spacing=(1.0, 0.0, 1.0))
    with pytest.raises(InvalidSpacingError):
        Volume(np.zeros((2, 2, 2)), spacing=(1.0, -1.0, 1.0))
    with pytest.raises(NonFiniteValuesError, match="NaN"):
        Volume(np.array([[[0.0, np.nan]]]))
    with pytest.raises(InvalidVolumeError, match="orthonormal"):
        Volume(np.zeros((2, 2, 2)), direction=np.diag([1.0, 2.0, 1.0]))


def test_masks_must_lie_on_the_reference_grid():
    ref = Volume(np.zeros((3, 4, 5)), spacing=(2.0, 1.0, 1.0))
    mask = ref.with_array(np.ones((3, 4, 5), np.uint8))
    assert mask.same_geometry(ref) and mask.array.dtype == np.uint8
    assert check_mask_matches(mask, ref) is mask.array
    with pytest.raises(GeometryMismatchError, match="shape"):
        ref.with_array(np.ones((3, 4, 4)))
    shifted = Volume(mask.array, spacing=ref.spacing, origin=(0.0, 0.0, 1.0))
    with pytest.raises(GeometryMismatchError, match="Resample"):
        check_mask_matches(shifted, ref)
