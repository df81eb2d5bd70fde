"""The NAM widget: every map and mask on the CT's grid and source, the candidate table, re-runs that
never touch a corrected mask, checkpoint defaults, multi-GAP, Cancel, and the errors shown."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_wsnodule._geometry import volume_of_layer
from napari_wsnodule._layers import (GENERATED_KEY, MASK_OPACITY, OVERLAY_FLOOR, OVERLAY_OPACITY, SOURCE_KEY,
                                     add_volume_layer)
from napari_wsnodule._session import LoadedModel
from napari_wsnodule.widgets._view import camera_of
from napari_wsnodule.widgets.nam import NO_MODEL, NamWidget
from wsnodule_core.io.volume import Volume
from wsnodule_core.nam.blob_model import BlobDetectorModel
from wsnodule_core.nam.model import MultiGapClassifier, MultiGapConfig
from wsnodule_core.nam.model import load_classifier
from wsnodule_core.training.checkpoint import save_checkpoint
from wsnodule_core.training.device import choose_device

pytestmark = pytest.mark.gui
WAIT_MS = 60_000
SPACING = (2.5, 0.8, 0.7)
DIRECTION = np.array([[-1.0, 0, 0], [0, 1, 0], [0, 0, -1]])  # not the identity: the layers get an affine


def chest(shape=(12, 96, 112), nodule=(6, 48, 50), radius_mm=5.5, seed=0) -> Volume:
    """Air, a fat body wall, an elliptic lung and one 20 HU spherical nodule on slices 5-7."""
    z, y, x = np.meshgrid(*(np.arange(n) * s for n, s in zip(shape, SPACING)), indexing="ij")
    hu = np.full(shape, -1000.0)
    ny, nx = shape[1:]
    r2 = ((y / SPACING[1] - ny / 2) / ny) ** 2 + ((x / SPACING[2] - nx / 2) / nx) ** 2
    hu[r2 < 0.49**2] = -100
    hu[r2 < 0.41**2] = -850
    c = np.array(nodule) * SPACING
    hu[(z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2 <= radius_mm**2] = 20
    hu += np.random.default_rng(seed).normal(0, 20, shape)
    return Volume(hu.astype(np.float32), SPACING, (10.0, -20.0, 30.0), DIRECTION)


def blob_model(name="blob stand-in") -> LoadedModel:
    """The analytic stand-in classifier (its NAM is a known blob detector) as a session model."""
    model = BlobDetectorModel(6, strides=(8,), dense_level=0.64, softness=0.01)
    return LoadedModel(name, "nam-multigap", model, None, choose_device("cpu"))


def narrow_checkpoint(tmp_path, n_gap: int, threshold: float | None) -> LoadedModel:
    """An untrained narrow classifier saved and loaded as a real checkpoint."""
    torch.manual_seed(n_gap)
    model = MultiGapClassifier(MultiGapConfig(n_gap=n_gap, width="narrow"))
    path = save_checkpoint(tmp_path / f"{n_gap}gap.pt", {
        "kind": "nam-multigap", "model_config": model.config.to_dict(),
        "train_config": {"image_size": 64, "pixel_spacing_mm": 1.5}, "model_state": model.state_dict(),
        "probability_threshold": threshold})
    loaded, checkpoint = load_classifier(path)
    return LoadedModel(f"{n_gap}-GAP", "nam-multigap", loaded, checkpoint, choose_device("cpu"), path)


@pytest.fixture
def errors(monkeypatch):
    shown: list[str] = []
    monkeypatch.setattr("napari_wsnodule.widgets.nam.show_error", shown.append)
    monkeypatch.setattr("napari_wsnodule._tasks.show_error", shown.append)
    monkeypatch.setattr("napari_wsnodule.widgets.nam.show_info", lambda text: None)
    return shown


def _setup(make_napari_viewer, volume: Volume | None = None, with_ct: bool = True):
    viewer = make_napari_viewer()
    widget = NamWidget(viewer)
    viewer.window.add_dock_widget(widget)
    ct = None
    if with_ct:
        ct = add_volume_layer(viewer, volume if volume is not None else chest(), "image", "ct")
    return viewer, widget, ct


def _wait(qtbot, widget):
    qtbot.waitUntil(lambda: not widget.tasks.busy and not widget.showing, timeout=WAIT_MS)


def _generated(viewer, what):
    return [layer for layer in viewer.layers if layer.metadata.get(GENERATED_KEY) == what]


def test_maps_and_masks_land_on_the_ct_they_were_computed_from(make_napari_viewer, qtbot, errors):
    volume = chest()
    viewer, widget, ct = _setup(make_napari_viewer, volume)
    widget.session.add_model(blob_model())
    assert widget.model_combo.count() == 1 and widget.multi_gap_combo.count() == 1  # "(none)" only
    widget.image_combo.select(ct)
    widget.input_size_spin.setValue(128)
    widget.segment_button.click()
    # the user opens another image and selects it while the task runs
    other = viewer.add_image(np.zeros((4, 8, 8), np.float32), name="other", scale=(1, 2, 3))
    widget.image_combo.select(other)
    viewer.layers.selection.active = other
    _wait(qtbot, widget)
    assert widget.tasks.last_outcome == "done" and errors == []

    expected = {"nam:nam", "nam:rnam", "nam:scope", "nam:candidates", "nam:fine", "nam:coarse"}
    made = {layer.metadata[GENERATED_KEY]: layer for layer in viewer.layers
            if GENERATED_KEY in layer.metadata}
    assert set(made) == expected
    for layer in made.values():
        assert layer.metadata[SOURCE_KEY] is ct
        assert volume_of_layer(layer).same_geometry(volume), layer.name
        np.testing.assert_allclose(layer.data_to_world((5, 40, 30)), ct.data_to_world((5, 40, 30)))
    assert made["nam:fine"].__class__.__name__ == "Labels" and made["nam:nam"].blending == "additive"
    # names: the CT's name and what the layer is
    assert made["nam:fine"].name == "ct · NAM mask" and made["nam:nam"].name == "ct · NAM map"
    # the overlay style: faint, transparent where low, values under the floor hidden; masks see-through
    for key in ("nam:nam", "nam:rnam"):
        heat = made[key]
        top = float(np.asarray(made["nam:nam"].data).max())
        assert heat.opacity == OVERLAY_OPACITY and heat.blending == "additive"
        np.testing.assert_allclose(heat.contrast_limits, (OVERLAY_FLOOR * top, top), rtol=1e-5)
        assert heat.contrast_limits_range[0] == 0.0  # the user can still lower the floor
        alpha = heat.colormap.map(np.array([0.0, 0.05, 1.0]))[:, 3]
        assert alpha[0] == 0.0 and 0.0 < alpha[1] < 0.5 and alpha[2] == 1.0
    assert made["nam:fine"].opacity == MASK_OPACITY and made["nam:scope"].contour > 0
    fine = np.asarray(made["nam:fine"].data)
    assert set(np.flatnonzero(fine.any(axis=(1, 2)))) == {5, 6, 7}
    run = widget.last_run
    assert run.source is ct and run.result.n_nodules == 1
    rnam = np.asarray(made["nam:rnam"].data)
    for s in run.result.slices:  # each nodule slice shows the R-NAM of its chosen candidate
        [chosen] = [c for c in s.candidates if c.label in s.chosen]
        np.testing.assert_allclose(rnam[s.z], chosen.rnam)
    assert rnam[:5].max() == 0 and rnam[8:].max() == 0

    # one row per candidate of each nodule slice, with its score and whether it was chosen
    table = widget.rnam_table
    rows = [[table.item(r, c).text() for c in range(table.columnCount())] for r in range(table.rowCount())]
    n_candidates = sum(len(s.candidates) for s in run.result.slices)
    assert len(rows) == n_candidates >= 3
    assert {row[0] for row in rows} == {"5", "6", "7"}
    assert sum(row[5] == "✓" for row in rows) == 3
    for s in run.result.slices:  # eq. 4: the chosen candidate has the highest score
        assert s.chosen == (max(s.candidates, key=lambda c: c.score).label,)

    # a click on a candidate of slice 5 shows its R-NAM there and moves the viewer to slice 5
    viewer.dims.set_point(0, ct.data_to_world((9, 0, 0))[0])
    made["nam:rnam"].data[5] = -1.0  # so that the click's effect shows
    row = next(r for r, cells in enumerate(rows) if cells[0] == "5")
    table.selectRow(row)
    slice5 = next(s for s in run.result.slices if s.z == 5)
    candidate = next(c for c in slice5.candidates if c.label == int(rows[row][2]))
    np.testing.assert_allclose(np.asarray(made["nam:rnam"].data)[5], candidate.rnam)
    assert round(ct.world_to_data(viewer.dims.point)[0]) == 5
    cells = np.argwhere(run.result.candidates.array[5] == candidate.label).mean(axis=0)
    np.testing.assert_allclose(camera_of(viewer).center[-2:], ct.data_to_world((5, *cells))[1:], atol=1e-6)

    # the user corrects the fine mask; a second run refreshes the maps but adds a new mask layer
    made["nam:fine"].data_setitem((np.array([0]), np.array([0]), np.array([0])), 7)
    edited = np.asarray(made["nam:fine"].data).copy()
    widget.image_combo.select(ct)
    widget.segment_button.click()
    _wait(qtbot, widget)
    assert len(_generated(viewer, "nam:nam")) == 1 and _generated(viewer, "nam:nam")[0] is made["nam:nam"]
    assert len(_generated(viewer, "nam:scope")) == 1  # unedited outlines are refreshed in place
    assert len(_generated(viewer, "nam:fine")) == 2
    np.testing.assert_array_equal(made["nam:fine"].data, edited)


def test_checkpoint_defaults_multi_gap_and_model_list(make_napari_viewer, qtbot, tmp_path, errors):
    viewer, widget, ct = _setup(make_napari_viewer)
    one = narrow_checkpoint(tmp_path, 1, threshold=0.37)
    widget.session.add_model(one)
    assert widget.model_combo.count() == 1
    assert widget.threshold_spin.value() == pytest.approx(0.37) and widget.input_size_spin.value() == 64
    config = widget.nam_config()
    assert config.crop_pixel_spacing_mm == 1.5 and config.input_size == 64
    widget.threshold_spin.setValue(0.2)  # the user's value stays while the same model stays picked
    two = widget.session.add_model(narrow_checkpoint(tmp_path, 2, threshold=None))
    assert widget.threshold_spin.value() == pytest.approx(0.2)
    assert widget.model_combo.count() == 2 and widget.multi_gap_combo.count() == 2
    assert widget.selected_model() is one  # the choice survives the list update
    widget.model_combo.setCurrentIndex(1)  # another model brings its own defaults
    assert widget.selected_model() is two and widget.threshold_spin.value() == pytest.approx(0.5)
    widget.model_combo.setCurrentIndex(0)
    assert widget.threshold_spin.value() == pytest.approx(0.37)
    widget.multi_gap_combo.setCurrentIndex(1)
    assert widget.multi_gap_combo.currentData() is two
    widget.threshold_spin.setValue(0.0)  # every slice is a nodule slice: the multi-GAP NAM is made for all
    widget.two_nodules_check.setChecked(True)
    assert widget.nam_config().top_k == 2
    widget.segment_button.click()
    _wait(qtbot, widget)
    assert widget.tasks.last_outcome == "done", errors
    [multi] = _generated(viewer, "nam:multi_nam")
    assert volume_of_layer(multi).same_geometry(volume_of_layer(ct)) and multi.metadata[SOURCE_KEY] is ct
    assert widget.last_run.multi_gap_name == two.name
    assert len(widget.last_run.result.slices) == ct.data.shape[0]
    assert widget.rnam_table.rowCount() >= ct.data.shape[0]  # a row for each nodule slice, candidates or not


def test_cancel_adds_nothing(make_napari_viewer, qtbot, errors):
    viewer, widget, ct = _setup(make_napari_viewer)
    widget.session.add_model(blob_model())
    widget.input_size_spin.setValue(128)
    before = len(viewer.layers)
    widget.segment_button.click()
    widget.tasks.cancel_button.click()
    _wait(qtbot, widget)
    assert widget.tasks.last_outcome == "cancelled" and errors == []
    assert len(viewer.layers) == before and widget.last_run is None
    assert "cancelled" in widget.tasks.status.text()


def test_missing_ct_or_model_is_explained(make_napari_viewer, qtbot, errors):
    viewer, widget, _ = _setup(make_napari_viewer, with_ct=False)
    widget.segment_button.click()
    assert "Open a CT first" in errors[-1]
    add_volume_layer(viewer, chest(), "image", "ct")
    widget.segment_button.click()
    assert errors[-1] == NO_MODEL and "Model widget" in NO_MODEL
    assert not widget.tasks.busy and widget.last_run is None


def test_a_ct_without_lungs_says_how_to_go_on(make_napari_viewer, qtbot, errors):
    soft_tissue = Volume(np.full((6, 64, 64), 40.0, np.float32), SPACING)
    viewer, widget, ct = _setup(make_napari_viewer, soft_tissue)
    widget.session.add_model(blob_model())
    widget.input_size_spin.setValue(64)
    widget.segment_button.click()
    _wait(qtbot, widget)
    assert widget.tasks.last_outcome == "failed" and "untick 'Crop around the lungs'" in errors[-1]
    widget.lungs_check.setChecked(False)  # whole slices, resized to the network input
    widget.segment_button.click()
    _wait(qtbot, widget)
    assert widget.tasks.last_outcome == "done" and len(errors) == 1
    assert volume_of_layer(widget.last_layers["nam"]).same_geometry(soft_tissue)
