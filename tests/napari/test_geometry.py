import numpy as np
import pytest

from wsnodule_core.errors import GeometryMismatchError
from wsnodule_core.io import Volume
from napari_wsnodule._geometry import VOLUME_KEY, layer_geometry, mask_volume, volume_of_layer
from napari_wsnodule._layers import add_volume_layer, show_map


def _oblique(angle_deg=25.0):
    a = np.deg2rad(angle_deg)
    direction = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    return Volume(np.arange(3 * 4 * 5, dtype=np.float32).reshape(3, 4, 5), spacing=(2.5, 0.8, 0.6),
                  origin=(-100.0, 20.0, 55.0), direction=direction)


@pytest.mark.parametrize("oblique", [False, True])
def test_volume_of_layer_gives_back_the_geometry_the_layer_was_made_with(make_napari_viewer, oblique):
    viewer = make_napari_viewer()
    vol = _oblique() if oblique else Volume(np.zeros((3, 4, 5), np.float32), spacing=(2.5, 0.8, 0.6),
                                            origin=(-100.0, 20.0, 55.0))
    layer = viewer.add_image(vol.array, metadata={VOLUME_KEY: vol}, **layer_geometry(vol))
    back = volume_of_layer(layer)
    np.testing.assert_allclose(back.spacing, vol.spacing, atol=1e-9)
    np.testing.assert_allclose(back.origin, vol.origin, atol=1e-9)
    np.testing.assert_allclose(back.direction, vol.direction, atol=1e-9)
    idx = np.array([2.0, 3.0, 1.0])
    np.testing.assert_allclose(back.index_to_world(idx), vol.index_to_world(idx), atol=1e-9)


def test_a_layer_moved_in_napari_exports_where_it_is_shown(make_napari_viewer):
    viewer = make_napari_viewer()
    vol = Volume(np.zeros((3, 4, 5), np.float32), spacing=(2.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0))
    layer = viewer.add_image(vol.array, **layer_geometry(vol))
    layer.translate = (10.0, 20.0, 30.0)  # (z, y, x) mm
    np.testing.assert_allclose(volume_of_layer(layer).origin, (30.0, 20.0, 10.0))


def test_mask_volume_refuses_labels_of_another_shape():
    vol = Volume(np.zeros((3, 4, 5), np.float32))
    assert mask_volume(np.ones((3, 4, 5), np.uint8), vol).same_geometry(vol)
    with pytest.raises(GeometryMismatchError, match="shape"):
        mask_volume(np.ones((3, 4, 6), np.uint8), vol)


def test_maps_are_refreshed_in_place_but_labels_never_overwritten(make_napari_viewer):
    viewer = make_napari_viewer()
    vol = Volume(np.zeros((3, 4, 5), np.float32), spacing=(2.0, 1.0, 1.0))
    ct = add_volume_layer(viewer, vol, "image", "ct")
    first = show_map(viewer, vol.with_array(np.ones((3, 4, 5), np.float32)), "ct NAM", source=ct, generated="nam:nam")
    again = show_map(viewer, vol.with_array(np.full((3, 4, 5), 2, np.float32)), "ct NAM", source=ct,
                     generated="nam:nam")
    assert again is first and float(first.data.max()) == 2.0
    mask1 = show_map(viewer, vol.with_array(np.ones((3, 4, 5), np.uint8)), "ct mask", source=ct,
                     generated="nam:fine", kind="labels")
    mask1.data[0, 0, 0] = 7  # a user correction
    mask2 = show_map(viewer, vol.with_array(np.ones((3, 4, 5), np.uint8)), "ct mask", source=ct,
                     generated="nam:fine", kind="labels")
    assert mask2 is not mask1 and mask1.data[0, 0, 0] == 7 and mask2.name == "ct mask (2)"
    np.testing.assert_allclose(mask2.scale, vol.spacing)
