import numpy as np
import pytest

from wsnodule_core.io import Volume, VolumeMetadata, write_volume
from napari_wsnodule._geometry import layer_geometry
from napari_wsnodule._reader import get_reader


def _ct(tmp_path, name="ct.nii.gz"):
    array = (np.arange(4 * 5 * 6).reshape(4, 5, 6) - 60).astype(np.int16)
    vol = Volume(array, spacing=(2.5, 0.7, 0.6), origin=(-120.0, -80.0, 40.0), metadata=VolumeMetadata(modality="CT"))
    path = tmp_path / name
    write_volume(vol, path)
    return vol, path


def test_reader_declines_paths_it_cannot_read(tmp_path):
    assert get_reader(str(tmp_path / "notes.txt")) is None
    assert get_reader([]) is None


def test_reader_opens_nifti_with_geometry_as_layer_data(tmp_path):
    vol, path = _ct(tmp_path)
    reader = get_reader(str(path))
    assert reader is not None
    [(data, kwargs, kind)] = reader(str(path))
    assert kind == "image" and kwargs["name"] == "ct"
    np.testing.assert_array_equal(data, vol.array)
    np.testing.assert_allclose(kwargs["scale"], (2.5, 0.7, 0.6))
    np.testing.assert_allclose(kwargs["translate"], (40.0, -80.0, -120.0))


def test_oblique_volume_gets_an_affine_that_maps_voxels_to_world():
    angle = np.deg2rad(20)
    direction = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    vol = Volume(np.zeros((3, 4, 5)), spacing=(2.0, 1.0, 0.5), origin=(1.0, 2.0, 3.0), direction=direction)
    affine = layer_geometry(vol)["affine"]
    idx = np.array([2.0, 1.0, 3.0, 1.0])
    np.testing.assert_allclose((affine @ idx)[:3], vol.index_to_world(idx[:3])[::-1])


@pytest.mark.gui
def test_viewer_opens_a_volume_through_the_plugin(make_napari_viewer, tmp_path):
    vol, path = _ct(tmp_path)
    viewer = make_napari_viewer()
    layers = viewer.open(str(path), plugin="napari-wsnodule")
    assert len(layers) == 1
    layer = layers[0]
    np.testing.assert_allclose(layer.scale, vol.spacing)
    np.testing.assert_allclose(layer.translate, vol.origin[::-1])
    # the voxel at index (1, 2, 3) sits at its world position in napari's (z, y, x) world
    world_zyx = layer.data_to_world((1, 2, 3))
    np.testing.assert_allclose(world_zyx, vol.index_to_world((1, 2, 3))[::-1])
    assert layer.metadata["wsnodule_volume"].same_geometry(vol)
