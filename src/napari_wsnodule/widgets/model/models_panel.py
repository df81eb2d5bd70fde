"""The Model widget's models panel: load NAM / U-Net checkpoints into the viewer's session, list the session's
models, save the selected one's checkpoint, forget it."""

from __future__ import annotations

from pathlib import Path

from qtpy.QtWidgets import (
    QAbstractItemView,
    QFileDialog,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
)

from napari_wsnodule._session import LoadedModel
from napari_wsnodule._tasks import TaskReporter
from napari_wsnodule.widgets._base import Panel, WsnoduleWidget
from napari_wsnodule.widgets._controls import hbox
from napari_wsnodule.widgets.model.device_panel import DevicePanel
from wsnodule_core.errors import CheckpointError
from wsnodule_core.baselines.unet.train import KIND as UNET_KIND
from wsnodule_core.nam.model import KIND as NAM_KIND
from wsnodule_core.segmentation.load import load_model_of_kind
from wsnodule_core.training.checkpoint import load_checkpoint
from wsnodule_core.training.device import DeviceChoice, choose_device
from wsnodule_core.training.export import copy_checkpoint

COLUMNS = ("Model", "Kind", "GAPs", "Epoch", "Best", "Device")


def load_session_model(path: Path, device: DeviceChoice) -> LoadedModel:
    """A NAM or U-Net checkpoint (file or run folder) as a :class:`LoadedModel` on ``device``."""
    checkpoint = load_checkpoint(path)
    if checkpoint.kind in (NAM_KIND, UNET_KIND):  # loaded as the front door loads them
        model, checkpoint = load_model_of_kind(checkpoint.path, checkpoint.kind, device.device)
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


class ModelsPanel(Panel):
    """Checkpoint to load, the session's models, Save as, Remove."""

    def __init__(self, dock: WsnoduleWidget, device: DevicePanel) -> None:
        super().__init__("Models", dock)
        self.device = device
        self.last_saved: Path | None = None
        outer = QVBoxLayout(self)
        self.checkpoint_edit = QLineEdit()
        self.checkpoint_edit.setPlaceholderText("best.pt / last.pt or its run folder")
        self.checkpoint_browse = QPushButton("Browse…")
        self.checkpoint_browse.clicked.connect(self._browse_checkpoint)
        self.load_button = QPushButton("Load")
        self.load_button.clicked.connect(self.load_checkpoint)
        outer.addLayout(hbox(QLabel("Checkpoint"), self.checkpoint_edit, self.checkpoint_browse, self.load_button))
        self.models_table = QTableWidget(0, len(COLUMNS))
        self.models_table.setHorizontalHeaderLabels(list(COLUMNS))
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
        outer.addLayout(hbox(QLabel("Save as"), self.save_edit, self.save_browse, self.save_button))
        outer.addLayout(hbox(self.remove_button))
        self.models_label = QLabel("")
        self.models_label.setWordWrap(True)
        outer.addWidget(self.models_label)
        self.session.models_changed.connect(self.refresh_models)
        self.refresh_models()

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

    def load_checkpoint(self) -> None:
        """Load the checkpoint in ``checkpoint_edit`` onto the chosen device, into the session."""
        text = self.checkpoint_edit.text().strip()
        if not text:
            self.error("Type or browse to a checkpoint (best.pt / last.pt, or its run folder) to load.")
            return
        path = Path(text).expanduser()
        if not path.exists():
            self.error(f"{path}: no such file or folder; give a best.pt / last.pt written by a training run.")
            return
        preference = self.device.preference()

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
            self.error("Select a model in the list to save its checkpoint.")
            return
        if model.path is None:
            self.error(f"'{model.name}' has no checkpoint file to save.")
            return
        text = self.save_edit.text().strip()
        if not text:
            self.error("Type or browse to the file to save the checkpoint to.")
            return
        target = Path(text).expanduser()
        if target.is_file():
            self.error(f"{target} already exists; choose another file name (nothing was overwritten).")
            return
        source = Path(model.path)

        def work(reporter: TaskReporter) -> Path:
            reporter.stage(f"copying {source.name}")
            return copy_checkpoint(source, target)

        self.tasks.run("Saving the checkpoint", work, self._saved)

    def _saved(self, path: Path) -> None:
        self.last_saved = path
        self.models_label.setText(f"Saved the checkpoint to {path}.")
        self.dock.info(f"Checkpoint saved to {path}")
