"""Maps over a CT leave the anatomy readable: the overlay style every widget uses, checked on rendered pixels."""

from __future__ import annotations

import numpy as np
import pytest

from napari_wsnodule._layers import (GENERATED_KEY, OVERLAY_FLOOR, OVERLAY_OPACITY, SOURCE_KEY, add_volume_layer,
                                     overlay_style, show_map, show_overlay)
from napari_wsnodule.widgets._view import camera_of
from napari_wsnodule.widgets.pw4medseg.dock import Pw4MedSegWidget
from wsnodule_core.image.window import LUNG_VIEW_WINDOW
from wsnodule_core.io.volume import Volume

pytestmark = pytest.mark.gui
SIZE = 64


def _ct() -> Volume:
    """Columns from -1000 HU to -400 HU: a grey ramp in the lung window."""
    ramp = np.linspace(-1000.0, -400.0, SIZE, dtype=np.float32)
    return Volume(np.broadcast_to(ramp, (3, SIZE, SIZE)).copy(), (2.0, 1.0, 1.0))


def _map(ct: Volume) -> Volume:
    """Low everywhere on the left (10 % of the top: under the floor), the top in a square on the right."""
    values = np.zeros(ct.shape, np.float32)
    values[:, :, : SIZE // 2] = 0.1
    values[:, 16:48, 36:60] = 1.0
    return ct.with_array(values)


def _pixel(viewer, y: float, x: float) -> tuple[int, int]:
    """The canvas pixel (row, column) showing voxel (y, x) of the displayed slice."""
    camera, canvas = camera_of(viewer), viewer.window._qt_viewer.canvas.size
    height, width = canvas[0], canvas[1]
    return (int(height / 2 + (y - camera.center[-2]) * camera.zoom),
            int(width / 2 + (x - camera.center[-1]) * camera.zoom))


def _change(viewer, before: np.ndarray, y: float, x: float) -> int:
    after = viewer.screenshot(canvas_only=True, flash=False)
    row, col = _pixel(viewer, y, x)
    return int(np.abs(after[row, col, :3].astype(int) - before[row, col, :3].astype(int)).max())


def test_a_map_leaves_the_ct_under_its_low_values_untouched(make_napari_viewer):
    viewer = make_napari_viewer(show=True)  # a hidden canvas renders nothing
    ct = _ct()
    layer = add_volume_layer(viewer, ct, "image", "ct", contrast_limits=LUNG_VIEW_WINDOW)
    viewer.reset_view()
    assert tuple(viewer.window._qt_viewer.canvas.size) == viewer.screenshot(canvas_only=True, flash=False).shape[:2]
    before = viewer.screenshot(canvas_only=True, flash=False)
    heat = show_overlay(viewer, _map(ct), "map", source=layer, generated="test:map", colormap="inferno")
    assert heat.metadata[SOURCE_KEY] is layer and heat.metadata[GENERATED_KEY] == "test:map"
    assert _change(viewer, before, 32, 16) <= 2  # under the floor: the CT as it was
    assert _change(viewer, before, 32, 48) >= 40  # the map's peak stands out

    # the style it replaced (opaque inferno from 0, opacity 0.7) tinted the whole CT under the map
    viewer.layers.remove(heat)
    show_map(viewer, _map(ct), "old", source=layer, generated="test:old", colormap="inferno", blending="additive",
             opacity=0.7, contrast_limits=(0.0, 1.0))
    assert _change(viewer, before, 32, 16) > 10


def test_overlay_style_and_refresh(make_napari_viewer):
    viewer = make_napari_viewer()
    ct = _ct()
    layer = add_volume_layer(viewer, ct, "image", "ct")
    style = overlay_style("magma", 4.0)
    assert style["contrast_limits"] == (OVERLAY_FLOOR * 4.0, 4.0) and style["opacity"] == OVERLAY_OPACITY
    assert overlay_style("magma", 0.0)["contrast_limits"] == (OVERLAY_FLOOR, 1.0)  # an empty map still shows
    first = show_overlay(viewer, _map(ct), "map", source=layer, generated="test:map", colormap="magma")
    again = show_overlay(viewer, ct.with_array(_map(ct).array * 3), "map", source=layer, generated="test:map",
                         colormap="magma")
    assert again is first and len(viewer.layers) == 2  # a re-run refreshes the map in place
    np.testing.assert_allclose(again.contrast_limits, (OVERLAY_FLOOR * 3.0, 3.0))


def test_pw4medseg_maps_use_the_overlay_style(make_napari_viewer):
    viewer = make_napari_viewer()
    widget = Pw4MedSegWidget(viewer)
    ct = _ct()
    layer = add_volume_layer(viewer, ct, "image", "ct")
    probability = widget.map_layer(_map(ct), "ct · PW4MedSeg probability", layer, "pw4medseg:probability", "magma")
    assert probability.blending == "additive" and probability.opacity == OVERLAY_OPACITY
    np.testing.assert_allclose(probability.contrast_limits, (OVERLAY_FLOOR, 1.0))
    assert probability.colormap.map(np.array([0.0]))[0, 3] == 0.0
