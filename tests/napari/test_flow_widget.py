"""The flow-guidance widget: patches cut around points (or the viewer's position) overlay the CT exactly,
the trajectory has its time axis, results land on the CT picked at Run, masks are never replaced,
Cancel, and the errors shown."""

from __future__ import annotations

import numpy as np
import pytest

from napari_wsnodule._geometry import layer_geometry, volume_of_layer
from napari_wsnodule._layers import GENERATED_KEY, SOURCE_KEY, add_volume_layer
from napari_wsnodule.widgets._view import camera_of, jump_to
from napari_wsnodule.widgets.flow.dock import NO_CT, NO_PREDICTOR, NO_PRIOR, FlowGuidanceWidget
from napari_wsnodule.widgets.flow.models_panel import load_flow_predictor, load_flow_prior
from napari_wsnodule.widgets.flow.results import TIME_AXIS_LABEL
from wsnodule_core.flow.attribution import ThresholdRule
from wsnodule_core.flow.guidance import difference_mask
from wsnodule_core.flow.patches import PatchConfig
from wsnodule_core.flow.predictors import PredictorConfig, build_predictor
from wsnodule_core.flow.train_prior import PriorTrainConfig, build_prior_model
from wsnodule_core.flow.velocity import VelocityConfig
from wsnodule_core.io.volume import Volume
from wsnodule_core.training.checkpoint import save_checkpoint
from wsnodule_core.training.device import choose_device

pytestmark = [pytest.mark.gui, pytest.mark.usefixtures("one_torch_thread")]
WAIT_MS = 60_000
SIZE, SPACING_MM = 16, 2.0
TINY = VelocityConfig(channels=(8, 16, 32), num_head_channels=8, patch_size=SIZE)
CT_SPACING = (2.0, 1.0, 1.2)
FLIPS = np.diag([-1.0, 1.0, -1.0])  # not the identity: the layers get an affine


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """An untrained tiny prior and predictor, saved with the layouts load_prior / load_predictor read,
    and a predictor cut on other patches (32³)."""
    folder = tmp_path_factory.mktemp("flow")
    config = PriorTrainConfig(model=TINY, spacing_mm=SPACING_MM, device="cpu", seed=3)
    prior = build_prior_model(config)
    state = prior.state_dict()
    prior_path = save_checkpoint(folder / "prior" / "last.pt", {
        "kind": "flow-prior", "model_config": TINY.to_dict(), "train_config": config.to_dict(),
        "model_state": state, "ema_state": state})
    paths = {"prior": prior_path}
    for name, size in (("predictor", SIZE), ("other", 32)):
        net_config = PredictorConfig(channels=(4, 8))
        net = build_predictor(net_config, seed=1)
        paths[name] = save_checkpoint(folder / name / "best.pt", {
            "kind": "flow-predictor", "model_config": net_config.to_dict(), "train_config": {},
            "patch_config": PatchConfig(size=size, spacing_mm=SPACING_MM).to_dict(),
            "model_state": net.state_dict()})
    return paths


def chest(direction=FLIPS, shape=(24, 40, 40)) -> Volume:
    """Smoothly varying lung-like HU with a soft-tissue ball (values differ voxel to voxel)."""
    z, y, x = np.meshgrid(*(np.arange(n) * s for n, s in zip(shape, CT_SPACING)), indexing="ij")
    hu = -850 + 3.0 * z - 2.0 * y + 1.5 * x
    hu[(z - 24) ** 2 + (y - 20) ** 2 + (x - 24) ** 2 <= 36] = 30
    return Volume(hu.astype(np.float32), CT_SPACING, (10.0, -20.0, 30.0), direction)


@pytest.fixture
def errors(monkeypatch):
    shown: list[str] = []
    monkeypatch.setattr("napari_wsnodule.widgets._base.show_error", shown.append)
    monkeypatch.setattr("napari_wsnodule._tasks.show_error", shown.append)
    monkeypatch.setattr("napari_wsnodule.widgets._base.show_info", lambda text: None)
    return shown


def _setup(make_napari_viewer, checkpoints=None, volume=None, with_ct=True):
    viewer = make_napari_viewer()
    widget = FlowGuidanceWidget(viewer)
    viewer.window.add_dock_widget(widget)
    ct = None
    if with_ct:
        ct = add_volume_layer(viewer, volume if volume is not None else chest(), "image", "ct")
    if checkpoints is not None:  # loaded directly: the Load buttons are tested once
        cpu = choose_device("cpu")
        widget.models.prior_loaded(load_flow_prior(checkpoints["prior"], cpu))
        widget.models.predictor_loaded(load_flow_predictor(checkpoints["predictor"], cpu))
    widget.guidance.steps_spin.setValue(4)
    widget.guidance.guided_spin.setValue(2)
    return viewer, widget, ct


def _wait(qtbot, widget):
    qtbot.waitUntil(lambda: not widget.tasks.busy and not widget.showing, timeout=WAIT_MS)


def _generated(viewer, what):
    return [layer for layer in viewer.layers if layer.metadata.get(GENERATED_KEY) == what]


def test_patches_overlay_the_ct_and_land_on_its_source(make_napari_viewer, qtbot, checkpoints, errors):
    volume = chest()
    viewer, widget, ct = _setup(make_napari_viewer, volume=volume)
    widget.models.device_combo.setCurrentIndex(1)  # CPU
    widget.models.prior_edit.setText(str(checkpoints["prior"].parent))  # the run folder
    widget.models.prior_load_button.click()
    _wait(qtbot, widget)
    widget.models.predictor_edit.setText(str(checkpoints["predictor"]))
    widget.models.predictor_load_button.click()
    _wait(qtbot, widget)
    assert errors == [] and widget.models.prior is not None and widget.models.predictor is not None
    assert "last.pt: 16³ voxels at 2 mm" in widget.models.models_label.text()
    assert "⚠" not in widget.models.models_label.text()

    points_zyx = np.array([[12.0, 20.0, 20.0], [8.0, 14.0, 25.0]])  # CT voxel indices
    points = viewer.add_points(points_zyx, ndim=3, name="centres", **layer_geometry(volume))
    widget.inputs.points_combo.select(points)
    widget.inputs.image_combo.select(ct)
    widget.run_button.click()
    # the user opens another image and selects it while the task runs
    other = viewer.add_image(np.zeros((4, 8, 8), np.float32), name="other", scale=(1, 2, 3))
    widget.inputs.image_combo.select(other)
    viewer.layers.selection.active = other
    _wait(qtbot, widget)
    assert widget.tasks.last_outcome == "done" and errors == []

    run = widget.last_run.result
    assert widget.last_run.source is ct and len(run.patches) == 2
    kinds = ("flow:counterfactual", "flow:difference", "flow:trajectory", "flow:mask")
    for kind in kinds:
        made = _generated(viewer, kind)
        assert len(made) == 2 and all(layer.metadata[SOURCE_KEY] is ct for layer in made), kind
    for i, layers in enumerate(widget.last_layers):
        centre = np.asarray(ct.data_to_world(points_zyx[i]))            # napari world (z, y, x) mm
        np.testing.assert_allclose(run.centres_xyz[i], centre[::-1], atol=1e-6)
        np.testing.assert_allclose(volume.world_to_index(centre[::-1]), points_zyx[i], atol=1e-6)
        for key in ("counterfactual", "difference", "mask"):
            layer = layers[key]
            np.testing.assert_allclose(layer.world_to_data(centre), [SIZE // 2] * 3, atol=1e-6)
            assert volume_of_layer(layer).same_geometry(run.patches[i])
            assert np.allclose(volume_of_layer(layer).spacing, SPACING_MM)
        # any patch voxel: the layer's world point is the Volume's, and the CT layer agrees with the CT Volume
        world = np.asarray(layers["counterfactual"].data_to_world((3, 5, 11)))
        np.testing.assert_allclose(world[::-1], run.patches[i].index_to_world((3, 5, 11)), atol=1e-6)
        np.testing.assert_allclose(ct.world_to_data(world), volume.world_to_index(world[::-1]), atol=1e-6)
        # the patch was cut there: at the centre, difference = |CT (windowed) - counterfactual| in HU
        ct_hu = np.clip(volume.array[tuple(points_zyx[i].astype(int))], -1000, 1000)
        cf = np.asarray(layers["counterfactual"].data)
        diff = np.asarray(layers["difference"].data)
        assert diff[8, 8, 8] == pytest.approx(abs(ct_hu - cf[8, 8, 8]), abs=0.5)
        np.testing.assert_allclose(diff, np.abs(np.clip(run.patches[i].array, -1000, 1000) - cf), atol=0.5)
        assert layers["difference"].blending == "additive"
        assert layers["mask"].__class__.__name__ == "Labels"
        np.testing.assert_array_equal(np.asarray(layers["mask"].data) > 0, run.masks[i])
        # the trajectory: n_steps + 1 states on a leading time axis, the patch grid on the others
        trajectory = layers["trajectory"]
        assert trajectory.data.shape == (5, SIZE, SIZE, SIZE) and trajectory.ndim == 4
        np.testing.assert_allclose(trajectory.world_to_data((2.0, *centre)), [2] + [SIZE // 2] * 3, atol=1e-6)
        np.testing.assert_allclose(np.clip(trajectory.data[-1], -1000, 1000), cf, atol=1e-2)
        assert not np.allclose(trajectory.data[0], trajectory.data[-1])
    assert viewer.dims.axis_labels[0] == TIME_AXIS_LABEL
    # the union of the patch masks on the CT's own grid: a Labels layer with the CT's geometry, to export
    ct_masks = _generated(viewer, "flow:ct_mask")
    assert ct_masks == [widget.last_ct_mask] and ct_masks[0].metadata[SOURCE_KEY] is ct
    assert ct_masks[0].__class__.__name__ == "Labels" and volume_of_layer(ct_masks[0]).same_geometry(volume)
    np.testing.assert_array_equal(np.asarray(ct_masks[0].data) > 0, run.mask.array > 0)
    assert "flow mask (CT grid)" in ct_masks[0].name and ct_masks[0].name in widget.summary_label.text()
    assert len(run.times) == 5 and run.times[0] == pytest.approx(widget.guidance.t0_spin.value()) and run.times[-1] == 0.0
    text = widget.summary_label.text()
    assert f"{run.p_before[0]:.3f} → {run.p_after[0]:.3f}" in text and "Patch 2" in text

    # the user corrects the first mask; a second run refreshes the maps and adds new masks
    first_mask = widget.last_layers[0]["mask"]
    first_mask.data_setitem((np.array([0]), np.array([0]), np.array([0])), 7)
    edited = np.asarray(first_mask.data).copy()
    cf_layer = widget.last_layers[0]["counterfactual"]
    widget.inputs.image_combo.select(ct)
    widget.guidance.scale_spin.setValue(3.0)
    widget.guidance.rule_combo.setCurrentText("x0")
    widget.guidance.start_combo.setCurrentText("noise")
    widget.mask.threshold_combo.setCurrentText("otsu")
    widget.mask.floor_spin.setValue(20.0)
    widget.run_button.click()
    _wait(qtbot, widget)
    assert widget.tasks.last_outcome == "done" and errors == []
    run = widget.last_run.result
    c = run.config
    assert (c.scale, c.rule, c.start, c.guided_steps, c.n_steps) == (3.0, "x0", "noise", 2, 4)
    # the mask is the otsu rule on the difference after the 20 HU floor (the rules are scale-invariant)
    expected = difference_mask(run.difference, None, ThresholdRule("otsu"), floor=20.0)
    np.testing.assert_array_equal(run.masks, expected)
    assert run.masks.any() and np.all(run.difference[run.masks] >= 20.0)
    assert len(_generated(viewer, "flow:counterfactual")) == 2
    assert widget.last_layers[0]["counterfactual"] is cf_layer
    assert len(_generated(viewer, "flow:trajectory")) == 2
    assert len(_generated(viewer, "flow:mask")) == 4 and len(_generated(viewer, "flow:ct_mask")) == 2
    np.testing.assert_array_equal(first_mask.data, edited)


def test_viewer_position_is_the_centre_and_outside_points_are_refused(make_napari_viewer, qtbot, checkpoints,
                                                                      errors):
    volume = chest(direction=np.eye(3))  # axis-aligned: scale and translate
    viewer, widget, ct = _setup(make_napari_viewer, checkpoints, volume)
    index = (10.0, 25.0, 14.0)
    jump_to(viewer, ct, (10.0, 5.0, 5.0))  # slider on slice 10
    camera_of(viewer).center = ct.data_to_world(index)[1:]  # the user pans: the view centre is (25, 14)
    widget.run_button.click()
    _wait(qtbot, widget)
    assert widget.tasks.last_outcome == "done" and errors == []
    centre = np.asarray(ct.data_to_world(index))
    np.testing.assert_allclose(widget.last_run.result.centres_xyz[0], centre[::-1], atol=1e-6)
    layer = widget.last_layers[0]["difference"]
    np.testing.assert_allclose(layer.scale, [SPACING_MM] * 3)  # scale and translate, no affine
    np.testing.assert_allclose(layer.affine.affine_matrix, np.eye(4))
    np.testing.assert_allclose(layer.world_to_data(centre), [SIZE // 2] * 3, atol=1e-6)

    # a lung mask keeps the mask inside it: the lungs are the CT's voxels with x index < 14
    def ct_x_of_mask(run):
        return [volume.world_to_index(run.patches[0].index_to_world(v))[2] for v in np.argwhere(run.masks[0])]

    assert max(ct_x_of_mask(widget.last_run.result)) > 14  # without lungs the mask reaches beyond them
    lungs = np.zeros(volume.shape, np.int32)
    lungs[:, :, :14] = 1
    lungs_layer = add_volume_layer(viewer, volume.with_array(lungs), "labels", "lungs")
    widget.inputs.lungs_combo.select(lungs_layer)
    widget.run_button.click()
    _wait(qtbot, widget)
    assert widget.tasks.last_outcome == "done" and errors == []
    mask_layer = widget.last_layers[0]["mask"]
    np.testing.assert_array_equal(np.asarray(mask_layer.data) > 0, widget.last_run.result.masks[0])
    assert widget.last_run.result.masks[0].any() and len(_generated(viewer, "flow:mask")) == 2
    assert max(ct_x_of_mask(widget.last_run.result)) < 13.5 + 1e-6  # nearest-neighbour lung crop: in lung voxels
    on_ct = np.argwhere(np.asarray(widget.last_ct_mask.data) > 0)
    assert len(on_ct) and on_ct[:, 2].max() <= 14  # the CT-grid mask stays within a voxel of the lungs
    widget.inputs.lungs_combo.select(None)

    # a point outside the CT: explained, nothing run, nothing added
    before = len(viewer.layers)
    points = viewer.add_points(np.array([[12.0, 20.0, 20.0], [12.0, 20.0, 60.0]]), ndim=3,
                               **layer_geometry(volume))
    widget.inputs.points_combo.select(points)
    widget.run_button.click()
    assert "point 2" in errors[-1] and "outside 'ct'" in errors[-1] and "onto the CT" in errors[-1]
    assert not widget.tasks.busy and len(viewer.layers) == before + 1
    # an empty points layer says what to do
    empty = viewer.add_points(np.empty((0, 3)), ndim=3, name="empty")
    widget.inputs.points_combo.select(empty)
    widget.run_button.click()
    assert "has no points" in errors[-1]


def test_cancel_adds_nothing(make_napari_viewer, qtbot, checkpoints, errors):
    viewer, widget, ct = _setup(make_napari_viewer, checkpoints)
    widget.guidance.steps_spin.setValue(40)
    jump_to(viewer, ct, (12, 20, 20))
    before = len(viewer.layers)
    widget.run_button.click()
    widget.tasks.cancel_button.click()
    _wait(qtbot, widget)
    assert widget.tasks.last_outcome == "cancelled" and errors == []
    assert len(viewer.layers) == before and widget.last_run is None
    assert "cancelled" in widget.tasks.status.text()


def test_missing_inputs_and_mismatched_models_are_explained(make_napari_viewer, qtbot, checkpoints, errors):
    viewer, widget, _ = _setup(make_napari_viewer, with_ct=False)
    widget.run_button.click()
    assert errors[-1] == NO_CT
    ct = add_volume_layer(viewer, chest(), "image", "ct")
    jump_to(viewer, ct, (12, 20, 20))
    widget.run_button.click()
    assert errors[-1] == NO_PRIOR and "Load" in NO_PRIOR
    cpu = choose_device("cpu")
    widget.models.prior_loaded(load_flow_prior(checkpoints["prior"], cpu))
    widget.run_button.click()
    assert errors[-1] == NO_PREDICTOR
    widget.models.predictor_loaded(load_flow_predictor(checkpoints["other"], cpu))
    assert "⚠" in widget.models.models_label.text()
    widget.run_button.click()
    assert "16³ patches" in errors[-1] and "trained on 32³" in errors[-1]
    assert "PatchConfig(size=16" in errors[-1]
    widget.models.prior_edit.setText(str(checkpoints["prior"].parent / "missing.pt"))
    widget.models.prior_load_button.click()
    assert "no such file" in errors[-1]
    widget.models.predictor_loaded(load_flow_predictor(checkpoints["predictor"], cpu))
    widget.guidance.steps_spin.setValue(3)
    widget.guidance.guided_spin.setValue(5)  # more guided steps than steps
    widget.run_button.click()
    assert "guided_steps" in errors[-1]
    assert not widget.tasks.busy and widget.last_run is None


def test_flow_masks_export_on_the_ct_grid(make_napari_viewer, qtbot, checkpoints, errors, tmp_path, monkeypatch):
    """The CT-grid mask and a (corrected) patch mask export through the Nodules and export panel with the
    CT's shape, spacing, origin and (flipped) direction, as the union pasted on the CT's grid."""
    from napari_wsnodule.widgets.edit_export import EditExportWidget
    from wsnodule_core.data.annotation_export import read_table, table_path
    from wsnodule_core.flow.on_volume import paste_on_grid
    from wsnodule_core.io import read_volume

    monkeypatch.setenv("WSNODULE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("napari_wsnodule.widgets.edit_export.show_error", errors.append)
    monkeypatch.setattr("napari_wsnodule.widgets.edit_export.show_info", lambda text: None)
    volume = chest()
    viewer, widget, ct = _setup(make_napari_viewer, checkpoints, volume)
    points = viewer.add_points(np.array([[12.0, 20.0, 20.0], [8.0, 14.0, 25.0]]), ndim=3, name="centres",
                               **layer_geometry(volume))
    widget.inputs.points_combo.select(points)
    widget.run_button.click()
    _wait(qtbot, widget)
    assert widget.tasks.last_outcome == "done" and errors == []
    run = widget.last_run.result
    assert run.mask.array.any()
    panel = EditExportWidget(viewer)
    viewer.window.add_dock_widget(panel)

    def export(layer, name):
        panel.labels_combo.select(layer)
        panel.image_combo.select(ct)
        panel.export_path_edit.setText(str(tmp_path / name))
        panel.export_button.click()
        qtbot.waitUntil(lambda: not panel.tasks.busy, timeout=WAIT_MS)
        assert panel.tasks.last_outcome == "done", errors
        written = read_volume(tmp_path / name)
        assert written.shape == volume.shape and written.same_geometry(volume)
        np.testing.assert_allclose(written.spacing, CT_SPACING)
        np.testing.assert_allclose(written.origin, volume.origin, atol=1e-4)
        np.testing.assert_allclose(written.direction, FLIPS)
        return written, read_table(table_path(tmp_path / name))

    written, rows = export(widget.last_ct_mask, "flow_ct.nii.gz")
    np.testing.assert_array_equal(written.array > 0, run.mask.array > 0)
    assert rows and {r["source_method"] for r in rows} == {"flow:ct_mask"} and {r["edited"] for r in rows} == {"no"}
    # a patch mask, corrected on its own grid, lands on the CT's grid (nearest neighbour) when exported
    patch_layer = widget.last_layers[0]["mask"]
    corrected = np.asarray(patch_layer.data).copy()
    corrected[6:10, 6:10, 6:10] = 1
    patch_layer.data_setitem(tuple(np.nonzero(corrected != np.asarray(patch_layer.data))), 1)
    written, rows = export(patch_layer, "flow_patch.nrrd")
    expected = paste_on_grid([run.patches[0].with_array(corrected.astype(np.uint8))], volume, interpolator="nearest",
                             combine=np.maximum, dtype=np.uint8)
    np.testing.assert_array_equal(written.array > 0, expected.array > 0)
    assert {r["source_method"] for r in rows} == {"flow:mask"} and "yes" in {r["edited"] for r in rows}
