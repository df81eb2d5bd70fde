"""The "Prompt correction" widget with a stand-in LiteMedSAM: a drawn box and clicks merge masks into the
nodule layer (new id, or the nodule under the prompt), propagation, undo/redo (buttons and keys),
deleting a nodule, and the refusals."""

from __future__ import annotations

import numpy as np
import pytest
from napari.utils._test_utils import read_only_mouse_event
from napari.utils.interactions import mouse_move_callbacks, mouse_press_callbacks, mouse_release_callbacks
from napari.utils.key_bindings import coerce_keybinding

from napari_wsnodule._layers import add_volume_layer
from napari_wsnodule.widgets.prompt import PromptWidget
from wsnodule_core.metrics import dice_3d

pytestmark = pytest.mark.gui
WAIT_MS = 30_000


@pytest.fixture
def setup(sphere_viewer, stub_medsam):
    viewer, image, volume, truth, shown = sphere_viewer
    labels = add_volume_layer(viewer, volume.with_array(np.zeros(volume.shape, np.int32)), "labels", "nodules",
                              source=image)
    widget = PromptWidget(viewer)
    widget.model = stub_medsam
    viewer.window.add_dock_widget(widget)
    return viewer, widget, labels, truth, shown


def _wait(qtbot, widget) -> None:
    qtbot.waitUntil(lambda: not widget.tasks.busy and not widget.prewarming, timeout=WAIT_MS)


def _rectangle(z: int, box: tuple[int, int, int, int]) -> np.ndarray:
    y0, x0, y1, x1 = box
    return np.array([[z, y0, x0], [z, y0, x1], [z, y1, x1], [z, y1, x0]], float)


def _click(layer, zyx, modifiers=()) -> None:
    world = layer.data_to_world(np.asarray(zyx, float))
    for kind, run in (("mouse_press", mouse_press_callbacks), ("mouse_release", mouse_release_callbacks)):
        run(layer, read_only_mouse_event(type=kind, position=tuple(world), modifiers=list(modifiers),
                                         dims_displayed=[1, 2]))


def _drag(layer, start_zyx, end_zyx) -> None:
    start, end = (tuple(layer.data_to_world(np.asarray(p, float))) for p in (start_zyx, end_zyx))
    mouse_press_callbacks(layer, read_only_mouse_event(type="mouse_press", position=start, dims_displayed=[1, 2]))
    mouse_move_callbacks(layer, read_only_mouse_event(type="mouse_move", is_dragging=True, position=end,
                                                      dims_displayed=[1, 2]))
    mouse_release_callbacks(layer, read_only_mouse_event(type="mouse_release", position=end, dims_displayed=[1, 2]))


def test_a_drawn_box_merges_a_mask_that_propagates_and_undoes(setup, qtbot):
    viewer, widget, labels, truth, shown = setup
    boxes = widget.use_boxes()
    _wait(qtbot, widget)
    assert widget.prompt_session is not None and viewer.layers.selection.active is boxes
    assert boxes.mode == "add_rectangle"
    viewer.dims.set_point(0, boxes.data_to_world([5, 0, 0])[0])
    _drag(boxes, (5, 22, 22), (5, 42, 42))  # drawn with the mouse in rectangle mode
    _wait(qtbot, widget)
    data = labels.data
    assert not shown and set(np.unique(data)) == {0, 1}
    assert dice_3d(data[5] == 1, truth[5]) > 0.85 and not data[[z for z in range(11) if z != 5]].any()
    assert widget.target == (5, 1) and labels.selected_label == 1 and widget.undo_button.isEnabled()
    assert "slice 5" in widget.latency_label.text() and widget.last_latency_s is not None
    first = data.copy()

    widget.propagate_button.click()
    _wait(qtbot, widget)
    spread = labels.data == 1
    assert {z for z in range(11) if spread[z].any()} == {z for z in range(11) if truth[z].any()}
    assert dice_3d(spread, truth) > 0.8

    widget.undo_button.click()  # the whole propagation is one step
    assert np.array_equal(labels.data, first)
    widget.undo_button.click()
    assert not labels.data.any() and not widget.undo_button.isEnabled()
    widget.redo_button.click()
    assert np.array_equal(labels.data, first)

    # a second box over the same nodule corrects it (same id); the key binding undoes it
    boxes.add_rectangles(_rectangle(5, (26, 26, 38, 38)))
    _wait(qtbot, widget)
    assert set(np.unique(labels.data)) == {0, 1} and np.count_nonzero(labels.data) < np.count_nonzero(first)
    boxes.keymap[coerce_keybinding("Control-Z")](boxes)
    assert np.array_equal(labels.data, first)
    boxes.keymap[coerce_keybinding("Control-Shift-Z")](boxes)
    assert np.count_nonzero(labels.data) < np.count_nonzero(first)
    boxes.keymap[coerce_keybinding("Control-Z")](boxes)

    widget.delete_nodule()
    assert not labels.data.any()
    widget.undo()
    assert np.array_equal(labels.data, first)


def test_clicks_segment_cut_and_add_and_each_is_undone(setup, qtbot):
    viewer, widget, labels, truth, shown = setup
    clicks = widget.use_clicks()
    _wait(qtbot, widget)
    _click(clicks, (5, 31, 31))
    _wait(qtbot, widget)
    assert not shown and dice_3d(labels.data[5] == 1, truth[5]) > 0.85
    whole = labels.data.copy()
    _click(clicks, (5, 31, 25), modifiers=("Shift",))  # a negative click cuts the left part off
    _wait(qtbot, widget)
    assert not labels.data[5, :, :26].any() and labels.data[5, 31, 31] == 1
    assert clicks.face_color[-1][:3].tolist() == [1.0, 0.0, 0.0] and len(clicks.data) == 2
    widget.negative_check.setChecked(False)
    _click(clicks, (5, 31, 25))  # a positive click adds the part back
    _wait(qtbot, widget)
    assert labels.data[5, 31, 25] == 1
    for _ in range(2):
        widget.undo()
    assert np.array_equal(labels.data, whole)

    # a click on an empty spot of another slice starts a new nodule there
    _click(clicks, (8, 10, 50))
    _wait(qtbot, widget)
    assert (labels.data[8] == 2).any() or not (labels.data[8] > 0).any()
    assert len(clicks.data) == 1  # the previous slice's clicks were cleared


def test_prompts_without_layers_or_with_a_mismatched_layer_are_refused(setup, qtbot, make_napari_viewer):
    viewer, widget, labels, truth, shown = setup
    viewer.layers.remove(labels)
    widget.prompt_box(5, (22, 22, 42, 42))
    assert "Pick the nodule Labels layer" in shown[-1]
    viewer.add_labels(np.zeros((3, 4, 5), np.int32), name="other")
    widget.labels_combo.refresh()
    widget.prompt_box(1, (0, 0, 2, 2))
    _wait(qtbot, widget)
    assert "not on the CT's grid" in shown[-1]
    widget.propagate()
    assert "no voxel on slice" in shown[-1]
