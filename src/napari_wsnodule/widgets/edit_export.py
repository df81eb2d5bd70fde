"""The "Nodules and export" widget: measure a (corrected) mask, jump to its nodules, export it.

The mask is a Labels layer that the user corrects with napari's own paint, fill and erase tools.
Its nodules (3D connected components, or one per label value) are measured again shortly after
every edit, off the main thread; a click on a row moves the viewer to that nodule. Export writes
one label map (one id per nodule, as the table numbers them) with the CT's geometry (NIfTI/NRRD/
MetaImage, or DICOM-SEG for a CT read from DICOM) and the nodule table as CSV beside it (centre in
world mm, sizes, the method that made the mask, edited or not), never over an existing file; a
flow-guidance patch mask is mapped onto its CT's grid first. While the mask is edited, a recovery
file is kept (``_recovery.RecoveryBox``) and offered back when the CT is opened again. "Save as
training data" appends the CT and mask to a data set folder that the Model widget and ``wsnodule
train`` read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import napari
import numpy as np
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (QCheckBox, QComboBox, QFileDialog, QFormLayout, QGroupBox, QLabel, QLineEdit,
                            QPushButton, QWidget)

from napari_wsnodule._geometry import volume_of_layer
from napari_wsnodule._layers import SOURCE_KEY
from napari_wsnodule._provenance import mark_edited, model_mask_of, source_method_of, was_edited
from napari_wsnodule._tasks import TaskReporter
from napari_wsnodule.widgets._base import WsnoduleWidget
from napari_wsnodule.widgets._recovery import RecoveryBox
from napari_wsnodule.widgets._view import jump_to, read_only_table, row_of, table_item
from wsnodule_core.data.annotation_export import (annotation_export, labels_on_grid, table_path,
                                                  write_annotation_export)
from wsnodule_core.data.dataset import SPLITS
from wsnodule_core.errors import GeometryMismatchError, WsnoduleError
from wsnodule_core.io.formats import FORMATS
from wsnodule_core.io.volume import Volume
from wsnodule_core.nodules import NoduleMeasurement, measure_nodules

TABLE_COLUMNS = ("#", "slices", "longest axial (mm)", "eq. diameter (mm)", "volume (mm³)", "labels")
GROUPINGS = (("3D connected components", "components"), ("label values", "labels"))
DICOM_SEG_SUFFIX = ".dcm"
REFRESH_DELAY_MS = 300   # after the last edit; painting strokes come in bursts
GEOMETRY_ATOL_MM = 1e-3  # labels and CT must lie on one grid this closely


class EditExportWidget(WsnoduleWidget):
    """Nodule table of a Labels layer, export with geometry, and save as training data."""

    def __init__(self, napari_viewer: napari.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(napari_viewer, parent)
        self.measurements: list[NoduleMeasurement] = []
        self.last_error_text: str | None = None
        self.last_export: Path | None = None
        self.last_table: Path | None = None
        self.last_saved: Any = None  # wsnodule_core.data.user_cases.SavedCase
        self._watched = None
        self._measure_worker = None
        self._measure_again = False
        self._generation = 0
        self._debounce = QTimer(self)
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(REFRESH_DELAY_MS)
        self._debounce.timeout.connect(self._measure)
        layout = self.layout()
        layout.addWidget(self._inputs_box())
        layout.addWidget(self._table_box(), 1)
        layout.addWidget(self._export_box())
        self.recovery = RecoveryBox(self.viewer, self._recovery_pair, self.tasks, self._select_restored)
        layout.addWidget(self.recovery)
        layout.addWidget(self._training_box())
        layout.addWidget(self.tasks)
        events = self.viewer.layers.events
        for event in (events.inserted, events.removed):
            event.connect(self._labels_layer_changed)
        self.image_combo.currentIndexChanged.connect(self._check_recovery)
        events.inserted.connect(self._check_recovery)
        self._labels_layer_changed()
        self._check_recovery()

    # --- layout -----------------------------------------------------------------------------

    def _inputs_box(self) -> QGroupBox:
        box = QGroupBox("Mask")
        form = QFormLayout(box)
        self.labels_combo = self.labels_picker()
        self.labels_combo.setToolTip("The nodule mask; correct it with napari's paint, fill and erase tools.")
        self.labels_combo.currentIndexChanged.connect(self._labels_layer_changed)
        self.image_combo = self.image_picker()
        self.image_combo.setToolTip("The CT the mask was drawn on: its geometry is written with the mask.")
        self.grouping_combo = QComboBox()
        for text, value in GROUPINGS:
            self.grouping_combo.addItem(text, value)
        self.grouping_combo.setToolTip("A nodule is a 3D connected group of labelled voxels, or every voxel "
                                       "of one label value.")
        self.grouping_combo.currentIndexChanged.connect(self.schedule_refresh)
        form.addRow("Labels", self.labels_combo)
        form.addRow("CT", self.image_combo)
        form.addRow("Nodules are", self.grouping_combo)
        return box

    def _table_box(self) -> QGroupBox:
        box = QGroupBox("Nodules (click one to go there)")
        form = QFormLayout(box)
        self.count_label = QLabel("")
        self.nodule_table = read_only_table(TABLE_COLUMNS)
        self.nodule_table.setMinimumHeight(120)
        self.nodule_table.itemSelectionChanged.connect(self._row_selected)
        form.addRow(self.count_label)
        form.addRow(self.nodule_table)
        return box

    def _export_box(self) -> QGroupBox:
        box = QGroupBox("Export the mask")
        form = QFormLayout(box)
        self.export_path_edit = QLineEdit()
        self.export_path_edit.setPlaceholderText("mask.nii.gz, mask.nrrd or seg.dcm (DICOM-SEG); table: mask.csv")
        self.export_browse = QPushButton("Browse…")
        self.export_browse.clicked.connect(self._browse_export)
        self.export_button = QPushButton("Export")
        self.export_button.clicked.connect(self.export_mask)
        form.addRow("File", row_of(self.export_path_edit, self.export_browse))
        form.addRow(self.export_button)
        return box

    def _training_box(self) -> QGroupBox:
        box = QGroupBox("Save as training data")
        form = QFormLayout(box)
        self.training_folder_edit = QLineEdit()
        self.training_folder_edit.setPlaceholderText("data set folder (new, or one with dataset.json)")
        self.training_browse = QPushButton("Browse…")
        self.training_browse.clicked.connect(self._browse_training)
        self.split_combo = QComboBox()
        for split in SPLITS:
            self.split_combo.addItem(split, split)
        self.case_id_edit = QLineEdit()
        self.case_id_edit.setPlaceholderText("automatic (user_001, user_002, ...)")
        self.all_labelled_check = QCheckBox("Every nodule of this scan is in the mask")
        self.all_labelled_check.setChecked(True)
        self.all_labelled_check.setToolTip("Then the slices without mask can teach the model what 'no "
                                           "nodule' looks like; untick it when some nodules were left out.")
        self.save_training_button = QPushButton("Save as training data")
        self.save_training_button.clicked.connect(self.save_training_data)
        form.addRow("Folder", row_of(self.training_folder_edit, self.training_browse))
        form.addRow("Split", self.split_combo)
        form.addRow("Case id", self.case_id_edit)
        form.addRow(self.all_labelled_check)
        form.addRow(self.save_training_button)
        return box

    def _error(self, text: str) -> None:
        self.last_error_text = text
        show_error(text)

    # --- following the labels layer ---------------------------------------------------------

    def _labels_layer_changed(self, *_: Any) -> None:
        layer = self.labels_combo.layer()
        if layer is self._watched:
            return
        if self._watched is not None:
            for event in self._edit_events(self._watched):
                event.disconnect(self.schedule_refresh)
                event.disconnect(self._edited)
        self._watched = layer
        if layer is not None:
            for event in self._edit_events(layer):
                event.connect(self.schedule_refresh)
                event.connect(self._edited)
            source = layer.metadata.get(SOURCE_KEY)
            if source is not None and source in self.viewer.layers:
                self.image_combo.select(source)
        self.schedule_refresh()

    @staticmethod
    def _edit_events(layer: Any) -> list:
        # paint: a finished stroke, fill or undo; labels_update: partial updates; data: a new array
        return [layer.events.paint, layer.events.labels_update, layer.events.data]

    def _edited(self, *_: Any) -> None:
        if self._watched is not None:
            mark_edited(self._watched)
            self.recovery.edited()

    def schedule_refresh(self, *_: Any) -> None:
        """Measure the nodules again once the edits pause."""
        self._generation += 1  # a measurement still running is out of date
        self._debounce.start()

    @property
    def measuring(self) -> bool:
        """True while a measurement is due or running (tests wait for it to end)."""
        return self._debounce.isActive() or self._measure_worker is not None or self._measure_again

    def _measure(self) -> None:
        if self._measure_worker is not None:
            self._measure_again = True  # measure once more when the running one ends
            return
        self._measure_again = False
        layer = self._watched
        self._generation += 1
        if layer is None:
            self._show_measurements([], None)
            return
        try:
            mask = volume_of_layer(layer)
        except WsnoduleError as error:
            self._show_measurements([], f"{layer.name}: {error}")
            return
        generation, by = self._generation, str(self.grouping_combo.currentData())

        def work() -> list[NoduleMeasurement]:
            # a copy: the user may paint while this runs
            return measure_nodules(np.array(mask.array, copy=True), mask.spacing, by=by)

        worker = create_worker(work, _start_thread=False)
        worker.returned.connect(lambda rows: self._measured(generation, rows))
        worker.errored.connect(lambda error: self._show_measurements([], f"{layer.name}: {error}"))
        worker.finished.connect(self._measure_finished)
        self._measure_worker = worker
        worker.start()

    def _measured(self, generation: int, rows: list[NoduleMeasurement]) -> None:
        if generation == self._generation:
            self._show_measurements(rows, None)

    def _measure_finished(self) -> None:
        self._measure_worker = None
        if self._measure_again:
            self._measure()

    def _show_measurements(self, rows: list[NoduleMeasurement], problem: str | None) -> None:
        self.measurements = list(rows)
        table = self.nodule_table
        table.setSortingEnabled(False)
        table.setRowCount(0)
        for n in rows:
            r = table.rowCount()
            table.insertRow(r)
            first, last = n.slice_range
            cells = [
                table_item(str(n.index), n.index, key=n.index),
                table_item(f"{first}–{last}" if last > first else str(first), first),
                table_item(f"{n.longest_axial_diameter_mm:.1f}", n.longest_axial_diameter_mm),
                table_item(f"{n.equivalent_diameter_mm:.1f}", n.equivalent_diameter_mm),
                table_item(f"{n.volume_mm3:.1f}", n.volume_mm3),
                table_item(", ".join(str(v) for v in n.labels), n.labels[0] if n.labels else 0),
            ]
            for column, item in enumerate(cells):
                table.setItem(r, column, item)
        table.setSortingEnabled(True)
        if problem is not None:
            self.count_label.setText(f"Cannot measure {problem}")
        elif self._watched is None:
            self.count_label.setText("Pick a Labels layer (e.g. the NAM widget's nodules) to list them.")
        else:
            self.count_label.setText(f"{len(rows)} nodule(s) in '{self._watched.name}'.")

    def _row_selected(self) -> None:
        rows = {index.row() for index in self.nodule_table.selectedIndexes()}
        if len(rows) == 1:
            self.go_to_nodule(rows.pop())

    def go_to_nodule(self, row: int) -> None:
        """Move the viewer to the nodule of table row ``row``: its centre slice, camera on its centroid."""
        item = self.nodule_table.item(row, 0)
        layer = self._watched
        if item is None or layer is None:
            return
        index = int(item.data(Qt.UserRole))
        nodule = next((n for n in self.measurements if n.index == index), None)
        if nodule is not None:
            jump_to(self.viewer, layer, (nodule.centre_slice, *nodule.centroid_zyx[1:]))

    # --- mask and CT ------------------------------------------------------------------------

    def _mask_and_image(self, *, patch_ok: bool = False) -> tuple[Volume, Volume] | None:
        """A snapshot of the mask and the CT it lies on, or None after telling the user what is missing.

        With ``patch_ok``, a mask the plugin computed from this CT on another grid (a flow-guidance
        patch mask) is returned on its own grid, to be mapped onto the CT's by the caller.
        """
        labels, image = self.labels_combo.layer(), self.image_combo.layer()
        if labels is None:
            self._error("Pick the Labels layer to save (e.g. the NAM widget's nodules, corrected by hand).")
            return None
        if image is None:
            self._error("Open the CT the mask was drawn on and pick it as 'CT': its geometry is written "
                        "with the mask.")
            return None
        try:
            mask, reference = volume_of_layer(labels), volume_of_layer(image)
        except WsnoduleError as error:
            self._error(str(error))
            return None
        if patch_ok and labels.metadata.get(SOURCE_KEY) is image and not mask.same_geometry(
                reference, atol=GEOMETRY_ATOL_MM):
            return mask.with_array(np.array(mask.array, copy=True)), reference
        if not mask.same_geometry(reference, atol=GEOMETRY_ATOL_MM):
            self._error(str(GeometryMismatchError(
                f"the labels layer {labels.name!r} (shape {mask.shape}, spacing {mask.spacing}, origin "
                f"{mask.origin}) does not lie on the grid of the CT {image.name!r} (shape {reference.shape}, "
                f"spacing {reference.spacing}, origin {reference.origin}). Pick the CT the mask was drawn "
                "on, or give the labels layer the CT's scale and translate.")))
            return None
        return reference.with_array(np.array(mask.array, copy=True)), reference

    # --- export -----------------------------------------------------------------------------

    def _browse_export(self) -> None:
        path, _ = QFileDialog.getSaveFileName(
            self, "Export the mask", self.export_path_edit.text(),
            "NIfTI (*.nii.gz *.nii);;NRRD (*.nrrd);;MetaImage (*.mha *.mhd);;DICOM-SEG (*.dcm)")
        if path:
            self.export_path_edit.setText(path)

    def export_mask(self) -> None:
        """Write the merged label map (one id per nodule) with the CT's geometry and the nodule table as
        CSV beside it (same name, ``.csv``), never over an existing file."""
        text = self.export_path_edit.text().strip()
        if not text:
            self._error("Type the file to export to, e.g. ~/nodules.nii.gz (NIfTI), .nrrd, or .dcm for a "
                        "DICOM-SEG.")
            return
        path = Path(text).expanduser()
        is_seg = path.name.lower().endswith(DICOM_SEG_SUFFIX)
        if not is_seg and not any(path.name.lower().endswith(s) for s in FORMATS):
            self._error(f"{path.name}: unknown mask format; end the name with one of "
                        f"{', '.join((*FORMATS, DICOM_SEG_SUFFIX))} ({DICOM_SEG_SUFFIX} writes a DICOM-SEG).")
            return
        for target in (path, table_path(path)):
            if target.exists():
                self._error(f"{target} already exists and wsnodule never overwrites a file; choose a new name "
                            f"(the table goes beside the mask as {table_path(path).name}).")
                return
        pair = self._mask_and_image(patch_ok=True)
        if pair is None:
            return
        mask, reference = pair
        labels = self.labels_combo.layer()
        model, method, flag = model_mask_of(labels), source_method_of(labels), was_edited(labels)
        by = str(self.grouping_combo.currentData())
        inputs = [p for p in (reference.metadata.source_path, mask.metadata.source_path) if p]
        self.recovery.hold()

        def work(reporter: TaskReporter) -> tuple[Path, Path]:
            on_ct = labels_on_grid(mask, reference)  # a patch mask onto the CT's grid; else as it is
            compare = None if model is None else labels_on_grid(mask.with_array(model), reference).array
            export = annotation_export(on_ct, source_method=method, edited=None if compare is not None else flag,
                                       model_mask=compare, by=by)
            return write_annotation_export(export.labels, export.rows, path, inputs=inputs)

        self.tasks.run(f"Exporting to {path.name}", work, lambda written: self._exported(written, reference, labels))

    def _exported(self, written: tuple[Path, Path], reference: Volume, labels: Any) -> None:
        self.last_export, self.last_table = (Path(p) for p in written)
        self.recovery.exported(reference, labels)
        show_info(f"Mask saved to {self.last_export} and its nodule table to {self.last_table}.")

    # --- recovery ---------------------------------------------------------------------------

    def _recovery_pair(self) -> tuple[Any, Any] | None:
        labels, image = self._watched, self.image_combo.layer()
        return None if labels is None or image is None else (labels, image)

    def _check_recovery(self, *_: Any) -> None:
        """Offer a recovery of the picked CT, else of any other image opened (e.g. a CT loaded just now)."""
        current = self.image_combo.layer()
        others = [layer for layer in self.viewer.layers if isinstance(layer, napari.layers.Image)
                  and layer is not current]
        for image in [current, *others]:
            if self.recovery.check(image) is not None:
                return

    def _select_restored(self, layer: Any) -> None:
        self.labels_combo.select(layer)
        show_info(f"Restored '{layer.name}'; export it when you are done.")

    # --- training data ----------------------------------------------------------------------

    def _browse_training(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Training data set folder",
                                                  self.training_folder_edit.text())
        if folder:
            self.training_folder_edit.setText(folder)

    def save_training_data(self) -> None:
        """Append the CT and the mask to the data set folder (lungs are segmented in the task)."""
        text = self.training_folder_edit.text().strip()
        if not text:
            self._error("Type or browse the data set folder to save into: a new folder, or one made by "
                        "wsnodule (with a dataset.json).")
            return
        pair = self._mask_and_image()
        if pair is None:
            return
        mask, image = pair
        folder = Path(text).expanduser()
        case_id = self.case_id_edit.text().strip() or None
        split = str(self.split_combo.currentData())
        by = str(self.grouping_combo.currentData())
        negatives_ok = self.all_labelled_check.isChecked()

        def work(reporter: TaskReporter):
            from wsnodule_core.data.user_cases import save_training_case

            return save_training_case(folder, image, mask, case_id=case_id, split=split, by=by,
                                      negatives_ok=negatives_ok,
                                      progress=reporter.progress_fn("saving the case (lungs, files, index)"))

        self.tasks.run(f"Saving a training case to {folder.name}", work, self._saved)

    def _saved(self, saved: Any) -> None:
        self.last_saved = saved
        show_info(f"Saved case {saved.case_id} ({saved.n_nodules} nodule(s)) to {saved.folder}; the data set "
                  f"now has {saved.n_cases} case(s). Train on it in the Model widget ('Data set folder').")
