"""The Model widget: training from a data set folder or the open layers, Cancel, Resume, loading,
listing and saving checkpoints, the device fallback text, and the errors shown as notifications."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_wsnodule._geometry import layer_geometry
from napari_wsnodule.widgets.model.dock import ModelWidget
from napari_wsnodule.widgets.model.models_panel import model_summary
from wsnodule_core.data.builders import build_dataset
from wsnodule_core.data.dataset import load_dataset
from wsnodule_core.nam.train import TrainConfig, train_classifier
from wsnodule_core.training.checkpoint import BEST, LAST, load_checkpoint, save_checkpoint

pytestmark = pytest.mark.gui
WAIT_MS = 60_000


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    """Four tiny phantom cases (24 x 96 x 96 at 5 x 3.6 x 3.6 mm), each with 2-3 nodules of >= 8 mm."""
    folder = tmp_path_factory.mktemp("model_widget") / "dataset"
    build_dataset(folder, source="phantom", n_cases=4, size="tiny", nodules_per_case=(2, 3), n_shapes=12,
                  min_diameter_mm=8.0, seed=1)
    return folder


@pytest.fixture(scope="module")
def trained_run(tiny_dataset, tmp_path_factory):
    """A one-epoch NAM run made with the core, for the loading and saving tests."""
    out = tmp_path_factory.mktemp("model_widget_run") / "run"
    config = TrainConfig(n_gap=1, width="narrow", batch_norm=True, epochs=1, batch_size=8, image_size=64,
                         pixel_spacing_mm=4.4, min_nodule_area_mm2=30.0, device="cpu", augment=False)
    train_classifier(tiny_dataset, out, config)
    return out


@pytest.fixture
def errors(monkeypatch):
    """Every error notification the widget or its tasks show."""
    shown: list[str] = []
    monkeypatch.setattr("napari_wsnodule.widgets._base.show_error", shown.append)
    monkeypatch.setattr("napari_wsnodule._tasks.show_error", shown.append)
    monkeypatch.setattr("napari_wsnodule.widgets._base.show_info", lambda text: None)
    return shown


def _widget(make_napari_viewer) -> ModelWidget:
    viewer = make_napari_viewer()
    widget = ModelWidget(viewer)
    viewer.window.add_dock_widget(widget)
    return widget


def _tiny_settings(widget: ModelWidget, out, epochs: int = 2) -> None:
    widget.device.device_combo.setCurrentIndex(widget.device.device_combo.findData("cpu"))
    widget.training.epochs_spin.setValue(epochs)
    widget.training.batch_spin.setValue(8)
    widget.training.image_size_spin.setValue(64)
    widget.training.spacing_spin.setValue(4.4)
    widget.training.out_edit.setText(str(out))


def _wait(qtbot, widget: ModelWidget) -> None:
    qtbot.waitUntil(lambda: not widget.tasks.busy, timeout=WAIT_MS)


def test_training_on_a_dataset_folder_adds_the_model_and_refuses_to_overwrite_the_run(
        make_napari_viewer, qtbot, tiny_dataset, tmp_path, errors):
    widget = _widget(make_napari_viewer)
    out = tmp_path / "run"
    widget.training.source_combo.setCurrentIndex(widget.training.source_combo.findData("dataset"))
    widget.training.dataset_edit.setText(str(tiny_dataset))
    _tiny_settings(widget, out, epochs=2)
    assert not widget.training.resume_button.isEnabled()
    widget.training.train_button.click()
    _wait(qtbot, widget)

    assert errors == [] and widget.tasks.last_outcome == "done"
    result = widget.training.last_run.result
    assert result.epochs_completed == 2 and not result.cancelled
    assert (out / BEST).is_file() and (out / LAST).is_file()
    assert len(widget.training.loss_values) == result.global_step > 0
    assert all(np.isfinite(widget.training.loss_values)) and widget.training.loss_plot.n_updates >= 2
    [model] = widget.session.models_of_kind("nam-multigap")
    assert model.path == out / BEST and model.checkpoint.epoch == result.best_epoch
    assert model.device.device == torch.device("cpu") and not model.model.training
    assert widget.models.models_table.rowCount() == 1
    assert model_summary(model)[:3] == ("run", "nam-multigap", "1 (narrow)")
    assert "added" in widget.training.run_label.text() and widget.training.resume_button.isEnabled()

    # Train again into the same folder: refused, nothing touched
    stamp = (out / LAST).stat().st_mtime_ns
    widget.training.train_button.click()
    assert not widget.tasks.busy
    assert len(errors) == 1 and "Resume" in errors[0] and "nothing was overwritten" in errors[0]
    assert (out / LAST).stat().st_mtime_ns == stamp

    # Resume it for one more epoch: a second model, the first kept
    widget.training.epochs_spin.setValue(3)
    widget.training.resume_button.click()
    _wait(qtbot, widget)
    assert widget.tasks.last_outcome == "done", errors
    assert load_checkpoint(out / LAST).epoch == 3
    assert sorted(widget.session.models) == ["run", "run (2)"]


def test_training_on_the_open_image_and_its_labels(make_napari_viewer, qtbot, tiny_dataset, tmp_path, errors):
    dataset = load_dataset(tiny_dataset)
    case = dataset.load_case(dataset.entries("train")[0])
    widget = _widget(make_napari_viewer)
    viewer = widget.viewer
    image = viewer.add_image(case.image.array, name="ct", **layer_geometry(case.image))
    empty = viewer.add_labels(np.zeros(case.image.shape, np.uint8), name="empty", **layer_geometry(case.image))
    labels = viewer.add_labels(case.mask.array.astype(np.uint8), name="nodules", **layer_geometry(case.image))
    widget.training.source_combo.setCurrentIndex(widget.training.source_combo.findData("layers"))
    widget.training.image_combo.select(image)
    _tiny_settings(widget, tmp_path / "from_layers", epochs=1)

    # an empty mask: a clear error, nothing trained, no run folder written
    widget.training.labels_combo.select(empty)
    widget.training.train_button.click()
    _wait(qtbot, widget)
    assert widget.tasks.last_outcome == "failed"
    assert len(errors) == 1 and "no labelled voxel" in errors[0]
    assert not (tmp_path / "from_layers" / LAST).exists() and widget.session.models == {}

    widget.training.labels_combo.select(labels)
    labels.data = labels.data  # the user keeps editing: the task works on its own copy
    widget.training.train_button.click()
    _wait(qtbot, widget)
    assert widget.tasks.last_outcome == "done", errors
    [model] = widget.session.models.values()
    data = model.checkpoint.raw["data"]
    assert data["train"]["n_positive"] > 0 and data["train"]["n_negative"] > 0
    assert data["train"]["image_size"] == [64, 64]
    assert len(widget.training.loss_values) > 0


def test_cancel_stops_training_early_and_keeps_last_pt(make_napari_viewer, qtbot, tiny_dataset, tmp_path, errors):
    widget = _widget(make_napari_viewer)
    out = tmp_path / "long_run"
    widget.training.dataset_edit.setText(str(tiny_dataset))
    _tiny_settings(widget, out, epochs=100)
    widget.training.train_button.click()
    qtbot.waitUntil(lambda: len(widget.training.loss_values) > 0, timeout=WAIT_MS)
    widget.tasks.cancel_button.click()
    _wait(qtbot, widget)

    assert errors == [] and widget.tasks.last_outcome == "cancelled"
    result = widget.training.last_run.result
    assert result.cancelled and result.epochs_completed < 100
    assert (out / LAST).is_file() and load_checkpoint(out / LAST).global_step == result.global_step
    assert "cancelled" in widget.training.run_label.text() and LAST in widget.training.run_label.text()
    assert widget.session.models == {} and widget.training.resume_button.isEnabled()


def test_loading_a_checkpoint_lists_it_with_its_description(make_napari_viewer, qtbot, trained_run, errors):
    widget = _widget(make_napari_viewer)
    widget.device.device_combo.setCurrentIndex(widget.device.device_combo.findData("cpu"))
    widget.models.checkpoint_edit.setText(str(trained_run))  # a run folder means its best.pt
    widget.models.load_button.click()
    _wait(qtbot, widget)
    assert errors == [] and widget.tasks.last_outcome == "done"
    [model] = widget.session.models.values()
    assert model.name == "run/best.pt" and model.path == trained_run / BEST
    row = [widget.models.models_table.item(0, c).text() for c in range(widget.models.models_table.columnCount())]
    assert row[:4] == ["run/best.pt", "nam-multigap", "1 (narrow)", "1"] and row[5] == "cpu"
    assert row[4].endswith("(epoch 1)")
    with torch.no_grad():
        assert model.model(torch.zeros(1, 1, 64, 64)).shape == (1, 2)


def test_missing_wrong_kind_and_unreadable_checkpoints_are_refused(make_napari_viewer, qtbot, tmp_path, errors):
    widget = _widget(make_napari_viewer)
    widget.models.checkpoint_edit.setText(str(tmp_path / "nowhere.pt"))
    widget.models.load_button.click()
    assert not widget.tasks.busy and "no such file" in errors[-1]

    other = save_checkpoint(tmp_path / "other.pt", {"kind": "flow-guidance", "model_state": {}})
    widget.models.checkpoint_edit.setText(str(other))
    widget.models.load_button.click()
    _wait(qtbot, widget)
    assert widget.tasks.last_outcome == "failed" and "holds a 'flow-guidance' model" in errors[-1]

    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    widget.models.checkpoint_edit.setText(str(junk))
    widget.models.load_button.click()
    _wait(qtbot, widget)
    assert widget.tasks.last_outcome == "failed" and "cannot read it" in errors[-1]
    assert len(errors) == 3 and widget.session.models == {} and widget.models.models_table.rowCount() == 0


def test_saving_copies_the_checkpoint_and_never_overwrites(make_napari_viewer, qtbot, trained_run, tmp_path, errors):
    widget = _widget(make_napari_viewer)
    widget.models.checkpoint_edit.setText(str(trained_run / LAST))
    widget.models.load_button.click()
    _wait(qtbot, widget)
    target = tmp_path / "saved" / "my_model.pt"
    widget.models.save_edit.setText(str(target))
    widget.models.save_button.click()
    _wait(qtbot, widget)
    assert errors == [] and widget.models.last_saved == target
    assert target.read_bytes() == (trained_run / LAST).read_bytes()

    target.write_bytes(b"the user's own file")
    widget.models.save_button.click()
    assert not widget.tasks.busy
    assert len(errors) == 1 and "already exists" in errors[0]
    assert target.read_bytes() == b"the user's own file"


def test_a_folder_without_dataset_json_is_refused(make_napari_viewer, tmp_path, errors):
    widget = _widget(make_napari_viewer)
    widget.training.dataset_edit.setText(str(tmp_path))
    _tiny_settings(widget, tmp_path / "run")
    widget.training.train_button.click()
    assert not widget.tasks.busy and len(errors) == 1 and "dataset.json" in errors[0]
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the fall-back text on a machine without CUDA")
def test_asking_for_cuda_without_it_shows_the_fallback(make_napari_viewer):
    widget = _widget(make_napari_viewer)
    widget.device.device_combo.setCurrentIndex(widget.device.device_combo.findData("cuda"))
    text = widget.device.device_label.text()
    assert "cpu" in text and "CUDA not available" in text and "using the CPU" in text
    assert widget.device.choice().device == torch.device("cpu")
    widget.device.device_combo.setCurrentIndex(widget.device.device_combo.findData("cpu"))
    assert "not available" not in widget.device.device_label.text()


def test_loss_plot_maps_the_losses_into_its_box(qtbot):
    from napari_wsnodule.widgets._loss_plot import MARGIN, MAX_POINTS, LossPlot

    plot = LossPlot()
    qtbot.addWidget(plot)
    assert plot.points(200, 100) == []
    plot.set_values([2.0, 1.0, float("nan"), 0.5])
    points = plot.points(200, 100)
    assert len(points) == 3  # the nan is left out
    xs, ys = zip(*points)
    assert xs[0] == MARGIN[0] and xs[-1] == MARGIN[0] + 200
    assert ys[0] < ys[1] < ys[2] <= MARGIN[1] + 100  # lower loss, lower on the screen (larger y)
    assert ys[0] >= MARGIN[1]
    plot.set_values(np.linspace(3, 1, 5 * MAX_POINTS))
    assert len(plot.points(200, 100)) == MAX_POINTS
    plot.show()
    plot.grab()  # paints without error
