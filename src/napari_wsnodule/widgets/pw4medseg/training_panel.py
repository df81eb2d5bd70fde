"""The PW4MedSeg widget's training panel: train the probabilistic transformer on the picked CT alone, with
its pseudo-label's probability as the soft target and its confidence as the voxel weights
(:func:`~wsnodule_core.pw4medseg.volume_training.train_on_volume`), the loss plotted as it goes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qtpy.QtWidgets import QFileDialog, QFormLayout, QLabel, QLineEdit, QPushButton, QSpinBox, QVBoxLayout

from napari_wsnodule._session import LoadedModel
from napari_wsnodule._tasks import TaskReporter
from napari_wsnodule.widgets._base import Panel, device_picker
from napari_wsnodule.widgets._loss_plot import LossPlot
from napari_wsnodule.widgets._view import row_of
from wsnodule_core.errors import WsnoduleError
from wsnodule_core.training.device import DeviceChoice

if TYPE_CHECKING:
    from napari_wsnodule.widgets.pw4medseg.dock import Pw4MedSegWidget

RUN_FILES = ("best.pt", "last.pt")


@dataclass(frozen=True, eq=False)
class TrainOutcome:
    source: Any
    result: Any                  # wsnodule_core.training.result.RunResult
    model: LoadedModel | None    # None when cancelled
    device: DeviceChoice
    out_dir: Path


def pw4medseg_kind() -> str:
    """The checkpoint kind of PW4MedSeg models (train.py, imported on first use: it needs torch)."""
    from wsnodule_core.pw4medseg.config import KIND

    return str(KIND)


def _spin(value: int) -> QSpinBox:
    spin = QSpinBox()
    spin.setRange(1, 100_000)
    spin.setValue(value)
    return spin


class TrainingPanel(Panel):
    """Device, epochs, steps, output folder, Train; ``train_overrides`` (a dict scripts and tests may set,
    e.g. a smaller model) goes into the run's config last."""

    def __init__(self, dock: Pw4MedSegWidget) -> None:
        super().__init__("Train on this CT", dock)
        self.dock: Pw4MedSegWidget = dock
        self.train_overrides: dict[str, Any] = {}
        self._training = False
        outer = QVBoxLayout(self)
        form = QFormLayout()
        self.device_combo, self.device_label = device_picker()
        self.epochs_spin = _spin(20)
        self.steps_spin = _spin(50)
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
        self.tasks.snapshot_changed.connect(self._on_snapshot)
        self.tasks.task_finished.connect(self._on_task_finished)

    def _out_dir(self) -> Path | None:
        text = self.out_edit.text().strip()
        return Path(text).expanduser() if text else None

    def _browse_out(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Output folder of the run", self.out_edit.text() or
                                                  str(Path.home()))
        if folder:
            self.out_edit.setText(folder)

    def device_preference(self) -> str:
        return str(self.device_combo.currentData())

    def train_config(self) -> Any:
        """The run's PwTrainConfig: train.py's CPU-sized defaults, the panel's epochs, steps and device, then
        ``train_overrides``."""
        from wsnodule_core.pw4medseg.config import PwTrainConfig

        values = {"epochs": int(self.epochs_spin.value()), "steps_per_epoch": int(self.steps_spin.value()),
                  "device": self.device_preference(), **self.train_overrides}
        return PwTrainConfig(**values)

    def _checked_out_dir(self) -> Path | None:
        out = self._out_dir()
        if out is None:
            self.error("Choose an output folder for the training run (best.pt and last.pt go there).")
            return None
        if out.exists() and not out.is_dir():
            self.error(f"{out} is a file; choose a folder for the training run.")
            return None
        held = [name for name in RUN_FILES if (out / name).exists()]
        if held:
            self.error(f"{out} already holds {' and '.join(held)} of an earlier run; choose another output "
                       "folder (nothing was overwritten).")
            return None
        return out

    def start_training(self) -> None:
        """Train the probabilistic transformer on the picked CT and the pseudo-label made for it."""
        annotations_panel = self.dock.annotations
        got = annotations_panel.source_volume("train")
        if got is None:
            return
        source, volume = got
        out = self._checked_out_dir()
        if out is None:
            return
        run = self.dock.last_pseudo
        if run is None or run.source is not source:
            self.error(f"No pseudo-label was made for {source.name!r} yet: press 'Make pseudo-label' first, then "
                       "Train.")
            return
        current = annotations_panel.read(source, volume)
        if current is None:
            return
        if current != run.annotations or not run.volume.same_geometry(volume):
            self.error(f"The annotations of {source.name!r} changed since its pseudo-label was made: press 'Make "
                       "pseudo-label' again, then Train.")
            return
        try:
            config = self.train_config()
        except WsnoduleError as error:
            self.error(str(error))
            return
        name = source.name

        def work(reporter: TaskReporter) -> TrainOutcome:
            from wsnodule_core.pw4medseg.volume_training import train_on_volume

            reporter.stage(f"training on '{name}' (targets, then steps)")
            trained = train_on_volume(volume, run.label, out, config, lungs=run.lungs, name=name,
                                      callbacks=reporter.train_callbacks(),
                                      progress=reporter.progress_fn("building the training target"))
            if trained.cancelled:
                return TrainOutcome(source, trained.run, None, trained.device, out)
            checkpoint = trained.checkpoint
            loaded = LoadedModel(out.name or str(out), pw4medseg_kind(), trained.model, checkpoint, trained.device,
                                 checkpoint.path)
            return TrainOutcome(source, trained.run, loaded, trained.device, out)

        self.loss_plot.clear()
        self.run_label.setText("")
        self._training = True
        if self.tasks.run(f"Training on {source.name}", work, self._trained) is None:
            self._training = False

    def _trained(self, outcome: TrainOutcome) -> None:
        self.dock.last_train = outcome
        result = outcome.result
        where = f"on {outcome.device.device}" + (f" ({outcome.device.fallback_reason})"
                                                 if outcome.device.fallback_reason else "")
        if outcome.model is None:
            self.run_label.setText(f"Training cancelled after {result.epochs_completed} epoch(s) {where}; "
                                   f"{result.last_path} kept.")
            return
        added = self.session.add_model(outcome.model)
        self.dock.inference.refresh_models()
        self.dock.inference.select_model(added)
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
