"""The PW4MedSeg widget: sparse annotations on the open CT -> probabilistic pseudo-label -> train -> infer.

Annotations are drawn in napari and turned into the core's voxel-index annotations of the CT picked
in the widget: nodule points (a Points layer), boxes (a Shapes layer: a rectangle drawn on an axial
slice is a 2D box on that slice, a shape whose vertices span several slices a 3D box) and marked
slices (buttons on the current slice; the marks live in the CT layer's metadata). Every coordinate
goes through world millimetres (each layer's own transform, then the CT's ``world_to_index``), so the
annotation layers need not share the CT's geometry; the "Add ... layer" buttons give them the CT's
geometry anyway, so a click lands on a voxel centre. Results (pseudo-label probability and confidence,
the network's probability and uncertainty, a new Labels layer for its mask) are tied to the CT picked
when the task started. Training runs train.py on the CT alone, with the pseudo-label's probability
as the soft target and its confidence as the voxel weights (see :func:`train_on_volume`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import napari
import numpy as np
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (QComboBox, QFileDialog, QFormLayout, QGroupBox, QHBoxLayout, QLabel, QLineEdit,
                            QListWidget, QListWidgetItem, QPushButton, QSpinBox, QVBoxLayout, QWidget)

from napari_wsnodule._geometry import layer_geometry, mask_volume, volume_of_layer
from napari_wsnodule._layers import add_volume_layer, show_map, unique_layer_name
from napari_wsnodule._session import LoadedModel
from napari_wsnodule._tasks import TaskReporter
from napari_wsnodule._warm_up import warm_up_torch_in_background
from napari_wsnodule.widgets._annotation_layers import MARKS_KEY, annotations_from_layers, current_slice, marks_of
from napari_wsnodule.widgets._base import LayerPicker, WsnoduleWidget, device_picker
from napari_wsnodule.widgets._staged import StagedSteps
from napari_wsnodule.widgets._loss_plot import LossPlot
from napari_wsnodule.widgets._view import row_of
from wsnodule_core.errors import LungSegmentationError, SparseAnnotationError, WsnoduleError
from wsnodule_core.io.volume import Volume
from wsnodule_core.pw4medseg.annotations import SparseAnnotations
from wsnodule_core.pw4medseg.pseudo_labels import (BOX_DESIGNS, SLICE_DESIGNS, PseudoLabel, PseudoLabelConfig,
                                                   pseudo_label)
from wsnodule_core.training.device import DeviceChoice, choose_device

ANNOTATES_KEY = "wsnodule_annotates"  # annotation layer metadata: the CT layer it was made for
RUN_FILES = ("best.pt", "last.pt")
NO_CT = "Open a CT first (File > Open, or the Load CT widget) and pick it under 'CT'."
NO_ANNOTATIONS = ("There is nothing to learn from: click nodule points in a Points layer, draw rectangles around "
                  "nodules in a Shapes layer (the 'Add points layer' / 'Add boxes layer' buttons make them), "
                  "or mark slices as 'nodule' / 'no nodule', then pick those layers here.")


# --- what tasks hand back --------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class PseudoRun:
    """A pseudo-label made from the annotations of one CT layer."""

    source: Any
    volume: Volume
    annotations: SparseAnnotations
    label: PseudoLabel
    lungs: np.ndarray | None


@dataclass(frozen=True, eq=False)
class TrainOutcome:
    source: Any
    result: Any                  # wsnodule_core.training.result.RunResult
    model: LoadedModel | None    # None when cancelled
    device: DeviceChoice
    out_dir: Path


@dataclass(frozen=True, eq=False)
class InferRun:
    source: Any
    volume: Volume
    probability: Volume
    uncertainty: Volume
    mask: Volume
    model_name: str
    passes: int


class Pw4MedSegWidget(WsnoduleWidget):
    """Sparse annotations -> pseudo-label -> train the probabilistic transformer -> segment with uncertainty."""

    def __init__(self, napari_viewer: napari.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(napari_viewer, parent)
        self.last_pseudo: PseudoRun | None = None
        self.last_train: TrainOutcome | None = None
        self.last_infer: InferRun | None = None
        self.last_layers: dict[str, Any] = {}
        self.last_error_text: str | None = None
        self._training = False
        self.train_overrides: dict[str, Any] = {}
        self._staged = StagedSteps(self._error)
        warm_up_torch_in_background()
        layout = self.layout()
        layout.addWidget(self._annotations_box())
        layout.addWidget(self._pseudo_box())
        layout.addWidget(self._train_box())
        layout.addWidget(self._infer_box())
        layout.addWidget(self.tasks)
        self.summary_label = QLabel("")
        self.summary_label.setWordWrap(True)
        layout.addWidget(self.summary_label)
        layout.addStretch(1)
        self.tasks.snapshot_changed.connect(self._on_snapshot)
        self.tasks.task_finished.connect(self._on_task_finished)
        self.session.models_changed.connect(self.refresh_models)
        self.image_combo.currentIndexChanged.connect(self.refresh_marks)
        self.refresh_models()
        self.refresh_marks()

    # --- layout -----------------------------------------------------------------------------------------

    def _annotations_box(self) -> QGroupBox:
        box = QGroupBox("Annotations")
        outer = QVBoxLayout(box)
        form = QFormLayout()
        self.image_combo = self.image_picker()
        self.image_combo.setToolTip("The CT in Hounsfield units; annotations are read on its grid.")
        self.points_combo = LayerPicker(self.viewer, (napari.layers.Points,), allow_none=True)
        self.points_combo.setToolTip("Clicks on nodules. Points closer than 30 mm count as one nodule; a 'label' "
                                     "feature of 0 marks a background point.")
        self.boxes_combo = LayerPicker(self.viewer, (napari.layers.Shapes,), allow_none=True)
        self.boxes_combo.setToolTip("Rectangles around nodules, drawn on an axial slice (a 2D box on that slice).")
        self.lungs_combo = self.labels_picker(allow_none=True)
        self.lungs_combo.setToolTip("Optional lung mask: confines the box and slice priors. Without it, marked "
                                    "slices segment the lungs first.")
        self.add_points_button = QPushButton("Add points layer")
        self.add_points_button.clicked.connect(self.add_points_layer)
        self.add_boxes_button = QPushButton("Add boxes layer")
        self.add_boxes_button.clicked.connect(self.add_boxes_layer)
        form.addRow("CT", self.image_combo)
        form.addRow("Points", row_of(self.points_combo, self.add_points_button))
        form.addRow("Boxes", row_of(self.boxes_combo, self.add_boxes_button))
        form.addRow("Lungs", self.lungs_combo)
        outer.addLayout(form)
        self.mark_nodule_button = QPushButton("Slice: nodule")
        self.mark_nodule_button.setToolTip("Mark the slice shown now as showing a nodule.")
        self.mark_nodule_button.clicked.connect(lambda: self.mark_current_slice(True))
        self.mark_empty_button = QPushButton("Slice: no nodule")
        self.mark_empty_button.setToolTip("Mark the slice shown now as showing no nodule.")
        self.mark_empty_button.clicked.connect(lambda: self.mark_current_slice(False))
        self.remove_mark_button = QPushButton("Remove")
        self.remove_mark_button.setToolTip("Remove the selected slice marks.")
        self.remove_mark_button.clicked.connect(self.remove_selected_marks)
        outer.addLayout(_hbox(self.mark_nodule_button, self.mark_empty_button, self.remove_mark_button))
        self.marks_list = QListWidget()
        self.marks_list.setSelectionMode(QListWidget.ExtendedSelection)
        self.marks_list.setMaximumHeight(90)
        outer.addWidget(self.marks_list)
        return box

    def _pseudo_box(self) -> QGroupBox:
        box = QGroupBox("Pseudo-label")
        outer = QVBoxLayout(box)
        form = QFormLayout()
        self.box_design_combo = QComboBox()
        for design in BOX_DESIGNS:
            self.box_design_combo.addItem(design, design)
        self.box_design_combo.setCurrentIndex(BOX_DESIGNS.index(PseudoLabelConfig().box_design))
        self.box_design_combo.setToolTip("intensity: the dense structure at the box centre; ellipsoid: the "
                                         "inscribed ellipsoid; uniform: the whole box.")
        self.slice_design_combo = QComboBox()
        for design in SLICE_DESIGNS:
            self.slice_design_combo.addItem(design, design)
        self.slice_design_combo.setCurrentIndex(SLICE_DESIGNS.index(PseudoLabelConfig().slice_design))
        form.addRow("Box prior", self.box_design_combo)
        form.addRow("Slice prior", self.slice_design_combo)
        outer.addLayout(form)
        self.pseudo_button = QPushButton("Make pseudo-label")
        self.pseudo_button.clicked.connect(self.make_pseudo_label)
        outer.addWidget(self.pseudo_button)
        return box

    def _train_box(self) -> QGroupBox:
        box = QGroupBox("Train on this CT")
        outer = QVBoxLayout(box)
        form = QFormLayout()
        self.device_combo, self.device_label = device_picker()
        self.epochs_spin = QSpinBox()
        self.epochs_spin.setRange(1, 100_000)
        self.epochs_spin.setValue(20)
        self.steps_spin = QSpinBox()
        self.steps_spin.setRange(1, 100_000)
        self.steps_spin.setValue(50)
        self.steps_spin.setToolTip("Optimiser steps per epoch (each on random crops around the pseudo-label).")
        self.out_edit = QLineEdit()
        self.out_edit.setPlaceholderText("new folder for best.pt / last.pt")
        self.out_browse = QPushButton("Browse…")
        self.out_browse.clicked.connect(self._browse_out)
        form.addRow("Run on", self.device_combo)
        form.addRow(self.device_label)
        form.addRow("Epochs", self.epochs_spin)
        form.addRow("Steps per epoch", self.steps_spin)
        form.addRow("Output folder", row_of(self.out_edit, self.out_browse))
        outer.addLayout(form)
        self.train_button = QPushButton("Train")
        self.train_button.setToolTip("Train the probabilistic transformer on the CT and its pseudo-label; Cancel "
                                     "stops at the next step and keeps last.pt.")
        self.train_button.clicked.connect(self.start_training)
        outer.addWidget(self.train_button)
        self.loss_plot = LossPlot()
        outer.addWidget(self.loss_plot)
        self.run_label = QLabel("")
        self.run_label.setWordWrap(True)
        outer.addWidget(self.run_label)
        return box

    def _infer_box(self) -> QGroupBox:
        box = QGroupBox("Segment")
        outer = QVBoxLayout(box)
        form = QFormLayout()
        self.model_combo = QComboBox()
        self.model_combo.setToolTip("A PW4MedSeg model trained here or loaded in the Model widget.")
        self.passes_spin = QSpinBox()
        self.passes_spin.setRange(1, 64)
        self.passes_spin.setValue(6)
        self.passes_spin.setToolTip("Stochastic passes averaged (the paper: K = 6); their spread is the "
                                    "uncertainty map.")
        self.checkpoint_edit = QLineEdit()
        self.checkpoint_edit.setPlaceholderText("best.pt / last.pt of a PW4MedSeg run")
        self.checkpoint_browse = QPushButton("Browse…")
        self.checkpoint_browse.clicked.connect(self._browse_checkpoint)
        self.load_button = QPushButton("Load")
        self.load_button.clicked.connect(self.load_checkpoint)
        form.addRow("Model", self.model_combo)
        form.addRow("Checkpoint", row_of(self.checkpoint_edit, self.checkpoint_browse, self.load_button))
        form.addRow("Passes (K)", self.passes_spin)
        outer.addLayout(form)
        self.infer_button = QPushButton("Infer")
        self.infer_button.clicked.connect(self.start_inference)
        outer.addWidget(self.infer_button)
        return box

    # --- small helpers ----------------------------------------------------------------------------------

    def _error(self, text: str) -> None:
        self.last_error_text = text
        show_error(text)

    def _source_volume(self, action: str) -> tuple[Any, Volume] | None:
        source = self.image_combo.layer()
        if source is None:
            self._error(NO_CT)
            return None
        try:
            return source, volume_of_layer(source)
        except WsnoduleError as error:
            self._error(f"Cannot {action} on {source.name!r}: {error}")
            return None

    def device_choice(self) -> DeviceChoice:
        return choose_device(self.device_combo.currentData())

    def _out_dir(self) -> Path | None:
        text = self.out_edit.text().strip()
        return Path(text).expanduser() if text else None

    def _browse_out(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Output folder of the run", self.out_edit.text() or
                                                  str(Path.home()))
        if folder:
            self.out_edit.setText(folder)

    # --- annotation layers ------------------------------------------------------------------------------

    def _annotation_layer_kwargs(self, source: Any, volume: Volume, name: str) -> dict[str, Any]:
        return {"name": unique_layer_name(self.viewer, f"{source.name}: {name}"),
                "metadata": {ANNOTATES_KEY: source}, **layer_geometry(volume)}

    def add_points_layer(self) -> Any:
        """A Points layer on the CT's grid, selected and in 'add' mode, picked under 'Points'."""
        got = self._source_volume("add a points layer")
        if got is None:
            return None
        source, volume = got
        size = 4.0 / float(min(volume.spacing[1:]))  # about 4 mm across, in voxels
        layer = self.viewer.add_points(np.empty((0, 3)), ndim=3, size=size, face_color="#ff4040",
                                       border_color="white", features={"label": np.empty(0, int)},
                                       feature_defaults={"label": 1},
                                       **self._annotation_layer_kwargs(source, volume, "nodule points"))
        self.viewer.layers.selection.active = layer
        layer.mode = "add"
        self.points_combo.select(layer)
        return layer

    def add_boxes_layer(self) -> Any:
        """A Shapes layer on the CT's grid, selected and in rectangle mode, picked under 'Boxes'."""
        got = self._source_volume("add a boxes layer")
        if got is None:
            return None
        source, volume = got
        layer = self.viewer.add_shapes(None, ndim=3, shape_type="rectangle", edge_color="yellow",
                                       face_color="transparent", edge_width=1.0,
                                       **self._annotation_layer_kwargs(source, volume, "nodule boxes"))
        self.viewer.layers.selection.active = layer
        layer.mode = "add_rectangle"
        self.boxes_combo.select(layer)
        return layer

    # --- marked slices ----------------------------------------------------------------------------------

    def refresh_marks(self, *_: Any) -> None:
        """List the marks of the picked CT."""
        self.marks_list.clear()
        for z, present in sorted(marks_of(self.image_combo.layer()).items()):
            item = QListWidgetItem(f"slice {z}: {'nodule' if present else 'no nodule'}")
            item.setData(Qt.UserRole, z)
            self.marks_list.addItem(item)

    def mark_current_slice(self, present: bool) -> int | None:
        """Mark the slice the viewer shows as showing a nodule (or not) on the picked CT."""
        got = self._source_volume("mark a slice")
        if got is None:
            return None
        source, volume = got
        try:
            z = current_slice(self.viewer, volume)
        except SparseAnnotationError as error:
            self._error(str(error))
            return None
        marks = marks_of(source)
        marks[z] = bool(present)
        source.metadata[MARKS_KEY] = marks
        self.refresh_marks()
        return z

    def remove_selected_marks(self) -> None:
        source = self.image_combo.layer()
        if source is None:
            return
        marks = marks_of(source)
        for item in self.marks_list.selectedItems():
            marks.pop(int(item.data(Qt.UserRole)), None)
        source.metadata[MARKS_KEY] = marks
        self.refresh_marks()

    # --- pseudo-label -----------------------------------------------------------------------------------

    def annotations(self, source: Any, volume: Volume) -> SparseAnnotations | None:
        """The picked layers' annotations on ``volume``'s grid, or None after showing what is wrong."""
        try:
            annotations = annotations_from_layers(volume, self.points_combo.layer(), self.boxes_combo.layer(),
                                                  marks_of(source))
        except SparseAnnotationError as error:
            self._error(f"The annotations of {source.name!r} cannot be used: {error}")
            return None
        if annotations.is_empty:
            self._error(NO_ANNOTATIONS)
            return None
        return annotations

    def pseudo_label_config(self) -> PseudoLabelConfig:
        return PseudoLabelConfig(box_design=str(self.box_design_combo.currentData()),
                                 slice_design=str(self.slice_design_combo.currentData()))

    def _lungs(self, volume: Volume) -> np.ndarray | None | bool:
        """The picked lung mask on the CT's grid (None: none picked; False: error shown)."""
        layer = self.lungs_combo.layer()
        if layer is None:
            return None
        try:
            return mask_volume(layer.data, volume).array > 0
        except WsnoduleError as error:
            self._error(f"The lung mask {layer.name!r} cannot be used: {error}")
            return False

    def make_pseudo_label(self) -> None:
        """Pseudo-label probability and confidence of the picked CT from its annotations (thread worker)."""
        got = self._source_volume("make a pseudo-label")
        if got is None or self._busy_showing():
            return
        source, volume = got
        annotations = self.annotations(source, volume)
        if annotations is None:
            return
        lungs = self._lungs(volume)
        if lungs is False:
            return
        config = self.pseudo_label_config()

        def work(reporter: TaskReporter) -> PseudoRun:
            try:
                label = pseudo_label(volume, annotations, config, lungs,
                                     progress=reporter.progress_fn("pseudo-label: annotation sources"),
                                     cancel=reporter.cancelled)
            except LungSegmentationError as error:
                raise LungSegmentationError(f"{error} Or pick a lung mask under 'Lungs' (marked slices need "
                                            "one).") from error
            return PseudoRun(source, volume, annotations, label, lungs)

        self.tasks.run(f"Pseudo-label of {source.name}", work, self.show_pseudo_label)

    def show_pseudo_label(self, run: PseudoRun) -> None:
        probability, confidence = run.label.volumes()
        base = run.source.name
        self.last_pseudo = run
        self._show([
            ("pseudo_probability", lambda: self._map(probability, f"{base}: pseudo-label", run.source,
                                                     "pw4medseg:pseudo_probability", "magma")),
            ("pseudo_confidence", lambda: self._map(confidence, f"{base}: pseudo-label confidence", run.source,
                                                    "pw4medseg:pseudo_confidence", "cyan", visible=False)),
        ], lambda layers: self._pseudo_shown(run))

    def _pseudo_shown(self, run: PseudoRun) -> None:
        a = run.annotations
        parts = [f"{len(a.points)} point set(s)" if a.points else "", f"{len(a.boxes)} box(es)" if a.boxes else "",
                 f"{len(a.slices.slices)} marked slice(s)" if a.slices else ""]
        voxels = int(np.count_nonzero(run.label.probability > 0.5))
        self.summary_label.setText(
            f"Pseudo-label of '{run.source.name}' from {', '.join(p for p in parts if p)}: {voxels} voxels above "
            "0.5. Press Train to fit the network to it.")

    # --- training ---------------------------------------------------------------------------------------

    def start_training(self) -> None:
        """Train the probabilistic transformer on the picked CT and the pseudo-label made for it."""
        got = self._source_volume("train")
        if got is None:
            return
        source, volume = got
        out = self._out_dir()
        if out is None:
            self._error("Choose an output folder for the training run (best.pt and last.pt go there).")
            return
        if out.exists() and not out.is_dir():
            self._error(f"{out} is a file; choose a folder for the training run.")
            return
        held = [name for name in RUN_FILES if (out / name).exists()]
        if held:
            self._error(f"{out} already holds {' and '.join(held)} of an earlier run; choose another output "
                        "folder (nothing was overwritten).")
            return
        run = self.last_pseudo
        if run is None or run.source is not source:
            self._error(f"No pseudo-label was made for {source.name!r} yet: press 'Make pseudo-label' first, then "
                        "Train.")
            return
        current = self.annotations(source, volume)
        if current is None:
            return
        if current != run.annotations or not run.volume.same_geometry(volume):
            self._error(f"The annotations of {source.name!r} changed since its pseudo-label was made: press 'Make "
                        "pseudo-label' again, then Train.")
            return
        try:
            config = self.train_config()
        except WsnoduleError as error:
            self._error(str(error))
            return
        name = source.name

        def work(reporter: TaskReporter) -> TrainOutcome:
            from wsnodule_core.training.checkpoint import load_checkpoint

            from wsnodule_core.pw4medseg.config import load_pw4medseg

            device = choose_device(config.device)
            reporter.stage(f"training on '{name}' (targets, then steps)")
            result = train_on_volume(volume, run.label, run.lungs, out, config, reporter.train_callbacks(), name,
                                     progress=reporter.progress_fn("building the training target"))
            if result.cancelled:
                return TrainOutcome(source, result, None, device, out)
            path = Path(result.best_path or result.last_path)
            model, _ = load_pw4medseg(path, device.device)
            loaded = LoadedModel(out.name or str(out), pw4medseg_kind(), model, load_checkpoint(path), device, path)
            return TrainOutcome(source, result, loaded, device, out)

        self.loss_plot.clear()
        self.run_label.setText("")
        self._training = True
        if self.tasks.run(f"Training on {source.name}", work, self._trained) is None:
            self._training = False

    def train_config(self) -> Any:
        """The run's PwTrainConfig: train.py's CPU-sized defaults, the widget's epochs, steps and device, then
        ``train_overrides`` (a dict scripts and tests may set, e.g. a smaller model)."""
        from wsnodule_core.pw4medseg.config import PwTrainConfig

        values = {"epochs": int(self.epochs_spin.value()), "steps_per_epoch": int(self.steps_spin.value()),
                  "device": str(self.device_combo.currentData()), **self.train_overrides}
        return PwTrainConfig(**values)

    def _trained(self, outcome: TrainOutcome) -> None:
        self.last_train = outcome
        result = outcome.result
        where = f"on {outcome.device.device}" + (f" ({outcome.device.fallback_reason})"
                                                 if outcome.device.fallback_reason else "")
        if outcome.model is None:
            self.run_label.setText(f"Training cancelled after {result.epochs_completed} epoch(s) {where}; "
                                   f"{result.last_path} kept.")
            return
        added = self.session.add_model(outcome.model)
        self.refresh_models()
        self._select_model(added)
        self.run_label.setText(f"Trained {result.epochs_completed} epoch(s) {where}; model '{added.name}' added "
                               f"from {outcome.model.path}. Press Infer to segment.")

    def _on_snapshot(self, snapshot: Any) -> None:
        if self._training:
            self.loss_plot.set_values(snapshot.series.get("loss", ()))

    def _on_task_finished(self, outcome: str) -> None:
        if not self._training:
            return
        self._training = False
        self.loss_plot.set_values(self.loss_plot.values, force=True)
        if outcome == "cancelled" and not self.run_label.text():
            self.run_label.setText("Training cancelled before its first checkpoint.")

    # --- inference --------------------------------------------------------------------------------------

    def refresh_models(self, *_: Any) -> None:
        """List the session's PW4MedSeg models (keeping the current choice when it is still there)."""
        current = self.model_combo.currentData()
        self.model_combo.clear()
        for model in self.session.models.values():
            if model.kind == pw4medseg_kind():
                self.model_combo.addItem(model.name, model)
        for i in range(self.model_combo.count()):
            if self.model_combo.itemData(i) is current:
                self.model_combo.setCurrentIndex(i)

    def _browse_checkpoint(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "PW4MedSeg checkpoint", self.checkpoint_edit.text() or
                                              str(Path.home()), "Checkpoints (*.pt);;All files (*)")
        if path:
            self.checkpoint_edit.setText(path)

    def load_checkpoint(self) -> None:
        """Load a PW4MedSeg checkpoint (file or run folder) onto the chosen device, into the session."""
        text = self.checkpoint_edit.text().strip()
        path = Path(text).expanduser()
        if not text or not path.exists():
            self._error(f"{path if text else 'No checkpoint given'}: give the best.pt / last.pt (or the run "
                        "folder) of a PW4MedSeg training run.")
            return
        preference = str(self.device_combo.currentData())

        def work(reporter: TaskReporter) -> LoadedModel:
            from wsnodule_core.pw4medseg.config import load_pw4medseg
            from wsnodule_core.training.checkpoint import load_checkpoint

            reporter.stage(f"loading {path.name}")
            device = choose_device(preference)
            model, _ = load_pw4medseg(path, device.device)
            checkpoint = load_checkpoint(path)
            name = f"{checkpoint.path.parent.name}/{checkpoint.path.name}"
            return LoadedModel(name, pw4medseg_kind(), model, checkpoint, device, checkpoint.path)

        self.tasks.run("Loading the checkpoint", work, self._loaded)

    def _loaded(self, model: LoadedModel) -> None:
        added = self.session.add_model(model)
        self.refresh_models()
        self._select_model(added)
        reason = f" ({model.device.fallback_reason})" if model.device.fallback_reason else ""
        self.summary_label.setText(f"Loaded '{added.name}' on {model.device.device}{reason}.")

    def _select_model(self, model: LoadedModel) -> None:
        for i in range(self.model_combo.count()):
            if self.model_combo.itemData(i) is model:
                self.model_combo.setCurrentIndex(i)

    def selected_model(self) -> LoadedModel | None:
        return self.model_combo.currentData() if self.model_combo.count() else None

    def start_inference(self) -> None:
        """K stochastic passes of the chosen model over the picked CT (thread worker)."""
        got = self._source_volume("segment")
        if got is None or self._busy_showing():
            return
        source, volume = got
        model = self.selected_model()
        if model is None:
            self._error("No PW4MedSeg model is loaded: train one here (Train) or load a PW4MedSeg checkpoint "
                        "(Checkpoint, Load), then press Infer.")
            return
        passes = int(self.passes_spin.value())

        def work(reporter: TaskReporter) -> InferRun:
            from wsnodule_core.pw4medseg.infer import predict_volume

            prediction = predict_volume(model.model, volume, model_config(model), passes=passes,
                                        progress=reporter.progress_fn(f"segmenting: {passes} passes"),
                                        cancel=reporter.cancelled)
            probability = _on_grid(prediction.probability, volume, np.float32)
            uncertainty = _on_grid(prediction.uncertainty, volume, np.float32)
            mask = _on_grid(prediction.mask, volume, np.uint8)
            return InferRun(source, volume, probability, uncertainty, mask, model.name, passes)

        self.tasks.run(f"PW4MedSeg segmentation of {source.name}", work, self.show_inference)

    def show_inference(self, run: InferRun) -> None:
        base, source = run.source.name, run.source
        self.last_infer = run
        self._show([
            ("probability", lambda: self._map(run.probability, f"{base}: PW4MedSeg probability", source,
                                              "pw4medseg:probability", "magma")),
            ("uncertainty", lambda: self._map(run.uncertainty, f"{base}: PW4MedSeg uncertainty", source,
                                              "pw4medseg:uncertainty", "cyan", visible=False,
                                              limits=(0.0, max(float(run.uncertainty.array.max()), 1e-6)))),
            # a mask is a result to correct: always a new layer
            ("mask", lambda: add_volume_layer(self.viewer, run.mask, "labels", f"{base}: nodules (PW4MedSeg)",
                                              source=source, generated="pw4medseg:mask")),
        ], lambda layers: self._inferred(run, layers))

    def _inferred(self, run: InferRun, layers: dict[str, Any]) -> None:
        voxels = int(np.count_nonzero(run.mask.array))
        self.summary_label.setText(
            f"{run.model_name}, {run.passes} passes: {voxels} voxels above 0.5 in '{layers['mask'].name}'. The "
            "uncertainty layer shows where the passes disagree; correct the mask with the paint and erase tools.")
        show_info(f"PW4MedSeg segmentation of {run.source.name}: {voxels} nodule voxels.")

    # --- results, one layer per event-loop turn ------------------------------------------------------------

    @property
    def showing(self) -> bool:
        return self._staged.busy

    def _busy_showing(self) -> bool:
        if self._staged.busy:
            show_info("The previous results are still being added to the viewer; press again in a moment.")
            return True
        return False

    def _show(self, steps: list[tuple[str, Callable[[], Any]]], done: Callable[[dict[str, Any]], None]) -> None:
        def finished(layers: dict[str, Any]) -> None:
            self.last_layers = layers
            done(layers)

        self._staged.start(steps, finished)

    def _map(self, volume: Volume, name: str, source: Any, generated: str, colormap: str, *, visible: bool = True,
             limits: tuple[float, float] = (0.0, 1.0)):
        layer = show_map(self.viewer, volume, name, source=source, generated=generated, colormap=colormap,
                         blending="additive", opacity=0.6, contrast_limits=limits, visible=visible)
        layer.contrast_limits_range = limits
        layer.contrast_limits = limits
        return layer


# --- the core's training and inference (train.py / infer.py) ----------------------------------------------


def pw4medseg_kind() -> str:
    """The checkpoint kind of PW4MedSeg models."""
    from wsnodule_core.pw4medseg.config import KIND

    return str(KIND)


def training_case(volume: Volume, label: PseudoLabel, lungs: np.ndarray | None, name: str) -> Any:
    """The open CT with its pseudo-label (soft probability and confidence) as a ready training target."""
    from wsnodule_core.pw4medseg.targets import TargetCase

    return TargetCase(name, volume, np.asarray(label.probability, np.float32),
                      np.asarray(label.confidence, np.float32), None if lungs is None else np.asarray(lungs, bool))


def train_on_volume(volume: Volume, label: PseudoLabel, lungs: np.ndarray | None, out: Path, config: Any,
                    callbacks: Any, name: str = "napari", progress: Callable[[int, int], None] | None = None) -> Any:
    """Train PW4MedSeg on one CT and its pseudo-label; returns train.py's ``RunResult``."""
    from wsnodule_core.pw4medseg.train import train_pw4medseg

    return train_pw4medseg([training_case(volume, label, lungs, name)], out, config, callbacks, progress=progress)


def model_config(model: LoadedModel) -> Any:
    """The PwTrainConfig a model was trained with (grid, normalisation, crop), from its checkpoint; its
    threshold is the one the run chose on its validation cases, when it recorded one."""
    from wsnodule_core.pw4medseg.config import checkpoint_config

    return checkpoint_config(model.checkpoint)


def _on_grid(array: Any, volume: Volume, dtype: Any) -> Volume:
    array = np.asarray(array.array if isinstance(array, Volume) else array, dtype)
    return volume.with_array(array)


def _hbox(*widgets: QWidget) -> QHBoxLayout:
    row = QHBoxLayout()
    for widget in widgets:
        row.addWidget(widget)
    return row
