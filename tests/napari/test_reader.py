import numpy as np
import pytest

from wsnodule_core.errors import MultipleSeriesError
from wsnodule_core.io import Volume, VolumeMetadata, write_volume
from wsnodule_core.io.synthetic_dicom import write_synthetic_series
from napari_wsnodule._geometry import VOLUME_KEY, layer_geometry
from napari_wsnodule._reader import LUNG_WINDOW, NAME_KEY, get_reader


def _ct(tmp_path, name="ct.nii.gz"):
    array = (np.arange(4 * 5 * 6).reshape(4, 5, 6) - 60).astype(np.int16)
    vol = Volume(array, spacing=(2.5, 0.7, 0.6), origin=(-120.0, -80.0, 40.0), metadata=VolumeMetadata(modality="CT"))
    path = tmp_path / name
    write_volume(vol, path)
    return vol, path


def test_reader_declines_paths_it_cannot_read(tmp_path):
    assert get_reader(str(tmp_path / "notes.txt")) is None
    assert get_reader([]) is None
    (tmp_path / "notes.txt").write_text("not an image")
    assert get_reader(str(tmp_path)) is None  # a folder without DICOM files (a zarr store, say)
    assert get_reader(str(tmp_path / "notes.txt")) is None


@pytest.mark.parametrize("name", ["ct.nii", "ct.mhd", "ct.mha", "ct.nrrd"])
def test_reader_opens_each_file_format_with_its_geometry(tmp_path, name):
    vol, path = _ct(tmp_path, name)
    [(data, kwargs, kind)] = get_reader(str(path))(str(path))
    assert kind == "image" and kwargs["name"] == "ct"
    np.testing.assert_array_equal(data, vol.array)
    np.testing.assert_allclose(kwargs["scale"], vol.spacing, atol=1e-5)
    np.testing.assert_allclose(kwargs["translate"], vol.origin[::-1], atol=1e-5)
    assert kwargs["contrast_limits"] == LUNG_WINDOW
    assert kwargs["metadata"][VOLUME_KEY].same_geometry(vol)


def _series(folder, **kwargs):
    array = (np.arange(3 * 6 * 5).reshape(3, 6, 5) * 7 - 1000).astype(np.int16)
    write_synthetic_series(folder, array, (2.5, 0.7, 0.8), (-10.0, 20.0, 30.0), **kwargs)
    return array


def test_reader_opens_a_dicom_folder_or_one_of_its_files(tmp_path):
    folder = tmp_path / "chest"
    array = _series(folder)
    for path in (folder, folder / "slice_0001.dcm"):
        reader = get_reader(str(path))
        assert reader is not None
        [(data, kwargs, kind)] = reader(str(path))
        # named from the header (patient id, series description, study date), not the folder or a UID
        assert kind == "image" and kwargs["name"] == "WSNODULE-SYNTH · synthetic · 2000-01-01"
        assert kwargs["metadata"][NAME_KEY].short == "WSNODULE-SYNTH"
        assert kwargs["contrast_limits"] == LUNG_WINDOW
        np.testing.assert_array_equal(data, array)
        np.testing.assert_allclose(kwargs["translate"], (30.0, 20.0, -10.0))
        assert len(kwargs["metadata"][VOLUME_KEY].metadata.dicom_files) == 3


def test_reader_points_to_the_load_widget_for_a_folder_of_several_series(tmp_path):
    _series(tmp_path, file_prefix="a")
    _series(tmp_path, file_prefix="b")
    with pytest.raises(MultipleSeriesError, match="2 DICOM series(.|\\n)*Load CT widget"):
        get_reader(str(tmp_path))(str(tmp_path))


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
