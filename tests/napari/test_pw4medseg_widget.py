"""The PW4MedSeg widget: annotation layers read on the CT's voxel grid (spacing, origin, flipped
direction), marked slices, the pseudo-label maps on the CT they were made for, the errors shown, and
train + infer end to end with a tiny model."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from napari_wsnodule._geometry import volume_of_layer
from napari_wsnodule._layers import GENERATED_KEY, SOURCE_KEY, add_volume_layer
from napari_wsnodule.widgets._annotation_layers import (
    MARKS_KEY,
    annotations_from_layers,
    boxes_from_layer,
    points_from_layer,
)
from napari_wsnodule.widgets.pw4medseg.annotations_panel import NO_ANNOTATIONS, NO_CT
from napari_wsnodule.widgets.pw4medseg.dock import Pw4MedSegWidget
from wsnodule_core.io.volume import Volume

pytestmark = pytest.mark.gui
WAIT_MS = 60_000
SPACING = (2.5, 0.8, 0.7)
ORIGIN = (10.0, -20.0, 30.0)
DIRECTION = np.array([[-1.0, 0, 0], [0, 1, 0], [0, 0, -1]])  # x and z flipped: the CT layer gets an affine
NODULE = (6, 48, 50)


def chest(shape=(12, 96, 112), nodule=NODULE, radius_mm=5.5, seed=0) -> Volume:
    """Air, a fat body wall, an elliptic lung and one 20 HU spherical nodule (slices 5-7)."""
    z, y, x = np.meshgrid(*(np.arange(n) * s for n, s in zip(shape, SPACING)), indexing="ij")
    hu = np.full(shape, -1000.0)
    ny, nx = shape[1:]
    r2 = ((y / SPACING[1] - ny / 2) / ny) ** 2 + ((x / SPACING[2] - nx / 2) / nx) ** 2
    hu[r2 < 0.49**2] = -100
    hu[r2 < 0.41**2] = -850
    c = np.array(nodule) * SPACING
    hu[(z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2 <= radius_mm**2] = 20
    hu += np.random.default_rng(seed).normal(0, 20, shape)
    return Volume(hu.astype(np.float32), SPACING, ORIGIN, DIRECTION)


def napari_world(volume: Volume, index_zyx) -> np.ndarray:
    """napari world coordinates (z, y, x) mm of voxel indices, from the Volume's own geometry."""
    return np.asarray(volume.index_to_world(np.asarray(index_zyx, float)), float)[..., ::-1]


@pytest.fixture
def errors(monkeypatch):
    shown: list[str] = []
    monkeypatch.setattr("napari_wsnodule.widgets._base.show_error", shown.append)
    monkeypatch.setattr("napari_wsnodule._tasks.show_error", shown.append)
    monkeypatch.setattr("napari_wsnodule.widgets._base.show_info", lambda text: None)
    return shown


def _setup(make_napari_viewer, with_ct: bool = True):
    viewer = make_napari_viewer()
    widget = Pw4MedSegWidget(viewer)
    viewer.window.add_dock_widget(widget)
    volume = chest()
    ct = add_volume_layer(viewer, volume, "image", "ct") if with_ct else None
    if ct is not None:
        widget.annotations.image_combo.select(ct)
    return viewer, widget, ct, volume


def _wait(qtbot, widget):
    qtbot.waitUntil(lambda: not widget.tasks.busy and not widget.showing, timeout=WAIT_MS)


def _generated(viewer, what):
    return [layer for layer in viewer.layers if layer.metadata.get(GENERATED_KEY) == what]


def test_points_in_world_coordinates_become_the_ct_voxels(make_napari_viewer):
    viewer, widget, ct, volume = _setup(make_napari_viewer)
    indices = np.array([[6.0, 48.0, 50.0], [5.0, 45.0, 53.0], [7.0, 50.0, 47.0],  # nodule 1
                        [2.0, 15.0, 95.0]])                                          # nodule 2, 38+ mm away
    # a Points layer the user made with napari's default transform: its data are world mm (z, y, x)
    world = napari_world(volume, indices)
    plain = viewer.add_points(world, name="clicks")
    sets = points_from_layer(plain, volume)
    got = np.concatenate([s.array() for s in sets])
    expected = volume.world_to_index(world[:, ::-1])
    order = np.lexsort(got.T), np.lexsort(expected.T)
    np.testing.assert_allclose(got[order[0]], expected[order[1]], atol=1e-6)
    np.testing.assert_allclose(np.sort(got, axis=0), np.sort(indices, axis=0), atol=1e-6)
    # napari's own inverse of the CT layer agrees
    np.testing.assert_allclose([ct.world_to_data(p) for p in world], indices, atol=1e-6)
    assert sorted(len(s.points) for s in sets) == [1, 3]  # grouped by nodule (closer than 30 mm)
    assert all(s.label_array().tolist() == [1] * len(s.points) for s in sets)

    # the widget's own points layer has the CT's geometry: its data are the voxel indices, shown in place
    layer = widget.annotations.add_points_layer()
    assert widget.annotations.points_combo.layer() is layer and layer.mode == "add"
    layer.add(indices[:3])
    np.testing.assert_allclose(layer.data_to_world(indices[0]), world[0], atol=1e-6)
    [one] = points_from_layer(layer, volume)
    np.testing.assert_allclose(one.array(), indices[:3], atol=1e-6)
    assert one.label_array().tolist() == [1, 1, 1]
    layer.features.loc[2, "label"] = 0  # a background point
    [one] = points_from_layer(layer, volume)
    assert one.label_array().tolist() == [1, 1, 0]


def _covered(lo_edge: float, hi_edge: float, n: int) -> list[int]:
    """The voxels i (spanning i - 0.5 .. i + 0.5) a drawn interval overlaps."""
    return [i for i in range(n) if i + 0.5 > lo_edge and i - 0.5 < hi_edge]


def test_a_rectangle_on_slice_z_is_a_2d_box_covering_the_drawn_pixels(make_napari_viewer):
    viewer, widget, ct, volume = _setup(make_napari_viewer)
    layer = widget.annotations.add_boxes_layer()
    assert widget.annotations.boxes_combo.layer() is layer and layer.mode == "add_rectangle"
    z, (y0, x0), (y1, x1) = 6, (40.2, 41.7), (55.6, 58.1)
    layer.add_rectangles(np.array([[z, y0, x0], [z, y0, x1], [z, y1, x1], [z, y1, x0]]))
    [box] = boxes_from_layer(layer, volume)
    ys, xs = _covered(y0, y1, volume.shape[1]), _covered(x0, x1, volume.shape[2])
    assert box.planar and box.lo == (z, ys[0], xs[0]) and box.hi == (z, ys[-1], xs[-1])
    assert box.contains(NODULE)

    # the same rectangle drawn in a plain (world mm) Shapes layer: the flipped x axis swaps its corners
    corners = np.array([[z, y0, x0], [z, y0, x1], [z, y1, x1], [z, y1, x0]])
    plain = viewer.add_shapes([napari_world(volume, corners)], shape_type="rectangle", name="drawn in mm")
    [same] = boxes_from_layer(plain, volume)
    assert (same.lo, same.hi, same.planar) == (box.lo, box.hi, True)

    # a shape whose vertices span slices 4..8 is a 3D box; one reaching past the CT is clipped
    layer.add_polygons(np.array([[4, 30, 30], [8, 30, 70], [8, 120, 70]], float))
    boxes = boxes_from_layer(layer, volume)
    assert not boxes[1].planar and boxes[1].lo == (4, 30, 30) and boxes[1].hi == (8, 95, 70)
    annotations = annotations_from_layers(volume, None, layer)
    assert [b.nodule for b in annotations.boxes] == [1, 2] and annotations.shape == volume.shape


def test_pseudo_label_maps_have_the_ct_geometry_and_peak_at_the_points(make_napari_viewer, qtbot, errors):
    viewer, widget, ct, volume = _setup(make_napari_viewer)
    points = widget.annotations.add_points_layer()
    clicks = np.array([[6, 47, 49], [6, 49, 51], [5, 48, 50], [7, 48, 50]], float)
    points.add(clicks)
    widget.pseudo_label.pseudo_button.click()
    # the user opens another image and selects it while the task runs
    other = viewer.add_image(np.zeros((4, 8, 8), np.float32), name="other")
    widget.annotations.image_combo.select(other)
    viewer.layers.selection.active = other
    _wait(qtbot, widget)
    assert errors == [] and widget.tasks.last_outcome == "done"
    [prob] = _generated(viewer, "pw4medseg:pseudo_probability")
    [conf] = _generated(viewer, "pw4medseg:pseudo_confidence")
    for layer in (prob, conf):
        assert layer.metadata[SOURCE_KEY] is ct
        assert volume_of_layer(layer).same_geometry(volume)
        np.testing.assert_allclose(layer.data_to_world((5, 40, 30)), ct.data_to_world((5, 40, 30)))
    p = np.asarray(prob.data)
    peak = np.unravel_index(int(np.argmax(p)), p.shape)
    assert np.all(np.abs(np.asarray(peak) - clicks.mean(axis=0)) <= 1.0), peak
    assert all(p[tuple(c.astype(int))] > 0.5 for c in clicks)
    far = np.asarray(volume.shape) - 1
    assert p[tuple(far)] < 0.01 and float(np.asarray(conf.data)[tuple(far)]) < 0.5
    assert widget.last_pseudo.source is ct and widget.last_pseudo.annotations.points

    # a second pseudo-label of the same CT refreshes the maps in place (more points, new values)
    points.add(np.array([[6, 48, 100]], float))  # a second nodule, 35 mm away
    widget.annotations.image_combo.select(ct)
    widget.pseudo_label.pseudo_button.click()
    _wait(qtbot, widget)
    assert _generated(viewer, "pw4medseg:pseudo_probability") == [prob]
    assert np.asarray(prob.data)[6, 48, 100] > 0.99 and p[6, 48, 100] < 0.01


def test_marked_slices_follow_the_viewer_and_belong_to_the_ct(make_napari_viewer, errors):
    viewer, widget, ct, volume = _setup(make_napari_viewer)
    for z, button in ((4, widget.annotations.mark_nodule_button), (9, widget.annotations.mark_empty_button),
                      (5, widget.annotations.mark_nodule_button)):
        # the world z of slice z is not z: spacing 2.5, origin and a flipped z axis
        viewer.dims.set_point(0, napari_world(volume, (z, 0, 0))[0])
        button.click()
    assert errors == []
    assert ct.metadata[MARKS_KEY] == {4: True, 9: False, 5: True}
    assert [widget.annotations.marks_list.item(i).text() for i in range(widget.annotations.marks_list.count())] == [
        "slice 4: nodule", "slice 5: nodule", "slice 9: no nodule"]
    annotations = annotations_from_layers(volume, marks=ct.metadata[MARKS_KEY])
    assert annotations.slices.positive == (4, 5) and annotations.slices.negative == (9,)

    widget.annotations.marks_list.item(0).setSelected(True)
    widget.annotations.remove_mark_button.click()
    assert ct.metadata[MARKS_KEY] == {9: False, 5: True}
    # marks belong to their CT: another CT lists none of them
    other = add_volume_layer(viewer, chest(seed=1), "image", "ct 2")
    widget.annotations.image_combo.select(other)
    assert widget.annotations.marks_list.count() == 0
    widget.annotations.image_combo.select(ct)
    assert widget.annotations.marks_list.count() == 2
    # a mark needs the 2D axial view
    viewer.dims.ndisplay = 3
    widget.annotations.mark_nodule_button.click()
    assert errors and "2D view" in errors[-1]


def test_errors_say_what_to_do(make_napari_viewer, qtbot, errors, tmp_path):
    viewer, widget, ct, volume = _setup(make_napari_viewer, with_ct=False)
    for button in (widget.pseudo_label.pseudo_button, widget.annotations.add_points_button, widget.training.train_button, widget.inference.infer_button):
        button.click()
    assert errors == [NO_CT] * 4

    ct = add_volume_layer(viewer, volume, "image", "ct")
    widget.annotations.image_combo.select(ct)
    errors.clear()
    widget.pseudo_label.pseudo_button.click()
    assert errors == [NO_ANNOTATIONS] and not widget.tasks.busy

    points = widget.annotations.add_points_layer()
    points.add(np.array([[6, 48, 50], [6, 48, 300]], float))  # the second is beyond the CT's 112 columns
    widget.pseudo_label.pseudo_button.click()
    assert "outside the CT" in errors[-1] and "point 1" in errors[-1] and not widget.tasks.busy
    points.data = points.data[:1]

    widget.training.out_edit.setText(str(tmp_path / "run"))
    widget.training.train_button.click()
    assert "Make pseudo-label" in errors[-1]
    (tmp_path / "held").mkdir()
    (tmp_path / "held" / "last.pt").write_bytes(b"")
    widget.training.out_edit.setText(str(tmp_path / "held"))
    widget.training.train_button.click()
    assert "already holds last.pt" in errors[-1] and "nothing was overwritten" in errors[-1]
    widget.training.out_edit.setText("")
    widget.training.train_button.click()
    assert "output folder" in errors[-1]

    widget.inference.infer_button.click()
    assert "No PW4MedSeg model" in errors[-1]
    widget.inference.load_button.click()
    assert "best.pt" in errors[-1]

    # annotations changed after the pseudo-label: Train asks for a new one
    widget.pseudo_label.pseudo_button.click()
    _wait(qtbot, widget)
    points.add(np.array([[6, 70, 50]], float))
    widget.training.out_edit.setText(str(tmp_path / "run"))
    widget.training.train_button.click()
    assert "changed since" in errors[-1] and not widget.tasks.busy


_MISSING = [name for name in ("wsnodule_core.pw4medseg.train", "wsnodule_core.pw4medseg.infer")
            if importlib.util.find_spec(name) is None]


@pytest.mark.skipif(bool(_MISSING), reason=f"not written yet: {', '.join(_MISSING)}")
def test_train_then_infer_lands_on_the_ct_picked_at_start(make_napari_viewer, qtbot, errors, tmp_path):
    import torch

    from wsnodule_core.pw4medseg.model import PTransformerConfig

    torch.set_num_threads(1)
    viewer, widget, ct, volume = _setup(make_napari_viewer)
    widget.annotations.add_points_layer().add(np.array([[6, 47, 49], [6, 49, 51], [5, 48, 50], [7, 48, 50]], float))
    widget.pseudo_label.pseudo_button.click()
    _wait(qtbot, widget)
    tiny = PTransformerConfig.compact(img_size=(16, 16, 16), hidden_size=16, num_layers=1, num_heads=2,
                                      mlp_dim=32, feature_size=4)
    widget.training.train_overrides = {"model": tiny, "batch_size": 1, "warmup_steps": 0, "spacing_mm": (2.5, 2.0, 2.0)}
    widget.training.epochs_spin.setValue(1)
    widget.training.steps_spin.setValue(2)
    widget.training.device_combo.setCurrentIndex(widget.training.device_combo.findData("cpu"))
    assert widget.training.device_label.text() == "Using: cpu"
    out = tmp_path / "run"
    widget.training.out_edit.setText(str(out))
    widget.training.train_button.click()
    _wait(qtbot, widget)
    assert errors == [] and widget.tasks.last_outcome == "done"
    assert (out / "last.pt").is_file() and len(widget.training.loss_plot.values) == 2
    model = widget.inference.selected_model()
    assert model is not None and model.kind == "pw4medseg" and model.path.parent == out
    assert "Trained 1 epoch" in widget.training.run_label.text()

    # a second Train into the same folder is refused: the run is kept
    widget.training.train_button.click()
    assert "already holds" in errors[-1]
    errors.clear()

    widget.inference.passes_spin.setValue(2)
    widget.inference.infer_button.click()
    other = viewer.add_image(np.zeros((4, 8, 8), np.float32), name="other")
    widget.annotations.image_combo.select(other)
    viewer.layers.selection.active = other
    _wait(qtbot, widget)
    assert errors == [] and widget.tasks.last_outcome == "done"
    made = {what: _generated(viewer, f"pw4medseg:{what}") for what in ("probability", "uncertainty", "mask")}
    assert all(len(layers) == 1 for layers in made.values())
    prob, unc, mask = (made[w][0] for w in ("probability", "uncertainty", "mask"))
    for layer in (prob, unc, mask):
        assert layer.metadata[SOURCE_KEY] is ct and volume_of_layer(layer).same_geometry(volume)
    assert mask.__class__.__name__ == "Labels"
    p = np.asarray(prob.data)
    assert 0 <= p.min() and p.max() <= 1 and float(np.asarray(unc.data).max()) > 0  # 2 passes differ
    np.testing.assert_array_equal(np.asarray(mask.data) > 0, p >= 0.5)

    # inferring again refreshes the maps and adds a new mask (the first may have been corrected)
    widget.annotations.image_combo.select(ct)
    widget.inference.infer_button.click()
    _wait(qtbot, widget)
    assert _generated(viewer, "pw4medseg:probability") == [prob]
    assert len(_generated(viewer, "pw4medseg:mask")) == 2


@pytest.mark.skipif(bool(_MISSING), reason=f"not written yet: {', '.join(_MISSING)}")
def test_cancel_keeps_last_pt_and_load_brings_a_run_back(make_napari_viewer, qtbot, errors, tmp_path):
    import torch

    from wsnodule_core.pw4medseg.model import PTransformerConfig

    torch.set_num_threads(1)
    viewer, widget, ct, volume = _setup(make_napari_viewer)
    widget.annotations.add_points_layer().add(np.array([[6, 48, 50]], float))
    widget.pseudo_label.pseudo_button.click()
    _wait(qtbot, widget)
    tiny = PTransformerConfig.compact(img_size=(16, 16, 16), hidden_size=16, num_layers=1, num_heads=2,
                                      mlp_dim=32, feature_size=4)
    widget.training.train_overrides = {"model": tiny, "batch_size": 1, "warmup_steps": 0, "device": "cpu"}
    widget.training.epochs_spin.setValue(5)
    widget.training.steps_spin.setValue(1000)
    out = tmp_path / "run"
    widget.training.out_edit.setText(str(out))
    widget.training.train_button.click()
    qtbot.waitUntil(lambda: len(widget.training.loss_plot.values) >= 1, timeout=WAIT_MS)
    widget.tasks.cancel_button.click()
    _wait(qtbot, widget)
    assert errors == [] and widget.tasks.last_outcome == "cancelled"
    assert (out / "last.pt").is_file() and "kept" in widget.training.run_label.text()
    assert widget.inference.model_combo.count() == 0  # a cancelled run adds no model

    widget.inference.checkpoint_edit.setText(str(out / "last.pt"))
    widget.inference.load_button.click()
    _wait(qtbot, widget)
    assert errors == [] and widget.inference.selected_model() is not None
    assert widget.inference.selected_model().path == out / "last.pt"
