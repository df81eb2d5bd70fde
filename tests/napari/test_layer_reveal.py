"""Result layers added hidden and shown on a later event-loop turn (``reveal_later``): same layer, same
name, metadata and geometry as an immediate add, and they end visible (or hidden, when asked) and
selected like napari's own add."""

from __future__ import annotations

import numpy as np
import pytest

from napari_wsnodule._geometry import VOLUME_KEY
from napari_wsnodule._layers import GENERATED_KEY, MODEL_MASK_KEY, SOURCE_KEY, add_volume_layer, show_overlay
from napari_wsnodule.widgets._staged import StagedSteps
from wsnodule_core.io.volume import Volume

pytestmark = pytest.mark.gui


def _ct() -> Volume:
    ramp = np.linspace(-1000.0, 200.0, 24, dtype=np.float32)
    return Volume(np.broadcast_to(ramp, (4, 20, 24)).copy(), (2.5, 0.7, 0.8), origin=(-10.0, 5.0, 30.0))


def _mask(ct: Volume) -> Volume:
    mask = np.zeros(ct.shape, np.uint8)
    mask[1:3, 5:9, 6:12] = 1
    mask[2, 12:15, 15:18] = 2
    return ct.with_array(mask)


def _same_layer(deferred, immediate) -> None:
    assert deferred.name == immediate.name.replace("now", "later")
    assert type(deferred) is type(immediate) and deferred.data.dtype == immediate.data.dtype
    np.testing.assert_array_equal(deferred.data, immediate.data)
    np.testing.assert_allclose(deferred.scale, immediate.scale)
    np.testing.assert_allclose(deferred.translate, immediate.translate)
    assert deferred.opacity == immediate.opacity and deferred.blending == immediate.blending
    assert set(deferred.metadata) == set(immediate.metadata)
    for key in (VOLUME_KEY, SOURCE_KEY, GENERATED_KEY):
        assert deferred.metadata[key] is immediate.metadata[key]
    if MODEL_MASK_KEY in immediate.metadata:
        np.testing.assert_array_equal(deferred.metadata[MODEL_MASK_KEY], immediate.metadata[MODEL_MASK_KEY])


def test_a_layer_revealed_later_is_the_same_layer_and_ends_visible_and_selected(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    ct = _ct()
    image = add_volume_layer(viewer, ct, "image", "ct")
    mask = _mask(ct)
    now = add_volume_layer(viewer, mask, "labels", "mask now", source=image, generated="test:mask")
    assert now.visible and viewer.layers.selection.active is now

    later = add_volume_layer(viewer, mask, "labels", "mask later", source=image, generated="test:mask",
                             reveal_later=True)
    assert later in viewer.layers and later.name == "mask later"
    assert not later.visible and viewer.layers.selection.active is now  # napari's draw comes in a later turn
    assert viewer.layers._activate_on_insert  # napari's own flag is restored
    _same_layer(later, now)
    qtbot.waitUntil(lambda: later.visible, timeout=2000)
    assert viewer.layers.selection.active is later and viewer.layers.selection == {later}
    np.testing.assert_allclose(later.extent.world, now.extent.world)


def test_a_layer_asked_hidden_stays_hidden_but_is_selected(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    ct = _ct()
    image = add_volume_layer(viewer, ct, "image", "ct")
    coarse = add_volume_layer(viewer, _mask(ct), "labels", "coarse", source=image, generated="test:coarse",
                              visible=False, reveal_later=True)
    qtbot.waitUntil(lambda: viewer.layers.selection.active is coarse, timeout=2000)
    qtbot.wait(50)
    assert not coarse.visible


def test_an_overlay_revealed_later_keeps_its_style(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    ct = _ct()
    image = add_volume_layer(viewer, ct, "image", "ct")
    values = ct.with_array(np.linspace(0.0, 2.0, ct.array.size, dtype=np.float32).reshape(ct.shape))
    now = show_overlay(viewer, values, "map now", source=image, generated="test:now", colormap="inferno")
    later = show_overlay(viewer, values, "map later", source=image, generated="test:later", colormap="inferno",
                         reveal_later=True)
    assert not later.visible
    qtbot.waitUntil(lambda: later.visible, timeout=2000)
    np.testing.assert_allclose(later.contrast_limits, now.contrast_limits)
    np.testing.assert_allclose(later.contrast_limits_range, now.contrast_limits_range)
    assert later.colormap.name == now.colormap.name and later.opacity == now.opacity
    assert later.metadata[GENERATED_KEY] == "test:later"


def test_a_layer_removed_before_its_reveal_stays_removed(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    ct = _ct()
    image = add_volume_layer(viewer, ct, "image", "ct")
    gone = add_volume_layer(viewer, _mask(ct), "labels", "gone", source=image, generated="test:gone",
                            reveal_later=True)
    viewer.layers.remove(gone)
    qtbot.wait(100)
    assert gone not in viewer.layers and not gone.visible and viewer.layers.selection.active is not gone


def test_staged_steps_finish_after_the_last_layer_was_shown(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    ct = _ct()
    image = add_volume_layer(viewer, ct, "image", "ct")
    errors: list[str] = []
    staged = StagedSteps(errors.append)
    seen_at_done: dict = {}

    def done(layers: dict) -> None:
        seen_at_done.update({key: (layer.visible, viewer.layers.selection.active is layer)
                             for key, layer in layers.items()})

    staged.start([(key, lambda key=key: add_volume_layer(viewer, _mask(ct), "labels", key, source=image,
                                                         generated=f"test:{key}", reveal_later=True))
                  for key in ("first", "second")], done)
    assert staged.busy
    qtbot.waitUntil(lambda: not staged.busy, timeout=3000)
    assert not errors
    assert seen_at_done == {"first": (True, False), "second": (True, True)}


def test_opening_a_panel_prepares_the_first_labels_layer(make_napari_viewer):
    import sys

    from vispy.visuals.line import dash_atlas

    from napari_wsnodule import _warm_up
    from napari_wsnodule.widgets.nam import NamWidget

    dash_atlas._make_pattern.cache_clear()
    _warm_up._prepare_layers()  # what the background thread runs
    assert dash_atlas._make_pattern.cache_info().currsize > 0
    assert "pandas" in sys.modules and "skimage.color" in sys.modules

    NamWidget(make_napari_viewer())
    assert _warm_up._layers_started.is_set()  # started once per process, by any wsnodule panel
