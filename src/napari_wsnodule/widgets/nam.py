"""The NAM widget: segment the open CT with a NAM model and show what the network sees.

Layers, all on the CT's grid and tied to the CT layer picked when Segment was pressed: the NAM
(and multi-GAP NAM) as additive heat maps, the screening scope and the ICM candidates as
outlines, the R-NAMs (the chosen candidate's on each nodule slice, or the one picked in the
table), and the fine and coarse nodule masks as new Labels layers (never over an older mask the
user may have corrected). The table lists every candidate of every nodule slice with its eq. 4
score; a click shows its R-NAM and moves the viewer to it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, replace
from typing import Any, Callable

import napari
import numpy as np
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (QCheckBox, QComboBox, QDoubleSpinBox, QFormLayout, QGroupBox, QSpinBox, QWidget)

from napari_wsnodule._geometry import VOLUME_KEY, volume_of_layer
from napari_wsnodule._layers import GENERATED_KEY, SOURCE_KEY, add_volume_layer, result_name, show_overlay
from napari_wsnodule._session import LoadedModel
from napari_wsnodule._tasks import TaskReporter
from napari_wsnodule.widgets._base import WsnoduleWidget
from napari_wsnodule.widgets._staged import STEP_GAP_MS, StagedSteps
from napari_wsnodule.widgets._view import jump_to, read_only_table, table_item
from wsnodule_core.errors import LungSegmentationError, WsnoduleError
from wsnodule_core.io.volume import Volume
from wsnodule_core.nam.pipeline import NamConfig, NamSegmentation
from wsnodule_core.nam.model import KIND as NAM_KIND
from wsnodule_core.segmentation.nam import NamSegmenter, nam_config_for_checkpoint

TABLE_CHUNK = 40  # table rows added per event-loop turn
TABLE_COLUMNS = ("slice", "P(nodule)", "candidate", "area (mm²)", "score", "chosen", "R-NAM")
NO_MODEL = ("No NAM model is loaded. Train one or load a NAM checkpoint in the Model widget "
            "(Plugins > wsnodule > Model), then press Segment again.")


@dataclass(frozen=True, eq=False)
class NamRun:
    """What one segmentation task hands back to the main thread."""

    source: Any               # the CT layer picked when the task started
    volume: Volume            # the CT as segmented (the layer's geometry)
    result: NamSegmentation
    rnam: Volume              # per nodule slice, the R-NAM of its chosen candidate (0 elsewhere)
    model_name: str
    multi_gap_name: str | None


def _n_gap(model: LoadedModel) -> int:
    return int(getattr(getattr(model.model, "config", None), "n_gap", 1))


def checkpoint_defaults(model: LoadedModel | None) -> NamConfig:
    """The NamConfig a model's checkpoint segments with everywhere (the command line, the evaluation):
    crop size and spacing of its training slices and the slice threshold its validation chose (plain
    defaults without a checkpoint)."""
    checkpoint = None if model is None else model.checkpoint
    if checkpoint is None or not hasattr(checkpoint, "train_config"):
        return NamConfig()
    return nam_config_for_checkpoint(checkpoint)


def nam_segmenter(model: LoadedModel, config: NamConfig, multi: LoadedModel | None) -> NamSegmenter:
    """The front door's NAM segmenter for the widget's model, options and multi-GAP model."""
    return NamSegmenter(model.model, config, None if multi is None else multi.model, "fine", model.name,
                        model.kind)


def rnam_volume(result: NamSegmentation) -> Volume:
    """On each nodule slice, the R-NAM of its (first) chosen candidate when it was kept; 0 elsewhere."""
    array = np.zeros(result.nam.shape, np.float32)
    for s in result.slices:
        for c in s.candidates:
            if c.rnam is not None and s.chosen and c.label == s.chosen[0]:
                array[s.z] = c.rnam
    return result.nam.with_array(array)


class NamWidget(WsnoduleWidget):
    """Run NAM / R-NAM segmentation on a CT layer and show every intermediate map."""

    def __init__(self, napari_viewer: napari.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(napari_viewer, parent)
        self.last_run: NamRun | None = None
        self.last_layers: dict[str, Any] = {}
        self.last_error_text: str | None = None
        self._rnam_layer = None
        self._defaults_of: LoadedModel | None = None
        self._staged = StagedSteps(self._error, "the NAM results")
        self._table_rows: deque = deque()  # candidate rows still to be listed
        layout = self.layout()
        layout.addWidget(self._inputs_box())
        layout.addWidget(self._options_box())
        self.segment_button = self.add_run_row("Segment", self.start_segmentation)
        self.rnam_table = read_only_table(TABLE_COLUMNS)
        self.rnam_table.setMinimumHeight(160)
        self.rnam_table.itemSelectionChanged.connect(self._row_selected)
        layout.addWidget(self.rnam_table, 1)
        self.session.models_changed.connect(self.refresh_models)
        self.refresh_models()

    # --- layout -----------------------------------------------------------------------------

    def _inputs_box(self) -> QGroupBox:
        box = QGroupBox("Input")
        form = QFormLayout(box)
        self.image_combo = self.image_picker()
        self.image_combo.setToolTip("The CT in Hounsfield units.")
        self.model_combo = QComboBox()
        self.model_combo.setToolTip("The classifier that picks the nodule slices and makes the NAMs and "
                                    "R-NAMs (the paper's 1-GAP model).")
        self.model_combo.currentIndexChanged.connect(self._model_changed)
        self.multi_gap_combo = QComboBox()
        self.multi_gap_combo.setToolTip("Optional: a 2- or 3-GAP model whose NAM narrows the screening scope "
                                        "(the paper's multi-GAP segmentation).")
        form.addRow("CT", self.image_combo)
        form.addRow("NAM model", self.model_combo)
        form.addRow("Multi-GAP model", self.multi_gap_combo)
        return box

    def _options_box(self) -> QGroupBox:
        box = QGroupBox("Options")
        form = QFormLayout(box)
        self.threshold_spin = QDoubleSpinBox()
        self.threshold_spin.setRange(0.0, 1.0)
        self.threshold_spin.setDecimals(3)
        self.threshold_spin.setSingleStep(0.05)
        self.threshold_spin.setToolTip("A slice is a nodule slice when P(nodule) is at least this (default: "
                                       "the threshold the model's training chose on its validation slices).")
        self.input_size_spin = QSpinBox()
        self.input_size_spin.setRange(32, 2048)
        self.input_size_spin.setSuffix(" px")
        self.input_size_spin.setToolTip("Side of the network input (default: the model's training crop).")
        self.lungs_check = QCheckBox("Crop around the lungs (segments the lungs first)")
        self.lungs_check.setChecked(True)
        self.two_nodules_check = QCheckBox("Up to two nodules per slice")
        self.coarse_combo = QComboBox()
        self.coarse_combo.addItem("every candidate in the scope", "all")
        self.coarse_combo.addItem("the densest candidate", "densest")
        form.addRow("Slice threshold", self.threshold_spin)
        form.addRow("Network input", self.input_size_spin)
        form.addRow(self.lungs_check)
        form.addRow(self.two_nodules_check)
        form.addRow("Coarse mask", self.coarse_combo)
        return box

    # --- models -----------------------------------------------------------------------------

    def refresh_models(self, *_: Any) -> None:
        """List the session's NAM models (keeping the current choices when they are still there)."""
        models = self.session.models_of_kind(NAM_KIND)
        for combo, allow_none in ((self.model_combo, False), (self.multi_gap_combo, True)):
            current = combo.currentData()
            combo.blockSignals(True)
            combo.clear()
            if allow_none:
                combo.addItem("(none)", None)
            for model in models:
                if allow_none and _n_gap(model) < 2:
                    continue
                combo.addItem(f"{model.name} ({_n_gap(model)}-GAP)", model)
            for i in range(combo.count()):
                if combo.itemData(i) is current:
                    combo.setCurrentIndex(i)
            combo.blockSignals(False)
        self._model_changed()

    def selected_model(self) -> LoadedModel | None:
        return self.model_combo.currentData() if self.model_combo.count() else None

    def _model_changed(self, *_: Any) -> None:
        """A newly picked model brings its checkpoint's threshold and input size (the user's values stay
        while the same model remains picked)."""
        model = self.selected_model()
        if model is self._defaults_of and model is not None:
            return
        self._defaults_of = model
        defaults = checkpoint_defaults(model)
        self.threshold_spin.setValue(defaults.probability_threshold)
        self.input_size_spin.setValue(defaults.input_size)

    def nam_config(self) -> NamConfig:
        """The options as a NamConfig (crop spacing from the model's checkpoint)."""
        base = checkpoint_defaults(self.selected_model())
        return replace(base, probability_threshold=float(self.threshold_spin.value()),
                       input_size=int(self.input_size_spin.value()),
                       top_k=2 if self.two_nodules_check.isChecked() else 1,
                       coarse_mode=str(self.coarse_combo.currentData()))

    # --- the task ---------------------------------------------------------------------------

    def _error(self, text: str) -> None:
        self.last_error_text = text
        show_error(text)

    def start_segmentation(self) -> None:
        source = self.image_combo.layer()
        if source is None:
            self._error("Open a CT first (File > Open, or the Load CT widget), then press Segment.")
            return
        model = self.selected_model()
        if model is None:
            self._error(NO_MODEL)
            return
        if self.showing:
            show_info("The previous results are still being added to the viewer; press Segment again in a "
                      "moment.")
            return
        multi = self.multi_gap_combo.currentData()
        try:
            volume = volume_of_layer(source)
            config = self.nam_config()
        except WsnoduleError as error:
            self._error(f"Cannot segment {source.name!r}: {error}")
            return
        use_lungs = self.lungs_check.isChecked()
        segmenter = nam_segmenter(model, config, multi)

        def work(reporter: TaskReporter) -> NamRun:
            lungs = None
            if use_lungs:
                from wsnodule_core.data.lung import segment_lungs

                reporter.stage("segmenting the lungs")
                try:
                    lungs = segment_lungs(volume, progress=reporter.progress_fn("segmenting the lungs"))
                except LungSegmentationError as error:
                    hint = "Or untick 'Crop around the lungs' to give the network whole slices."
                    raise LungSegmentationError(f"{error} {hint}") from error
                reporter.raise_if_cancelled()
            result = segmenter.segment(
                volume, lungs=lungs, progress=reporter.progress_fn("NAM: classifying slices, screening candidates"),
                cancel=reporter.cancelled).details
            return NamRun(source, volume, result, rnam_volume(result), model.name,
                          None if multi is None else multi.name)

        self.tasks.run(f"NAM segmentation of {source.name}", work, self.show_run)

    # --- results ----------------------------------------------------------------------------

    @property
    def showing(self) -> bool:
        """True while the layers (or table rows) of a finished run are still being added."""
        return self._staged.busy or bool(self._table_rows)

    def show_run(self, run: NamRun) -> None:
        """Put a finished segmentation into the viewer (main thread), one layer per event-loop turn
        with a short pause between: napari needs about 0.1-0.2 s to add a layer, so the window keeps
        answering in between."""
        result, source = run.result, run.source
        nam_top = float(result.nam.array.max()) if result.nam.array.size else 0.0

        def name(what: str) -> str:
            return result_name(source, what)

        steps: list[tuple[str, Callable[[], Any]]] = [
            ("nam", lambda: self._map(result.nam, name("NAM map"), source, "nam:nam", "inferno", nam_top))]
        if result.multi_nam is not None:
            steps.append(("multi_nam", lambda: self._map(result.multi_nam, name("multi-GAP NAM map"), source,
                                                         "nam:multi_nam", "green", None)))
        steps += [
            ("rnam", lambda: self._map(run.rnam, name("R-NAM"), source, "nam:rnam", "cyan", nam_top)),
            ("scope", lambda: self._outline(result.scope, name("NAM scope"), source, "nam:scope")),
            ("candidates", lambda: self._outline(result.candidates, name("NAM candidates"), source,
                                                 "nam:candidates")),
            # the nodule masks are results to correct: always new layers
            ("coarse", lambda: add_volume_layer(self.viewer, result.coarse, "labels", name("NAM mask (coarse)"),
                                                source=source, generated="nam:coarse", visible=False)),
            ("fine", lambda: add_volume_layer(self.viewer, result.fine, "labels", name("NAM mask"),
                                              source=source, generated="nam:fine", reveal_later=True)),
        ]
        self._staged.start(steps, lambda layers: self._shown(run, layers))

    def _shown(self, run: NamRun, layers: dict[str, Any]) -> None:
        result = run.result
        self.last_run, self.last_layers, self._rnam_layer = run, layers, layers["rnam"]
        self._fill_table(result)
        n_slices = len(result.slices)
        multi = f" with {run.multi_gap_name}" if run.multi_gap_name else ""
        self.summary_label.setText(
            f"{run.model_name}{multi}: {n_slices} nodule slice(s) of {len(result.probability)}, "
            f"{result.n_nodules} nodule(s) in '{layers['fine'].name}'. Correct it with the paint and erase "
            "tools, then measure and export it in 'Nodules and export'.")
        show_info(f"NAM segmentation of {run.source.name}: {result.n_nodules} nodule(s) on {n_slices} nodule "
                  "slice(s).")

    def _map(self, volume: Volume, name: str, source: Any, generated: str, colormap: str, top: float | None):
        return show_overlay(self.viewer, volume, name, source=source, generated=generated, colormap=colormap,
                            top=top, reveal_later=True)

    def _outline(self, volume: Volume, name: str, source: Any, generated: str):
        """A label map shown as outlines; refreshed in place only while nobody has edited it."""
        for layer in self.viewer.layers:
            meta = getattr(layer, "metadata", {})
            shown = meta.get(VOLUME_KEY)
            if (isinstance(layer, napari.layers.Labels) and meta.get(GENERATED_KEY) == generated
                    and meta.get(SOURCE_KEY) is source and isinstance(shown, Volume)
                    and layer.data.shape == volume.shape and np.array_equal(layer.data, shown.array)):
                layer.data = volume.array.astype(np.int32)
                layer.metadata[VOLUME_KEY] = volume
                return layer
        layer = add_volume_layer(self.viewer, volume, "labels", name, source=source, generated=generated,
                                 opacity=0.8, reveal_later=True)
        layer.contour = 1
        return layer

    def _fill_table(self, result: NamSegmentation) -> None:
        """List every candidate, TABLE_CHUNK rows per event-loop turn (a run that segments every
        slice has hundreds of rows; filling them at once froze the window for 0.1-0.3 s)."""
        table = self.rnam_table
        table.setSortingEnabled(False)
        table.setRowCount(0)
        pixel_mm2 = float(result.candidates.spacing[1] * result.candidates.spacing[2])
        candidates = result.candidates.array
        rows = []
        for s in result.slices:
            counts = np.bincount(candidates[s.z].ravel(), minlength=len(s.candidates) + 1)
            rows += [(s, c.label, counts[c.label] * pixel_mm2, c.score, c.label in s.chosen, c.rnam is not None)
                     for c in s.candidates] or [(s, 0, None, None, False, False)]
        self._table_rows = deque(rows)
        self._add_table_rows()

    def _add_table_rows(self) -> None:
        table, rows = self.rnam_table, self._table_rows
        for _ in range(min(TABLE_CHUNK, len(rows))):
            s, label, area, score, chosen, kept = rows.popleft()
            r = table.rowCount()
            table.insertRow(r)
            cells = [
                table_item(str(s.z), s.z, key=[s.z, label]),
                table_item(f"{s.probability:.3f}", s.probability),
                table_item(str(label) if label else "–", label),
                table_item("–" if area is None else f"{area:.1f}", -1.0 if area is None else area),
                table_item("–" if score is None else f"{score:.4g}", -np.inf if score is None else score),
                table_item("✓" if chosen else "", int(chosen)),
                table_item("shown on click" if kept else ("–" if label else ""), int(kept)),
            ]
            for column, item in enumerate(cells):
                table.setItem(r, column, item)
        if rows:
            QTimer.singleShot(STEP_GAP_MS, self._add_table_rows)
        else:
            table.setSortingEnabled(True)

    def _row_selected(self) -> None:
        rows = {index.row() for index in self.rnam_table.selectedIndexes()}
        if len(rows) == 1:
            self.show_candidate(rows.pop())

    def show_candidate(self, row: int) -> None:
        """Show the R-NAM of the table row's candidate on its slice and move the viewer there."""
        if self.last_run is None or not 0 <= row < self.rnam_table.rowCount():
            return
        z, label = (int(v) for v in self.rnam_table.item(row, 0).data(Qt.UserRole))
        result = self.last_run.result
        slice_info = next((s for s in result.slices if s.z == z), None)
        candidates = () if slice_info is None else slice_info.candidates
        candidate = next((c for c in candidates if c.label == label), None)
        layer = self._rnam_layer
        shown = layer is not None and layer in self.viewer.layers
        if candidate is not None and candidate.rnam is not None and shown:
            layer.data[z] = candidate.rnam
            layer.refresh()
        where = np.argwhere(result.candidates.array[z] == label) if label else np.empty((0, 2))
        centre = where.mean(axis=0) if len(where) else np.asarray(result.candidates.shape[1:]) / 2.0 - 0.5
        source = self.last_run.source
        jump_to(self.viewer, source if source in self.viewer.layers else layer, (z, *centre))
