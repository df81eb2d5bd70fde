"""The Load CT widget: files, DICOM folders (several series: a choice), LIDC scans without the images,
window presets, and bad input shown as notifications."""

from __future__ import annotations

import time

import numpy as np
import pytest

from wsnodule_core.data.lidc.layers import lidc_reader_layers
from wsnodule_core.errors import InputPathNotFoundError
from wsnodule_core.io import Volume, VolumeMetadata, write_volume
from wsnodule_core.io.synthetic_dicom import write_synthetic_series
from napari_wsnodule._geometry import VOLUME_KEY
from napari_wsnodule._layers import result_name, show_overlay
from wsnodule_core.image.window import LUNG_VIEW_WINDOW, MEDIASTINAL_VIEW_WINDOW
from napari_wsnodule.widgets.load import LIDC_PER_READER, NO_IMAGES_NOTICE, LoadWidget

pytestmark = pytest.mark.gui
WAIT_MS = 30_000


@pytest.fixture
def notes(monkeypatch):
    """Every notification the widget or its tasks show: ``{"error": [...], "info": [...]}``."""
    shown: dict[str, list[str]] = {"error": [], "info": []}
    for module in ("napari_wsnodule.widgets.load", "napari_wsnodule._tasks"):
        monkeypatch.setattr(f"{module}.show_error", shown["error"].append)
        monkeypatch.setattr(f"{module}.show_info", shown["info"].append)
    return shown


def _widget(make_napari_viewer) -> LoadWidget:
    viewer = make_napari_viewer()
    widget = LoadWidget(viewer)
    viewer.window.add_dock_widget(widget)
    return widget


def _wait(qtbot, widget: LoadWidget) -> None:
    qtbot.waitUntil(lambda: not widget.tasks.busy, timeout=WAIT_MS)


def _open(qtbot, widget: LoadWidget, path) -> None:
    widget.path_edit.setText(str(path))
    widget.open_button.click()
    _wait(qtbot, widget)


def _series(folder, value: int, **kwargs) -> np.ndarray:
    array = (np.arange(4 * 12 * 10).reshape(4, 12, 10) % 50 + value).astype(np.int16)
    write_synthetic_series(folder, array, (2.5, 0.7, 0.8), (-10.0, 20.0, 30.0), **kwargs)
    return array


def test_opens_a_file_with_its_geometry_and_sets_windows(make_napari_viewer, qtbot, tmp_path, notes):
    widget = _widget(make_napari_viewer)
    ct = Volume((np.arange(5 * 8 * 9).reshape(5, 8, 9) - 900).astype(np.int16), (3.0, 0.8, 0.7),
                (-100.0, 50.0, 200.0), metadata=VolumeMetadata(modality="CT"))
    write_volume(ct, tmp_path / "chest.nii.gz")
    _open(qtbot, widget, tmp_path / "chest.nii.gz")
    assert widget.tasks.last_outcome == "done" and not notes["error"]
    [layer] = widget.viewer.layers
    assert layer.name == "chest"
    np.testing.assert_array_equal(layer.data, ct.array)
    np.testing.assert_allclose(layer.scale, ct.spacing)
    np.testing.assert_allclose(layer.translate, ct.origin[::-1])
    assert layer.metadata[VOLUME_KEY].same_geometry(ct)
    assert tuple(layer.contrast_limits) == (-1350.0, 150.0)  # lung window on opening
    assert widget.window_layer.layer() is layer
    assert widget.lung_button.text() == "Lung (W1500 / L-600)"
    assert widget.mediastinal_button.text() == "Mediastinal (W400 / L40)"
    widget.mediastinal_button.click()
    assert tuple(layer.contrast_limits) == (-160.0, 240.0)
    widget.lung_button.click()
    assert tuple(layer.contrast_limits) == (-1350.0, 150.0)


def test_opens_a_dicom_folder(make_napari_viewer, qtbot, tmp_path, notes):
    widget = _widget(make_napari_viewer)
    array = _series(tmp_path / "ct-folder", -1000)
    _open(qtbot, widget, tmp_path / "ct-folder")
    [layer] = widget.viewer.layers
    assert layer.name == "WSNODULE-SYNTH · synthetic · 2000-01-01" and not widget.series_row.isVisible()
    assert tuple(layer.contrast_limits) == (-1350.0, 150.0)
    np.testing.assert_array_equal(layer.data, array)
    np.testing.assert_allclose(layer.translate, (30.0, 20.0, -10.0))
    assert len(layer.metadata[VOLUME_KEY].metadata.dicom_files) == 4


def test_a_dicom_series_gets_a_readable_unique_name_and_its_results_the_short_one(make_napari_viewer, qtbot,
                                                                                    tmp_path, notes):
    widget = _widget(make_napari_viewer)
    study, series = "1.3.6.1.4.1.14519.5.2.1.6279.6001.2988", "1.3.6.1.4.1.14519.5.2.1.6279.6001.1790"
    folder = tmp_path / "LIDC-IDRI-0001" / study / series  # LIDC-IDRI's layout: UID folders
    _series(folder, -1000, patient_id="LIDC-IDRI-0001", series_description="Chest CT", series_uid=series,
            study_uid=study)
    _open(qtbot, widget, folder)
    _open(qtbot, widget, folder / "slice_0002.dcm")  # the same series again, through one of its files
    first, second = widget.viewer.layers
    assert first.name == "LIDC-IDRI-0001 · Chest CT · 2000-01-01" and series not in first.name
    assert second.name != first.name and second.name.startswith(first.name)  # unique in the viewer
    assert result_name(first, "NAM mask") == result_name(second, "NAM mask") == "LIDC-IDRI-0001 · NAM mask"
    first.name = "left lung follow-up"  # a name the user chose leads its results instead
    assert result_name(first, "NAM mask") == "left lung follow-up · NAM mask"
    anonymous = tmp_path / "scan-42"
    _series(anonymous, -1000, patient_id="", series_description="")
    _open(qtbot, widget, anonymous)
    assert widget.viewer.layers[-1].name == "scan-42 · 2000-01-01" and not notes["error"]


def test_window_buttons_act_on_the_selected_ct_not_on_maps(make_napari_viewer, qtbot, tmp_path, notes):
    widget = _widget(make_napari_viewer)
    viewer = widget.viewer
    for name in ("a", "b"):
        write_volume(Volume(np.full((3, 4, 5), -700, np.int16), metadata=VolumeMetadata(modality="CT")),
                     tmp_path / f"{name}.nii.gz")
        _open(qtbot, widget, tmp_path / f"{name}.nii.gz")
    a, b = viewer.layers
    assert tuple(a.contrast_limits) == tuple(b.contrast_limits) == LUNG_VIEW_WINDOW  # each opens in the lung window
    viewer.layers.selection.active = a
    assert widget.window_layer.layer() is a
    widget.mediastinal_button.click()
    assert tuple(a.contrast_limits) == MEDIASTINAL_VIEW_WINDOW and tuple(b.contrast_limits) == LUNG_VIEW_WINDOW
    ct = a.metadata[VOLUME_KEY]
    heat = show_overlay(viewer, ct.with_array(np.ones(ct.shape, np.float32)), "heat", source=a,
                        generated="test:map", colormap="inferno")
    viewer.layers.selection.active = heat  # a map is selected: the buttons stay on the CT
    assert widget.window_layer.layer() is a
    widget.lung_button.click()
    assert tuple(a.contrast_limits) == LUNG_VIEW_WINDOW and tuple(heat.contrast_limits) != LUNG_VIEW_WINDOW


def test_a_folder_of_several_series_lets_the_user_choose(make_napari_viewer, qtbot, tmp_path, notes):
    widget = _widget(make_napari_viewer)
    folder = tmp_path / "study"
    _series(folder, -1000, file_prefix="a", series_description="lung kernel")
    soft = _series(folder, 0, file_prefix="b", series_description="soft kernel")
    _open(qtbot, widget, folder)
    assert len(widget.viewer.layers) == 0 and not notes["error"]
    assert widget.series_row.isVisibleTo(widget) and widget.series_combo.count() == 2
    assert "pick one" in notes["info"][-1]
    labels = [widget.series_combo.itemText(i) for i in range(2)]
    widget.series_combo.setCurrentIndex(labels.index(next(t for t in labels if t.startswith("soft kernel"))))
    widget.open_series_button.click()
    _wait(qtbot, widget)
    [layer] = widget.viewer.layers
    np.testing.assert_array_equal(layer.data, soft)
    assert layer.name == "WSNODULE-SYNTH · soft kernel · 2000-01-01" and not widget.series_row.isVisibleTo(widget)


def test_bad_paths_give_notifications_not_crashes(make_napari_viewer, qtbot, tmp_path, notes):
    widget = _widget(make_napari_viewer)
    widget.open_button.click()  # nothing typed
    assert not widget.tasks.busy and "Type the path" in notes["error"][-1]
    _open(qtbot, widget, tmp_path / "missing.nii.gz")
    assert widget.tasks.last_outcome == "failed"
    assert isinstance(widget.tasks.last_error, InputPathNotFoundError)
    assert "no such file" in notes["error"][-1]
    (tmp_path / "notes.txt").write_text("not a CT")
    _open(qtbot, widget, tmp_path / "notes.txt")
    assert widget.tasks.last_outcome == "failed" and "not a volume format" in notes["error"][-1]
    widget.lidc_edit.setText("LIDC-IDRI-9999")
    widget.lidc_button.click()
    _wait(qtbot, widget)
    assert widget.tasks.last_outcome == "failed"
    assert "neither a series UID nor a patient id" in notes["error"][-1]
    widget.lung_button.click()  # no image open
    assert "Open a CT first" in notes["error"][-1]
    assert len(widget.viewer.layers) == 0


def test_cancel_stops_a_read_and_adds_nothing(make_napari_viewer, qtbot, tmp_path, notes, monkeypatch):
    def slow_read(path, series_uid=None, progress=None):
        for i in range(1, 1001):  # 10 s unless cancelled
            time.sleep(0.01)
            progress(i / 1000)
        raise AssertionError("the read was not cancelled")

    monkeypatch.setattr("napari_wsnodule.widgets.load.read_volume", slow_read)
    widget = _widget(make_napari_viewer)
    widget.path_edit.setText(str(tmp_path))
    widget.open_button.click()
    qtbot.waitUntil(lambda: widget.tasks.bar.maximum() == 100, timeout=WAIT_MS)  # progress is showing
    widget.tasks.cancel_button.click()
    _wait(qtbot, widget)
    assert widget.tasks.last_outcome == "cancelled" and not notes["error"]
    assert len(widget.viewer.layers) == 0


@pytest.fixture
def no_lidc_images(tmp_path, monkeypatch):
    """A home folder without ~/.pylidcrc: the LIDC images are not configured."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    return home


def test_lidc_scan_without_images_shows_reader_masks(make_napari_viewer, qtbot, notes, no_lidc_images):
    widget = _widget(make_napari_viewer)
    widget.lidc_edit.setText("LIDC-IDRI-0078")
    widget.lidc_button.click()
    _wait(qtbot, widget)
    assert widget.tasks.last_outcome == "done", notes["error"]
    expected = lidc_reader_layers("LIDC-IDRI-0078", use_images=False)
    layers = list(widget.viewer.layers)
    assert [layer.name for layer in layers] == [
        "LIDC-IDRI-0078 · nodule 1 (4 readers, 23.9 mm)", "LIDC-IDRI-0078 · nodule 2 (4 readers, 20.7 mm)",
        "LIDC-IDRI-0078 · nodule 3 (1 reader, 5.1 mm)", "LIDC-IDRI-0078 · nodule 4 (4 readers, 27.7 mm)"]
    for layer, nodule in zip(layers, expected.nodules):
        np.testing.assert_array_equal(layer.data, nodule.agreement.array)
        assert layer.data.max() == nodule.n_readers  # the value is how many readers marked the voxel
        # placed in world mm on the scan's grid
        np.testing.assert_allclose(layer.data_to_world((0, 0, 0)), nodule.agreement.origin[::-1])
        np.testing.assert_allclose(layer.scale, (3.0, 0.65, 0.65))
    assert widget.lidc_notice.isVisibleTo(widget) and widget.lidc_notice.text() == NO_IMAGES_NOTICE
    assert NO_IMAGES_NOTICE in notes["info"]

    widget.lidc_mode.setCurrentIndex(widget.lidc_mode.findData(LIDC_PER_READER))
    widget.load_lidc()
    _wait(qtbot, widget)
    readers = list(widget.viewer.layers)[4:]
    assert len(readers) == sum(n.n_readers for n in expected.nodules) == 13
    assert readers[0].name == "LIDC-IDRI-0078 · nodule 1 reader 1"
    np.testing.assert_array_equal(readers[1].data, 2 * expected.nodules[0].readers[1].array)


def test_lidc_scan_with_images_shows_the_ct_and_masks_on_it(make_napari_viewer, qtbot, notes, no_lidc_images,
                                                            tmp_path):
    from wsnodule_core.data.lidc import get_scan, reader_masks, scan_grid

    scan = get_scan("LIDC-IDRI-0957")  # 65 slices: a small synthetic stand-in for its DICOM series
    grid = scan_grid(scan)
    union = np.zeros(grid.shape, dtype=bool)
    for mask in reader_masks(list(scan.annotations)):
        union |= mask.in_grid(grid.shape)
    root = tmp_path / "LIDC-IDRI"
    write_synthetic_series(root / scan.patient_id / "study" / "series",
                           np.where(union, 100, -800).astype(np.int16), grid.spacing, (-180.0, -170.0, float(grid.slice_zvals[0])),
                           slice_positions=grid.slice_zvals, series_uid=scan.series_instance_uid,
                           study_uid=scan.study_instance_uid, patient_id=scan.patient_id)
    (no_lidc_images / ".pylidcrc").write_text(f"[dicom]\npath = {root}\n")

    widget = _widget(make_napari_viewer)
    widget.load_lidc("LIDC-IDRI-0957")
    _wait(qtbot, widget)
    assert widget.tasks.last_outcome == "done", notes["error"]
    ct_layer, all_nodules, *crops = widget.viewer.layers
    ct = ct_layer.metadata[VOLUME_KEY]
    assert ct_layer.name == "LIDC-IDRI-0957 · synthetic · 2000-01-01" and ct.shape == grid.shape
    assert tuple(ct_layer.contrast_limits) == (-1350.0, 150.0)
    assert all_nodules.name == "LIDC-IDRI-0957 · nodules (any reader)"
    np.testing.assert_array_equal(all_nodules.data > 0, ct.array == 100)
    assert len(crops) >= 1
    for crop in crops:
        # each crop's marked voxels sit on the CT's nodule voxels, in world mm
        marked = np.argwhere(crop.data > 0)
        assert len(marked)
        world = np.array([crop.data_to_world(tuple(v)) for v in marked[:50]])
        index = np.rint([ct_layer.world_to_data(tuple(w)) for w in world]).astype(int)
        assert (ct.array[tuple(index.T)] == 100).all()
        assert crop.metadata["wsnodule_source"] is ct_layer
    assert not widget.lidc_notice.isVisibleTo(widget)
