"""The Model widget's training panel: train (or resume) the NAM classifier on a data set folder or on the open
image with a Labels layer. The loss is plotted as it goes; Cancel stops at the next step and keeps
``last.pt``; an existing run folder is never overwritten (Resume continues it). A trained model goes
into the viewer's session, where the NAM widget finds it."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from napari_wsnodule._session import LoadedModel
from napari_wsnodule._tasks import TaskReporter
from napari_wsnodule.widgets._base import Panel, WsnoduleWidget
from napari_wsnodule.widgets._controls import hbox, int_spin
from napari_wsnodule.widgets._loss_plot import LossPlot
from napari_wsnodule.widgets._view import row_of
from napari_wsnodule.widgets.model.device_panel import DevicePanel
from napari_wsnodule.widgets.model.training_data import SliceSource, dataset_source, layers_source
from wsnodule_core.errors import ModelConfigError
from wsnodule_core.nam.recipes import get_recipe
from wsnodule_core.nam.model import KIND as NAM_KIND
from wsnodule_core.nam.train import TrainResult, train_classifier
from wsnodule_core.nam.train_config import PAPER_LR, TrainConfig
from wsnodule_core.nam.model import load_classifier
from wsnodule_core.training.checkpoint import BEST, LAST, load_checkpoint
from wsnodule_core.training.device import DeviceChoice, choose_device

SOURCE_DATASET, SOURCE_LAYERS = "dataset", "layers"


@dataclass(frozen=True, eq=False)
class TrainOutcome:
    """What a training task hands back to the main thread."""

    result: TrainResult
    model: LoadedModel | None   # None when the run was cancelled
    config: TrainConfig
    device: DeviceChoice


def _checkpoints_in(folder: Path) -> list[str]:
    return [name for name in (BEST, LAST) if (folder / name).exists()]


def _double(low: float, high: float, value: float, decimals: int, step: float) -> QDoubleSpinBox:
    spin = QDoubleSpinBox()
    spin.setDecimals(decimals)
    spin.setRange(low, high)
    spin.setSingleStep(step)
    spin.setValue(value)
    return spin


class TrainingPanel(Panel):
    """Data source, the ``cpu_demo`` recipe's settings, output folder, Train / Resume, loss plot."""

    def __init__(self, dock: WsnoduleWidget, device: DevicePanel) -> None:
        super().__init__("Train the NAM classifier", dock)
        self.device = device
        self.last_run: TrainOutcome | None = None
        self._training = False
        outer = QVBoxLayout(self)
        outer.addLayout(self._source_form())
        self.dataset_row, self.layers_row = self._dataset_row(), self._layers_row()
        outer.addWidget(self.dataset_row)
        outer.addWidget(self.layers_row)
        outer.addLayout(self._settings_form())
        self.train_button = QPushButton("Train")
        self.train_button.clicked.connect(lambda: self.start_training(resume=False))
        self.resume_button = QPushButton("Resume")
        self.resume_button.setToolTip("Continue the run in the output folder from its last.pt")
        self.resume_button.clicked.connect(lambda: self.start_training(resume=True))
        outer.addLayout(hbox(self.train_button, self.resume_button))
        self.loss_plot = LossPlot()
        outer.addWidget(self.loss_plot)
        self.run_label = QLabel("")
        self.run_label.setWordWrap(True)
        outer.addWidget(self.run_label)
        self.tasks.snapshot_changed.connect(self._on_snapshot)
        self.tasks.task_finished.connect(self._on_task_finished)
        self._source_changed()
        self._update_resume()

    # --- layout -----------------------------------------------------------------------------

    def _source_form(self) -> QFormLayout:
        form = QFormLayout()
        self.source_combo = QComboBox()
        self.source_combo.addItem("Data set folder", SOURCE_DATASET)
        self.source_combo.addItem("Open image + its labels", SOURCE_LAYERS)
        self.source_combo.currentIndexChanged.connect(self._source_changed)
        form.addRow("Train on", self.source_combo)
        return form

    def _dataset_row(self) -> QWidget:
        row = QWidget()
        form = QFormLayout(row)
        form.setContentsMargins(0, 0, 0, 0)
        self.dataset_edit = QLineEdit()
        self.dataset_edit.setPlaceholderText("folder with dataset.json")
        self.dataset_browse = QPushButton("Browse…")
        self.dataset_browse.clicked.connect(lambda: self._browse_folder(self.dataset_edit, "Data set folder"))
        form.addRow("Data set", row_of(self.dataset_edit, self.dataset_browse))
        return row

    def _layers_row(self) -> QWidget:
        row = QWidget()
        form = QFormLayout(row)
        form.setContentsMargins(0, 0, 0, 0)
        self.image_combo = self.dock.image_picker()
        self.labels_combo = self.dock.labels_picker()
        form.addRow("Image", self.image_combo)
        form.addRow("Labels (nodules)", self.labels_combo)
        return row

    def _settings_form(self) -> QFormLayout:
        recipe = get_recipe("cpu_demo").train
        form = QFormLayout()
        self.n_gap_combo = QComboBox()
        for n in (1, 2, 3):
            self.n_gap_combo.addItem(f"{n}-GAP", n)
        self.n_gap_combo.setCurrentIndex(recipe.n_gap - 1)
        self.n_gap_combo.currentIndexChanged.connect(self._n_gap_changed)
        self.width_combo = QComboBox()
        self.width_combo.addItem("narrow (CPU-sized)", "narrow")
        self.width_combo.addItem("VGG16 (the paper, GPU)", "vgg16")
        self.width_combo.setCurrentIndex(0 if recipe.width == "narrow" else 1)
        self.epochs_spin = int_spin(1, 100_000, recipe.epochs)
        self.batch_spin = int_spin(1, 4096, recipe.batch_size)
        self.lr_spin = _double(1e-6, 1.0, recipe.backbone_lr, 6, 1e-3)
        self.lr_spin.setToolTip("Backbone learning rate; the heads learn 10x faster. Changing the number of "
                                "GAP branches sets the paper's value.")
        self.image_size_spin = int_spin(32, 2048, recipe.image_size)
        self.image_size_spin.setSuffix(" px")
        self.spacing_spin = _double(0.0, 20.0, recipe.pixel_spacing_mm or 0.0, 2, 0.1)
        self.spacing_spin.setSpecialValueText("the scan's own")
        self.spacing_spin.setSuffix(" mm")
        self.min_area_spin = QDoubleSpinBox()
        self.min_area_spin.setRange(0.0, 1000.0)
        self.min_area_spin.setSuffix(" mm²")
        self.min_area_spin.setValue(recipe.min_nodule_area_mm2)
        self.min_area_spin.setToolTip("A slice counts as 'with nodule' when it holds at least this much nodule.")
        self.out_edit = QLineEdit()
        self.out_edit.setPlaceholderText("new folder for best.pt / last.pt")
        self.out_edit.textChanged.connect(self._update_resume)
        self.out_browse = QPushButton("Browse…")
        self.out_browse.clicked.connect(lambda: self._browse_folder(self.out_edit, "Output folder of the run"))
        form.addRow("GAP branches", self.n_gap_combo)
        form.addRow("Width", self.width_combo)
        form.addRow("Epochs", self.epochs_spin)
        form.addRow("Batch size", self.batch_spin)
        form.addRow("Learning rate", self.lr_spin)
        form.addRow("Crop size", self.image_size_spin)
        form.addRow("Pixel spacing", self.spacing_spin)
        form.addRow("Min. nodule area", self.min_area_spin)
        form.addRow("Output folder", row_of(self.out_edit, self.out_browse))
        return form

    # --- small helpers ------------------------------------------------------------------------

    def _source_changed(self, *_: Any) -> None:
        from_dataset = self.source_combo.currentData() == SOURCE_DATASET
        self.dataset_row.setVisible(from_dataset)
        self.layers_row.setVisible(not from_dataset)

    def _n_gap_changed(self, *_: Any) -> None:
        self.lr_spin.setValue(PAPER_LR[int(self.n_gap_combo.currentData())])

    def _out_dir(self) -> Path | None:
        text = self.out_edit.text().strip()
        return Path(text).expanduser() if text else None

    def _update_resume(self, *_: Any) -> None:
        out = self._out_dir()
        self.resume_button.setEnabled(out is not None and (out / LAST).exists())

    def _browse_folder(self, edit: QLineEdit, title: str) -> None:
        folder = QFileDialog.getExistingDirectory(self, title, edit.text() or str(Path.home()))
        if folder:
            edit.setText(folder)

    def train_config(self) -> TrainConfig:
        """The run's settings: the ``cpu_demo`` recipe with the panel's values."""
        spacing = float(self.spacing_spin.value())
        return replace(get_recipe("cpu_demo").train, n_gap=int(self.n_gap_combo.currentData()),
                       width=str(self.width_combo.currentData()), epochs=int(self.epochs_spin.value()),
                       batch_size=int(self.batch_spin.value()), lr=float(self.lr_spin.value()),
                       image_size=int(self.image_size_spin.value()),
                       pixel_spacing_mm=spacing if spacing > 0 else None,
                       min_nodule_area_mm2=float(self.min_area_spin.value()),
                       device=self.device.preference())

    def _data_source(self) -> SliceSource | None:
        if self.source_combo.currentData() == SOURCE_DATASET:
            return dataset_source(self.dataset_edit.text().strip(), self.error)
        return layers_source(self.image_combo.layer(), self.labels_combo.layer(), self.error)

    # --- training -------------------------------------------------------------------------------

    def start_training(self, resume: bool = False) -> None:
        """Train (or resume) with the panel's settings in a worker thread."""
        out = self._out_dir()
        if out is None:
            self.error("Choose an output folder for the training run (best.pt and last.pt go there).")
            return
        existing = _checkpoints_in(out) if out.is_dir() else []
        if out.exists() and not out.is_dir():
            self.error(f"{out} is a file; choose a folder for the training run.")
            return
        if not resume and existing:
            self.error(f"{out} already holds {' and '.join(existing)} of an earlier run: press Resume to continue "
                       "it, or choose another output folder (nothing was overwritten).")
            return
        if resume and LAST not in existing:
            self.error(f"{out}: no {LAST} to resume; press Train to start a new run there.")
            return
        try:
            config = self.train_config()
        except ModelConfigError as error:
            self.error(str(error))
            return
        data_fn = self._data_source()
        if data_fn is None:
            return

        def work(reporter: TaskReporter) -> TrainOutcome:
            run_config = config
            if resume:  # the run keeps its own settings; only the epochs and the device come from the panel
                saved = load_checkpoint(out / LAST)
                run_config = replace(TrainConfig.from_dict(saved.train_config), epochs=config.epochs,
                                     device=config.device)
                if saved.epoch >= run_config.epochs and int(saved.raw.get("step_in_epoch", 0)) == 0:
                    raise ModelConfigError(f"the run in {out} has already done {saved.epoch} epochs; set Epochs "
                                           f"above {saved.epoch} to train it further.")
            data = data_fn(reporter, run_config)
            reporter.raise_if_cancelled()
            reporter.stage("training")
            result = train_classifier(data, out, run_config, reporter.train_callbacks(), resume=resume)
            device = choose_device(run_config.device)
            if result.cancelled:
                return TrainOutcome(result, None, run_config, device)
            path = result.best_path or result.last_path
            model, checkpoint = load_classifier(path, device=device.device)
            loaded = LoadedModel(out.name or str(out), NAM_KIND, model, checkpoint, device, path)
            return TrainOutcome(result, loaded, run_config, device)

        self.loss_plot.clear()
        self.run_label.setText("")
        self._training = True
        if self.tasks.run("Resuming the training" if resume else "Training", work, self._trained) is None:
            self._training = False

    def _trained(self, outcome: TrainOutcome) -> None:
        self.last_run = outcome
        result = outcome.result
        device = f"on {result.device}" + (f" ({outcome.device.fallback_reason})"
                                          if outcome.device.fallback_reason else "")
        if result.cancelled:
            self.run_label.setText(
                f"Training cancelled after {result.epochs_completed} of {outcome.config.epochs} epochs (step "
                f"{result.global_step}, {device}); {result.last_path} kept. Press Resume to continue it.")
        else:
            added = self.session.add_model(outcome.model)
            self.run_label.setText(f"Trained {result.epochs_completed} epochs {device}; {_best_text(outcome)}model "
                                   f"'{added.name}' added from {outcome.model.path}.")
        self._update_resume()

    def _on_snapshot(self, snapshot: Any) -> None:
        if self._training:
            self.loss_plot.set_values(snapshot.series.get("loss", ()))

    def _on_task_finished(self, outcome: str) -> None:
        if not self._training:
            return
        self._training = False
        self.loss_plot.set_values(self.loss_plot.values, force=True)
        if outcome == "cancelled" and not self.run_label.text():
            self.run_label.setText("Training cancelled before its first step; nothing new was written.")
        self._update_resume()

    @property
    def loss_values(self) -> tuple[float, ...]:
        """The training loss per step of the last (or running) training, as plotted."""
        return self.loss_plot.values


def _best_text(outcome: TrainOutcome) -> str:
    """'best validation <metric> x at epoch n; ' (training accuracy when validation gave nan), or ''."""
    result = outcome.result
    if result.best_metric is None:
        return ""
    metric = outcome.config.select_metric
    at_best = (result.history[result.best_epoch - 1]
               if result.best_epoch and result.best_epoch <= len(result.history) else {})
    value = at_best.get(f"val_{metric}")
    validated = isinstance(value, float) and value == value  # nan: fell back to training accuracy
    label = f"validation {metric.replace('_', ' ')}" if validated else "training accuracy"
    return f"best {label} {result.best_metric:.3f} at epoch {result.best_epoch}; "
