"""The "Nodules and export" widget: the nodule table (values, clicks, live updates after edits),
export of the merged label map and its table with the CT's geometry and no overwrite, DICOM-SEG,
autosave and recovery, and saving cases as training data."""

from __future__ import annotations

import math

import numpy as np
import pytest

from napari_wsnodule._layers import add_volume_layer
from napari_wsnodule.widgets._view import camera_of
from napari_wsnodule.widgets.edit_export import EditExportWidget
from wsnodule_core.data.annotation_export import read_table, table_path
from wsnodule_core.data.cases import make_phantom_case
from wsnodule_core.data.recovery import find_recovery, read_recovery
from wsnodule_core.data.dataset import load_dataset
from wsnodule_core.io import read_volume
from wsnodule_core.io.synthetic_dicom import write_synthetic_series
from wsnodule_core.io.volume import Volume
from wsnodule_core.data.slices import SliceConfig, slices_from_dataset

pytestmark = pytest.mark.gui
WAIT_MS = 30_000
SPACING = (2.0, 0.8, 0.7)
ORIGIN = (-40.0, 25.0, 100.0)  # x, y, z


def sphere(shape, centre_zyx, radius_mm):
    z, y, x = np.meshgrid(*(np.arange(n) * s for n, s in zip(shape, SPACING)), indexing="ij")
    c = np.asarray(centre_zyx) * SPACING
    return (z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2 <= radius_mm**2


@pytest.fixture(autouse=True)
def cache(monkeypatch, tmp_path):
    """Recovery files go to the test's own cache folder."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("WSNODULE_CACHE", str(folder))
    return folder


@pytest.fixture
def errors(monkeypatch):
    shown: list[str] = []
    for where in ("napari_wsnodule.widgets.edit_export.show_error", "napari_wsnodule._tasks.show_error"):
        monkeypatch.setattr(where, shown.append)
    for where in ("napari_wsnodule.widgets.edit_export.show_info", "napari_wsnodule.widgets._recovery.show_info"):
        monkeypatch.setattr(where, lambda text: None)
    return shown


def _setup(make_napari_viewer, ct: Volume, mask: np.ndarray):
    viewer = make_napari_viewer()
    image = add_volume_layer(viewer, ct, "image", "ct")
    labels = add_volume_layer(viewer, ct.with_array(mask.astype(np.int32)), "labels", "nodules", source=image)
    widget = EditExportWidget(viewer)
    viewer.window.add_dock_widget(widget)
    return viewer, widget, image, labels


def _ct(shape=(20, 64, 72)) -> Volume:
    rng = np.random.default_rng(0)
    return Volume(rng.normal(-800, 30, shape).astype(np.int16), SPACING, ORIGIN)


def _wait_table(qtbot, widget):
    qtbot.waitUntil(lambda: not widget.measuring, timeout=WAIT_MS)


def _rows(widget):
    table = widget.nodule_table
    return [[table.item(r, c).text() for c in range(table.columnCount())] for r in range(table.rowCount())]


def test_table_measures_a_sphere_and_follows_edits(make_napari_viewer, qtbot, errors):
    radius = 7.0
    mask = sphere((20, 64, 72), (10, 32, 40), radius)
    viewer, widget, image, labels = _setup(make_napari_viewer, _ct(), mask)
    assert widget.labels_combo.layer() is labels and widget.image_combo.layer() is image
    _wait_table(qtbot, widget)
    [row] = _rows(widget)
    longest, eq_diameter, volume = (float(v) for v in row[2:5])
    assert volume == pytest.approx(4 / 3 * math.pi * radius**3, rel=0.03)
    assert volume == pytest.approx(round(mask.sum() * np.prod(SPACING), 1), abs=0.051)
    assert eq_diameter == pytest.approx(2 * radius, rel=0.02)
    assert 2 * radius - math.hypot(*SPACING[1:]) - 0.05 <= longest <= 2 * radius + 0.05
    assert row[1] == "7–13" and row[5] == "1"  # |z - 20 mm| <= 7 mm at 2 mm slices
    assert "1 nodule" in widget.count_label.text()

    # painting a second nodule (one napari edit) adds a row once the edits pause
    zz, yy, xx = np.nonzero(sphere((20, 64, 72), (3, 10, 12), 3.0))
    labels.data_setitem((zz, yy, xx), 2)
    assert widget.measuring
    _wait_table(qtbot, widget)
    rows = _rows(widget)
    assert [r[1] for r in rows] == ["2–4", "7–13"] and rows[0][5] == "2"
    # two touching label values are one component, or two nodules by label value
    edge = int(np.flatnonzero(mask[10, 32]).max())
    labels.data_setitem((np.array([10, 10]), np.array([32, 32]), np.array([edge + 1, edge + 2])), 3)
    _wait_table(qtbot, widget)
    assert len(_rows(widget)) == 2 and _rows(widget)[1][5] == "1, 3"
    widget.grouping_combo.setCurrentIndex(widget.grouping_combo.findData("labels"))
    _wait_table(qtbot, widget)
    assert [r[5] for r in _rows(widget)] == ["2", "1", "3"]
    # erasing the painted nodule removes its row
    widget.grouping_combo.setCurrentIndex(widget.grouping_combo.findData("components"))
    labels.data_setitem((zz, yy, xx), 0)
    _wait_table(qtbot, widget)
    assert len(_rows(widget)) == 1
    assert errors == []


def test_clicking_a_row_moves_the_viewer_to_the_nodule(make_napari_viewer, qtbot):
    mask = sphere((20, 64, 72), (4, 16, 20), 4.0).astype(np.int32)
    mask[sphere((20, 64, 72), (15, 48, 50), 4.0)] = 1
    viewer, widget, image, labels = _setup(make_napari_viewer, _ct(), mask)
    _wait_table(qtbot, widget)
    assert [r[1] for r in _rows(widget)] == ["2–6", "13–17"]
    for row, (z, y, x) in ((1, (15, 48, 50)), (0, (4, 16, 20))):
        widget.nodule_table.selectRow(row)
        assert viewer.dims.current_step[0] == z
        assert round(image.world_to_data(viewer.dims.point)[0]) == z
        np.testing.assert_allclose(camera_of(viewer).center[-2:], image.data_to_world((z, y, x))[1:], atol=0.1)


def test_export_keeps_the_geometry_and_never_overwrites(make_napari_viewer, qtbot, tmp_path, errors):
    ct = _ct((12, 40, 44))
    mask = sphere(ct.shape, (6, 20, 22), 5.0).astype(np.int32) * 2
    viewer, widget, image, labels = _setup(make_napari_viewer, ct, mask)
    for name in ("mask.nii.gz", "other.nrrd"):
        widget.export_path_edit.setText(str(tmp_path / name))
        widget.export_button.click()
        qtbot.waitUntil(lambda: not widget.tasks.busy, timeout=WAIT_MS)
        assert widget.tasks.last_outcome == "done", errors
        written = read_volume(tmp_path / name)
        assert written.same_geometry(ct) and written.origin == pytest.approx(ORIGIN)
        np.testing.assert_array_equal(written.array, mask // 2)  # one nodule: id 1
        assert widget.last_table == tmp_path / f"{name.split('.')[0]}.csv" and widget.last_table.exists()
    # the table of one export is in the way of another format of the same name
    widget.export_path_edit.setText(str(tmp_path / "mask.mha"))
    widget.export_button.click()
    assert "mask.csv already exists" in errors[-1] and not (tmp_path / "mask.mha").exists()
    before = (tmp_path / "mask.nii.gz").read_bytes()
    labels.data[:] = 0  # the user erases everything, then exports to the same file again
    widget.export_path_edit.setText(str(tmp_path / "mask.nii.gz"))
    widget.export_button.click()
    assert not widget.tasks.busy and "never overwrites" in errors[-1]
    assert (tmp_path / "mask.nii.gz").read_bytes() == before
    # a DICOM-SEG needs a CT read from DICOM
    widget.export_path_edit.setText(str(tmp_path / "seg.dcm"))
    widget.export_button.click()
    qtbot.waitUntil(lambda: not widget.tasks.busy, timeout=WAIT_MS)
    assert widget.tasks.last_outcome == "failed" and "not from a DICOM series" in errors[-1]
    assert not (tmp_path / "seg.dcm").exists()
    widget.export_path_edit.setText(str(tmp_path / "mask.png"))
    widget.export_button.click()
    assert "unknown mask format" in errors[-1]
    # a labels layer that is not on the CT's grid is refused
    moved = viewer.add_labels(mask, name="moved", scale=(1.0, 1.0, 1.0))
    widget.labels_combo.select(moved)
    widget.image_combo.select(image)
    widget.export_path_edit.setText(str(tmp_path / "moved.nii.gz"))
    widget.export_button.click()
    assert "does not lie on the grid" in errors[-1] and not (tmp_path / "moved.nii.gz").exists()


def test_dicom_seg_export_references_the_series(make_napari_viewer, qtbot, tmp_path, errors):
    import pydicom

    hu = np.random.default_rng(1).normal(-800, 30, (6, 32, 32)).round()
    series = tmp_path / "series"
    write_synthetic_series(series, hu, spacing=(2.5, 0.9, 0.9), origin=(-20.0, -30.0, 40.0))
    ct = read_volume(series)
    mask = np.zeros(ct.shape, np.int32)
    mask[2:4, 10:15, 12:18] = 1
    viewer, widget, image, labels = _setup(make_napari_viewer, ct, mask)
    widget.export_path_edit.setText(str(tmp_path / "seg.dcm"))
    widget.export_button.click()
    qtbot.waitUntil(lambda: not widget.tasks.busy, timeout=WAIT_MS)
    assert widget.tasks.last_outcome == "done", errors
    seg = pydicom.dcmread(tmp_path / "seg.dcm")
    assert seg.Modality == "SEG"
    instances = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence
    referenced = {item.ReferencedSOPInstanceUID for item in instances}
    sources = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in ct.metadata.dicom_files}
    assert referenced == sources


def test_save_as_training_data_twice_gives_two_cases(make_napari_viewer, qtbot, tmp_path, errors):
    case = make_phantom_case("p", seed=3, shape=(16, 64, 64), spacing=(5.0, 5.0, 5.0))
    lungs = np.argwhere(case.lungs)
    mask = np.zeros(case.image.shape, np.int32)
    z, y, x = lungs[len(lungs) // 2]
    mask[z : z + 2, y - 1 : y + 2, x - 1 : x + 2] = 1
    viewer, widget, image, labels = _setup(make_napari_viewer, case.image, mask)
    folder = tmp_path / "my cases"
    widget.training_folder_edit.setText(str(folder))
    for split in ("train", "val"):
        widget.split_combo.setCurrentIndex(widget.split_combo.findData(split))
        widget.save_training_button.click()
        qtbot.waitUntil(lambda: not widget.tasks.busy, timeout=WAIT_MS)
        assert widget.tasks.last_outcome == "done", errors
    assert widget.last_saved.case_id == "user_002" and widget.last_saved.n_cases == 2
    dataset = load_dataset(folder)
    entries = [(e["case_id"], e["split"]) for e in dataset.entries()]
    assert entries == [("user_001", "train"), ("user_002", "val")]
    loaded = dataset.load_case(dataset.entries()[0])
    assert loaded.image.same_geometry(case.image)
    np.testing.assert_array_equal(loaded.mask.array > 0, mask > 0)
    slices = slices_from_dataset(folder, "val", SliceConfig(size=64))
    assert set(slices.slice_index[slices.labels == 1].tolist()) == {int(z), int(z) + 1}
    # a taken case id is refused with the reason
    widget.case_id_edit.setText("user_001")
    widget.save_training_button.click()
    qtbot.waitUntil(lambda: not widget.tasks.busy, timeout=WAIT_MS)
    assert widget.tasks.last_outcome == "failed" and "already holds a case 'user_001'" in errors[-1]
    assert len(load_dataset(folder)) == 2


FLIPPED = np.array([[-1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, 1.0]])  # LPS -> RAS-like: layers get an affine


def _model_layer(viewer, ct: Volume, image, model: np.ndarray, generated="nam:fine"):
    return add_volume_layer(viewer, ct.with_array(model.astype(np.uint8)), "labels", "ct: nodules (fine)",
                            source=image, generated=generated)


def _export(qtbot, widget, path, errors):
    widget.export_path_edit.setText(str(path))
    widget.export_button.click()
    qtbot.waitUntil(lambda: not widget.tasks.busy, timeout=WAIT_MS)
    assert widget.tasks.last_outcome == "done", errors
    return read_volume(path), read_table(table_path(path))


def test_export_table_records_the_method_and_which_nodules_were_edited(make_napari_viewer, qtbot, tmp_path,
                                                                       errors, cache):
    shape = (16, 48, 52)
    ct = Volume(np.random.default_rng(2).normal(-800, 30, shape).astype(np.int16), SPACING, ORIGIN, FLIPPED)
    model = sphere(shape, (4, 12, 14), 3.0) | sphere(shape, (10, 30, 34), 4.0)
    viewer = make_napari_viewer()
    image = add_volume_layer(viewer, ct, "image", "ct")
    labels = _model_layer(viewer, ct, image, model)
    widget = EditExportWidget(viewer)
    viewer.window.add_dock_widget(widget)
    assert widget.labels_combo.layer() is labels and widget.image_combo.layer() is image
    # the annotator grows the second nodule by a few voxels (one napari edit)
    zz, yy, xx = np.nonzero(sphere(shape, (10, 30, 34), 5.0) & ~model)
    labels.data_setitem((zz, yy, xx), 1)
    assert widget.recovery.saving
    qtbot.waitUntil(lambda: not widget.recovery.saving, timeout=WAIT_MS)
    saved = find_recovery(ct)
    assert saved is not None and saved.path.parent == cache / "recovery" and saved.source_method == "nam:fine"
    np.testing.assert_array_equal(read_recovery(saved, ct).array, np.asarray(labels.data))

    # a failed export (a DICOM-SEG of a CT not read from DICOM) keeps the recovery file
    widget.export_path_edit.setText(str(tmp_path / "seg.dcm"))
    widget.export_button.click()
    qtbot.waitUntil(lambda: not widget.tasks.busy, timeout=WAIT_MS)
    assert widget.tasks.last_outcome == "failed" and find_recovery(ct) is not None
    errors.clear()
    # exporting another layer of the CT keeps the recovery of this one's edits
    other = add_volume_layer(viewer, ct.with_array(model.astype(np.int32)), "labels", "other", source=image)
    widget.labels_combo.select(other)
    _export(qtbot, widget, tmp_path / "other.nii.gz", errors)
    assert find_recovery(ct) is not None
    widget.labels_combo.select(labels)
    written, rows = _export(qtbot, widget, tmp_path / "annotation.nii.gz", errors)
    assert written.same_geometry(ct) and np.allclose(written.direction, FLIPPED)
    assert [(r["id"], r["source_method"], r["edited"]) for r in rows] == [("1", "nam:fine", "no"),
                                                                          ("2", "nam:fine", "yes")]
    np.testing.assert_array_equal(written.array > 0, np.asarray(labels.data) > 0)
    for row in rows:
        voxels = np.argwhere(written.array == int(row["id"]))
        centre = [float(row[f"centre_{a}_mm"]) for a in "xyz"]
        # the centre is in patient mm through the flipped direction (x and y negated about the origin)
        np.testing.assert_allclose(centre, ct.index_to_world(voxels.mean(axis=0)), atol=0.006)
        assert centre[0] < ORIGIN[0] and centre[1] < ORIGIN[1]
        assert int(row["voxels"]) == len(voxels)
    # the export deleted the recovery file
    assert find_recovery(ct) is None and not any((cache / "recovery").iterdir())


def test_recovery_is_offered_on_reopening_and_restored(make_napari_viewer, qtbot, tmp_path, errors, cache):
    ct = _ct((12, 40, 44))
    mask = sphere(ct.shape, (6, 20, 22), 5.0).astype(np.int32)
    viewer, widget, _, labels = _setup(make_napari_viewer, ct, mask)
    assert widget.recovery.offered is None and not widget.recovery.restore_button.isVisibleTo(widget)
    zz, yy, xx = np.nonzero(sphere(ct.shape, (2, 8, 8), 2.0))
    labels.data_setitem((zz, yy, xx), 3)  # a nodule drawn by hand
    qtbot.waitUntil(lambda: not widget.recovery.saving, timeout=WAIT_MS)
    edited = np.asarray(labels.data).copy()
    assert find_recovery(ct) is not None
    # the session that wrote it does not offer it back, even for the CT opened a second time
    again = add_volume_layer(viewer, ct, "image", "ct again")
    widget.image_combo.select(again)
    assert widget.recovery.offered is None

    # "after a crash": a new window opens the same scan (read again: a new array, the same values)
    viewer2 = make_napari_viewer()
    add_volume_layer(viewer2, Volume(ct.array.copy(), ct.spacing, ct.origin), "image", "ct")
    widget2 = EditExportWidget(viewer2)
    viewer2.window.add_dock_widget(widget2)
    offered = widget2.recovery.offered
    assert offered is not None and offered.layer_name == "nodules" and offered.source_method == "manual"
    assert widget2.recovery.restore_button.isVisibleTo(widget2) and "Restore" in widget2.recovery.status_label.text()
    widget2.recovery.restore()
    qtbot.waitUntil(lambda: not widget2.tasks.busy, timeout=WAIT_MS)
    assert widget2.tasks.last_outcome == "done", errors
    [restored] = [layer for layer in viewer2.layers if layer.name == "nodules (recovered)"]
    np.testing.assert_array_equal(np.asarray(restored.data), edited)
    assert widget2.labels_combo.layer() is restored and widget2.recovery.offered is None
    written, rows = _export(qtbot, widget2, tmp_path / "restored.nrrd", errors)
    assert written.same_geometry(ct) and [r["edited"] for r in rows] == ["yes", "yes"]
    assert {r["source_method"] for r in rows} == {"manual"}
    assert find_recovery(ct) is None

    # another scan finds nothing; Discard deletes an offered recovery
    viewer3 = make_napari_viewer()
    add_volume_layer(viewer3, _ct((12, 40, 40)), "image", "other")
    assert EditExportWidget(viewer3).recovery.offered is None
    labels.data_setitem((zz, yy, xx), 0)
    qtbot.waitUntil(lambda: not widget.recovery.saving, timeout=WAIT_MS)
    viewer4 = make_napari_viewer()  # the panel is open before the CT is
    widget4 = EditExportWidget(viewer4)
    add_volume_layer(viewer4, _ct((12, 40, 40)), "image", "other")
    assert widget4.recovery.offered is None
    add_volume_layer(viewer4, ct, "image", "ct")
    assert widget4.recovery.offered is not None and widget4.recovery.offered_ct.name == "ct"
    widget4.recovery.discard()
    assert widget4.recovery.offered is None and find_recovery(ct) is None
