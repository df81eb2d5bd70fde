"""The Model widget: train the NAM classifier, load and save checkpoints, pick the device.

Training runs on a data set folder (``dataset.json``, as written by ``wsnodule data`` or by the
export widget's "save as training data") or on the open image with a Labels layer (slice labels
from the mask, lungs segmented on the fly). The loss is plotted as it goes; Cancel stops at the
next step and keeps ``last.pt``; an existing run folder is never overwritten (Resume continues it).
Trained and loaded models go into the viewer's session, where the NAM widget finds them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import napari
from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import (QAbstractItemView, QComboBox, QDoubleSpinBox, QFileDialog, QFormLayout, QGroupBox,
                            QHBoxLayout, QHeaderView, QLabel, QLineEdit, QPushButton, QSpinBox, QTableWidget,
                            QTableWidgetItem, QVBoxLayout, QWidget)

from napari_wsnodule._geometry import mask_volume, volume_of_layer
from napari_wsnodule._session import LoadedModel
from napari_wsnodule._tasks import TaskReporter
from napari_wsnodule._warm_up import warm_up_torch_in_background
from napari_wsnodule.widgets._base import WsnoduleWidget, device_picker
from napari_wsnodule.widgets._loss_plot import LossPlot
from napari_wsnodule.widgets._view import row_of
from wsnodule_core.errors import CheckpointError, ModelConfigError, WsnoduleError
from wsnodule_core.nam.model import KIND as NAM_KIND
from wsnodule_core.nam.model import load_classifier
from wsnodule_core.nam.recipes import get_recipe
from wsnodule_core.nam.train import TrainResult, train_classifier
from wsnodule_core.nam.train_config import PAPER_LR, TrainConfig
from wsnodule_core.training.checkpoint import BEST, LAST, load_checkpoint
from wsnodule_core.training.device import DeviceChoice, choose_device
from wsnodule_core.training.export import copy_checkpoint

UNET_KIND = "unet-baseline"
SOURCE_DATASET, SOURCE_LAYERS = "dataset", "layers"
VAL_FRACTION = 0.2  # of the open volume's slices held out for validation


@dataclass(frozen=True, eq=False)
class TrainOutcome:
    """What a training task hands back to the main thread."""

    result: TrainResult
    model: LoadedModel | None   # None when the run was cancelled
    config: TrainConfig
    device: DeviceChoice


def load_session_model(path: Path, device: DeviceChoice) -> LoadedModel:
    """A NAM or U-Net checkpoint (file or run folder) as a :class:`LoadedModel` on ``device``."""
    checkpoint = load_checkpoint(path)
    if checkpoint.kind == NAM_KIND:
        model, checkpoint = load_classifier(checkpoint.path, device=device.device)
    elif checkpoint.kind == UNET_KIND:
        from wsnodule_core.baselines.unet import load_unet

        model, checkpoint = load_unet(checkpoint.path, device=device.device)
    else:
        raise CheckpointError(
            f"{checkpoint.path}: holds a {checkpoint.kind or 'unknown'!r} model; this widget loads NAM "
            f"classifier ({NAM_KIND!r}) and U-Net baseline ({UNET_KIND!r}) checkpoints.")
    name = f"{checkpoint.path.parent.name}/{checkpoint.path.name}"
    return LoadedModel(name, checkpoint.kind, model, checkpoint, device, checkpoint.path)


def model_summary(model: LoadedModel) -> tuple[str, str, str, str, str, str]:
    """(name, kind, GAPs, epoch, best metric, device) of a session model, as shown in the table."""
    checkpoint = model.checkpoint
    config = getattr(checkpoint, "model_config", None) or {}
    gaps = f"{config['n_gap']} ({config.get('width', '?')})" if "n_gap" in config else "–"
    epoch = str(checkpoint.epoch) if checkpoint is not None else "–"
    best = "–"
    if checkpoint is not None and checkpoint.best_metric is not None:
        best = f"{float(checkpoint.best_metric):.3f}"
        if checkpoint.best_epoch is not None:
            best += f" (epoch {checkpoint.best_epoch})"
    return model.name, model.kind, gaps, epoch, best, str(model.device.device)


def _checkpoints_in(folder: Path) -> list[str]:
    return [name for name in (BEST, LAST) if (folder / name).exists()]


class ModelWidget(WsnoduleWidget):
    """Train, load, list and save models; choose the device."""

    def __init__(self, napari_viewer: napari.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(napari_viewer, parent)
        self.last_run: TrainOutcome | None = None
        self.last_saved: Path | None = None
        self.last_error_text: str | None = None
        self._training = False
        warm_up_torch_in_background()
        layout = self.layout()
        layout.addWidget(self._device_box())
        layout.addWidget(self._train_box())
        layout.addWidget(self._models_box())
        layout.addWidget(self.tasks)
        layout.addStretch(1)
        self.tasks.snapshot_changed.connect(self._on_snapshot)
        self.tasks.task_finished.connect(self._on_task_finished)
        self.session.models_changed.connect(self.refresh_models)
        self._source_changed()
        self._update_resume()
        self.refresh_models()

    # --- layout -----------------------------------------------------------------------------

    def _device_box(self) -> QGroupBox:
        box = QGroupBox("Device")
        form = QFormLayout(box)
        self.device_combo, self.device_label = device_picker()
        form.addRow("Run on", self.device_combo)
        form.addRow(self.device_label)
        return box

    def _train_box(self) -> QGroupBox:
        recipe = get_recipe("cpu_demo").train
        box = QGroupBox("Train the NAM classifier")
        outer = QVBoxLayout(box)
        form = QFormLayout()
        self.source_combo = QComboBox()
        self.source_combo.addItem("Data set folder", SOURCE_DATASET)
        self.source_combo.addItem("Open image + its labels", SOURCE_LAYERS)
        self.source_combo.currentIndexChanged.connect(self._source_changed)
        form.addRow("Train on", self.source_combo)
        outer.addLayout(form)

        self.dataset_row = QWidget()
        dataset_form = QFormLayout(self.dataset_row)
        dataset_form.setContentsMargins(0, 0, 0, 0)
        self.dataset_edit = QLineEdit()
        self.dataset_edit.setPlaceholderText("folder with dataset.json")
        self.dataset_browse = QPushButton("Browse…")
        self.dataset_browse.clicked.connect(lambda: self._browse_folder(self.dataset_edit, "Data set folder"))
        dataset_form.addRow("Data set", row_of(self.dataset_edit, self.dataset_browse))
        outer.addWidget(self.dataset_row)

        self.layers_row = QWidget()
        layers_form = QFormLayout(self.layers_row)
        layers_form.setContentsMargins(0, 0, 0, 0)
        self.image_combo = self.image_picker()
        self.labels_combo = self.labels_picker()
        layers_form.addRow("Image", self.image_combo)
        layers_form.addRow("Labels (nodules)", self.labels_combo)
        outer.addWidget(self.layers_row)

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
        self.epochs_spin = _spin(1, 100_000, recipe.epochs)
        self.batch_spin = _spin(1, 4096, recipe.batch_size)
        self.lr_spin = QDoubleSpinBox()
        self.lr_spin.setDecimals(6)
        self.lr_spin.setRange(1e-6, 1.0)
        self.lr_spin.setSingleStep(1e-3)
        self.lr_spin.setValue(recipe.backbone_lr)
        self.lr_spin.setToolTip("Backbone learning rate; the heads learn 10x faster. Changing the number of "
                                "GAP branches sets the paper's value.")
        self.image_size_spin = _spin(32, 2048, recipe.image_size)
        self.image_size_spin.setSuffix(" px")
        self.spacing_spin = QDoubleSpinBox()
        self.spacing_spin.setRange(0.0, 20.0)
        self.spacing_spin.setDecimals(2)
        self.spacing_spin.setSingleStep(0.1)
        self.spacing_spin.setSpecialValueText("the scan's own")
        self.spacing_spin.setSuffix(" mm")
        self.spacing_spin.setValue(recipe.pixel_spacing_mm or 0.0)
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
        outer.addLayout(form)

        self.train_button = QPushButton("Train")
        self.train_button.clicked.connect(lambda: self.start_training(resume=False))
        self.resume_button = QPushButton("Resume")
        self.resume_button.setToolTip("Continue the run in the output folder from its last.pt")
        self.resume_button.clicked.connect(lambda: self.start_training(resume=True))
        outer.addLayout(_hbox(self.train_button, self.resume_button))
        self.loss_plot = LossPlot()
        outer.addWidget(self.loss_plot)
        self.run_label = QLabel("")
        self.run_label.setWordWrap(True)
        outer.addWidget(self.run_label)
        return box

    def _models_box(self) -> QGroupBox:
        box = QGroupBox("Models")
        outer = QVBoxLayout(box)
        self.checkpoint_edit = QLineEdit()
        self.checkpoint_edit.setPlaceholderText("best.pt / last.pt or its run folder")
        self.checkpoint_browse = QPushButton("Browse…")
        self.checkpoint_browse.clicked.connect(self._browse_checkpoint)
        self.load_button = QPushButton("Load")
        self.load_button.clicked.connect(self.load_checkpoint)
        outer.addLayout(_hbox(QLabel("Checkpoint"), self.checkpoint_edit, self.checkpoint_browse,
                              self.load_button))
        self.models_table = QTableWidget(0, 6)
        self.models_table.setHorizontalHeaderLabels(["Model", "Kind", "GAPs", "Epoch", "Best", "Device"])
        self.models_table.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.models_table.setSelectionMode(QAbstractItemView.SingleSelection)
        self.models_table.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.models_table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeToContents)
        self.models_table.verticalHeader().setVisible(False)
        self.models_table.setMaximumHeight(140)
        outer.addWidget(self.models_table)
        self.save_edit = QLineEdit()
        self.save_edit.setPlaceholderText("file to save the selected model's checkpoint to")
        self.save_browse = QPushButton("Browse…")
        self.save_browse.clicked.connect(self._browse_save)
        self.save_button = QPushButton("Save")
        self.save_button.clicked.connect(self.save_checkpoint)
        self.remove_button = QPushButton("Remove")
        self.remove_button.setToolTip("Forget the selected model in this session (its files stay)")
        self.remove_button.clicked.connect(self._remove_selected)
        outer.addLayout(_hbox(QLabel("Save as"), self.save_edit, self.save_browse, self.save_button))
        outer.addLayout(_hbox(self.remove_button))
        self.models_label = QLabel("")
        self.models_label.setWordWrap(True)
        outer.addWidget(self.models_label)
        return box

    # --- small helpers ------------------------------------------------------------------------

    def _error(self, text: str) -> None:
        self.last_error_text = text
        show_error(text)

    def device_choice(self) -> DeviceChoice:
        return choose_device(self.device_combo.currentData())

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

    def _browse_checkpoint(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Checkpoint", self.checkpoint_edit.text() or str(Path.home()),
                                              "Checkpoints (*.pt);;All files (*)")
        if path:
            self.checkpoint_edit.setText(path)

    def _browse_save(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save the checkpoint as", self.save_edit.text() or str(Path.home()),
                                              "Checkpoints (*.pt)", options=QFileDialog.DontConfirmOverwrite)
        if path:
            self.save_edit.setText(path)

    def train_config(self) -> TrainConfig:
        """The run's settings: the ``cpu_demo`` recipe with the widget's values."""
        spacing = float(self.spacing_spin.value())
        return replace(get_recipe("cpu_demo").train, n_gap=int(self.n_gap_combo.currentData()),
                       width=str(self.width_combo.currentData()), epochs=int(self.epochs_spin.value()),
                       batch_size=int(self.batch_spin.value()), lr=float(self.lr_spin.value()),
                       image_size=int(self.image_size_spin.value()),
                       pixel_spacing_mm=spacing if spacing > 0 else None,
                       min_nodule_area_mm2=float(self.min_area_spin.value()),
                       device=str(self.device_combo.currentData()))

    # --- training -------------------------------------------------------------------------------

    def _data_source(self) -> Callable[[TaskReporter, TrainConfig], tuple] | None:
        """A function (run in the worker) giving the (train, val) slices; None after an error shown."""
        if self.source_combo.currentData() == SOURCE_DATASET:
            text = self.dataset_edit.text().strip()
            folder = Path(text).expanduser()
            if not text or not (folder / "dataset.json").is_file():
                self._error(f"{folder if text else 'No data set folder given'}: no dataset.json there. Choose a "
                            "folder made by `wsnodule data ...` or saved by 'save as training data' in the "
                            "Nodules and export widget, or train on the open image and its labels instead.")
                return None

            def from_dataset(reporter: TaskReporter, config: TrainConfig) -> tuple:
                from wsnodule_core.data.dataset import load_dataset
                from wsnodule_core.data.slices import slices_from_dataset

                dataset = load_dataset(folder)
                slice_config = config.slice_config()
                train = slices_from_dataset(dataset, "train", slice_config, cancel=reporter.cancelled,
                                            progress=reporter.progress_fn("reading the training cases"))
                reporter.raise_if_cancelled()
                val = slices_from_dataset(dataset, "val", slice_config, cancel=reporter.cancelled,
                                          progress=reporter.progress_fn("reading the validation cases"))
                reporter.raise_if_cancelled()
                return train, (val if len(val) else None)

            return from_dataset
        image, labels = self.image_combo.layer(), self.labels_combo.layer()
        if image is None or labels is None:
            self._error("Pick an Image layer (the CT) and a Labels layer with the nodules painted on it, or "
                        "train on a data set folder instead.")
            return None
        try:
            volume = volume_of_layer(image)
            mask = mask_volume(labels.data, volume).array.copy()  # a copy: the user may keep painting
        except WsnoduleError as error:
            self._error(str(error))
            return None
        name = image.name

        def from_layers(reporter: TaskReporter, config: TrainConfig) -> tuple:
            from wsnodule_core.nam.volume_slices import volume_training_slices

            reporter.stage(f"cutting the training slices of '{name}' (lungs, crops)")
            return volume_training_slices(volume, mask, config.slice_config(), val_fraction=VAL_FRACTION,
                                          seed=config.seed, name=name)

        return from_layers

    def start_training(self, resume: bool = False) -> None:
        """Train (or resume) with the widget's settings in a worker thread."""
        out = self._out_dir()
        if out is None:
            self._error("Choose an output folder for the training run (best.pt and last.pt go there).")
            return
        existing = _checkpoints_in(out) if out.is_dir() else []
        if out.exists() and not out.is_dir():
            self._error(f"{out} is a file; choose a folder for the training run.")
            return
        if not resume and existing:
            self._error(f"{out} already holds {' and '.join(existing)} of an earlier run: press Resume to continue "
                        "it, or choose another output folder (nothing was overwritten).")
            return
        if resume and LAST not in existing:
            self._error(f"{out}: no {LAST} to resume; press Train to start a new run there.")
            return
        try:
            config = self.train_config()
        except ModelConfigError as error:
            self._error(str(error))
            return
        data_fn = self._data_source()
        if data_fn is None:
            return

        def work(reporter: TaskReporter) -> TrainOutcome:
            run_config = config
            if resume:  # the run keeps its own settings; only the epochs and the device come from the widget
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
            best = ""
            if result.best_metric is not None:
                metric = outcome.config.select_metric
                at_best = (result.history[result.best_epoch - 1]
                           if result.best_epoch and result.best_epoch <= len(result.history) else {})
                value = at_best.get(f"val_{metric}")
                validated = isinstance(value, float) and value == value  # nan: fell back to training accuracy
                label = f"validation {metric.replace('_', ' ')}" if validated else "training accuracy"
                best = f"best {label} {result.best_metric:.3f} at epoch {result.best_epoch}; "

            self.run_label.setText(f"Trained {result.epochs_completed} epochs {device}; {best}model "
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

    # --- models -----------------------------------------------------------------------------------

    def load_checkpoint(self) -> None:
        """Load the checkpoint in ``checkpoint_edit`` onto the chosen device, into the session."""
        text = self.checkpoint_edit.text().strip()
        if not text:
            self._error("Type or browse to a checkpoint (best.pt / last.pt, or its run folder) to load.")
            return
        path = Path(text).expanduser()
        if not path.exists():
            self._error(f"{path}: no such file or folder; give a best.pt / last.pt written by a training run.")
            return
        preference = self.device_combo.currentData()

        def work(reporter: TaskReporter) -> LoadedModel:
            reporter.stage(f"loading {path.name}")
            return load_session_model(path, choose_device(preference))

        self.tasks.run("Loading the checkpoint", work, self._loaded)

    def _loaded(self, model: LoadedModel) -> None:
        added = self.session.add_model(model)
        reason = f" ({model.device.fallback_reason})" if model.device.fallback_reason else ""
        self.models_label.setText(f"Loaded '{added.name}' on {model.device.device}{reason}.")

    def refresh_models(self) -> None:
        models = list(self.session.models.values())
        self.models_table.setRowCount(len(models))
        for row, model in enumerate(models):
            for column, text in enumerate(model_summary(model)):
                item = QTableWidgetItem(text)
                item.setToolTip(f"{model.path or 'no checkpoint file'}\n{model.device.describe()}")
                self.models_table.setItem(row, column, item)
        if models and not self.models_table.selectedItems():
            self.models_table.selectRow(len(models) - 1)

    def selected_model(self) -> LoadedModel | None:
        rows = self.models_table.selectionModel().selectedRows()
        if not rows:
            return None
        item = self.models_table.item(rows[0].row(), 0)
        return self.session.models.get(item.text()) if item is not None else None

    def select_model(self, name: str) -> None:
        for row in range(self.models_table.rowCount()):
            if self.models_table.item(row, 0).text() == name:
                self.models_table.selectRow(row)
                return

    def _remove_selected(self) -> None:
        model = self.selected_model()
        if model is not None:
            self.session.remove_model(model.name)

    def save_checkpoint(self) -> None:
        """Copy the selected model's checkpoint file to ``save_edit`` (never over an existing file)."""
        model = self.selected_model()
        if model is None:
            self._error("Select a model in the list to save its checkpoint.")
            return
        if model.path is None:
            self._error(f"'{model.name}' has no checkpoint file to save.")
            return
        text = self.save_edit.text().strip()
        if not text:
            self._error("Type or browse to the file to save the checkpoint to.")
            return
        target = Path(text).expanduser()
        if target.is_file():
            self._error(f"{target} already exists; choose another file name (nothing was overwritten).")
            return
        source = Path(model.path)

        def work(reporter: TaskReporter) -> Path:
            reporter.stage(f"copying {source.name}")
            return copy_checkpoint(source, target)

        self.tasks.run("Saving the checkpoint", work, self._saved)

    def _saved(self, path: Path) -> None:
        self.last_saved = path
        self.models_label.setText(f"Saved the checkpoint to {path}.")
        show_info(f"Checkpoint saved to {path}")


def _spin(low: int, high: int, value: int) -> QSpinBox:
    spin = QSpinBox()
    spin.setRange(low, high)
    spin.setValue(value)
    return spin


def _hbox(*widgets: QWidget) -> QHBoxLayout:
    row = QHBoxLayout()
    for widget in widgets:
        row.addWidget(widget)
    return row
