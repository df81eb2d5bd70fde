"""The flow widget's models panel: the device, the flow prior and the patch predictor, loaded in workers."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qtpy.QtWidgets import QFileDialog, QFormLayout, QLabel, QLineEdit, QPushButton

from napari_wsnodule._tasks import TaskReporter
from napari_wsnodule.widgets._base import Panel, WsnoduleWidget, device_picker
from napari_wsnodule.widgets._view import row_of
from wsnodule_core.errors import FlowProtocolError
from wsnodule_core.flow.on_volume import intensity_bounds, patch_protocol
from wsnodule_core.training.checkpoint import BEST, LAST
from wsnodule_core.training.device import DeviceChoice, choose_device


@dataclass(frozen=True, eq=False)
class LoadedPrior:
    model: Any                # VelocityUNet (EMA weights, eval mode) on device.device
    config: Any               # PriorTrainConfig: patch, spacing_mm, hu_window, intensity_range, to_hu
    device: DeviceChoice
    path: Path


@dataclass(frozen=True, eq=False)
class LoadedPredictor:
    model: Any                # PredictorModule, eval mode
    patch_config: Any         # PatchConfig it was trained on, or None when the checkpoint does not say
    device: DeviceChoice
    path: Path


def load_flow_prior(path: Path, device: DeviceChoice) -> LoadedPrior:
    from wsnodule_core.flow.train_prior import load_prior

    model, config = load_prior(path, device.device)
    path = Path(path)
    if path.is_dir():  # the file load_checkpoint read
        path = path / BEST if (path / BEST).exists() else path / LAST
    return LoadedPrior(model, config, device, path)


def load_flow_predictor(path: Path, device: DeviceChoice) -> LoadedPredictor:
    from wsnodule_core.flow.predictors import load_predictor, trained_patch_config

    model, checkpoint = load_predictor(path, device.device)
    return LoadedPredictor(model, trained_patch_config(checkpoint), device, Path(checkpoint.path))


def describe_prior(prior: LoadedPrior) -> str:
    c = prior.config
    spacing = f"{c.spacing_mm:g} mm" if c.spacing_mm else "the scans' own spacing"
    low, high = intensity_bounds(c)
    return (f"{prior.path.name}: {c.patch}³ voxels at {spacing}, HU [{c.hu_window[0]:g}, "
            f"{c.hu_window[1]:g}] → [{low:g}, {high:g}], on {prior.device.device}")


def describe_predictor(predictor: LoadedPredictor) -> str:
    p = predictor.patch_config
    if p is None:
        return f"{predictor.path.name}: patch protocol not recorded, on {predictor.device.device}"
    return (f"{predictor.path.name}: {p.size}³ voxels at {p.spacing_mm:g} mm, HU [{p.window[0]:g}, "
            f"{p.window[1]:g}] → [0, 1], on {predictor.device.device}")


class ModelsPanel(Panel):
    """Device, prior and predictor; ``prior`` and ``predictor`` hold what was loaded."""

    def __init__(self, dock: WsnoduleWidget) -> None:
        super().__init__("Models", dock)
        self.prior: LoadedPrior | None = None
        self.predictor: LoadedPredictor | None = None
        form = QFormLayout(self)
        self.device_combo, self.device_label = device_picker()
        self.prior_edit = QLineEdit()
        self.prior_edit.setPlaceholderText("last.pt of the flow prior, or its run folder")
        self.prior_browse = QPushButton("Browse…")
        self.prior_browse.clicked.connect(lambda: self._browse(self.prior_edit, "Flow prior checkpoint"))
        self.prior_load_button = QPushButton("Load")
        self.prior_load_button.clicked.connect(self.load_prior_checkpoint)
        self.predictor_edit = QLineEdit()
        self.predictor_edit.setPlaceholderText("best.pt / last.pt of the patch predictor, or its run folder")
        self.predictor_browse = QPushButton("Browse…")
        self.predictor_browse.clicked.connect(
            lambda: self._browse(self.predictor_edit, "Predictor checkpoint"))
        self.predictor_load_button = QPushButton("Load")
        self.predictor_load_button.clicked.connect(self.load_predictor_checkpoint)
        self.models_label = QLabel("No prior, no predictor loaded.")
        self.models_label.setWordWrap(True)
        form.addRow("Run on", self.device_combo)
        form.addRow(self.device_label)
        form.addRow("Prior", row_of(self.prior_edit, self.prior_browse, self.prior_load_button))
        form.addRow("Predictor",
                    row_of(self.predictor_edit, self.predictor_browse, self.predictor_load_button))
        form.addRow(self.models_label)

    def _browse(self, edit: QLineEdit, title: str) -> None:
        path, _ = QFileDialog.getOpenFileName(self, title, edit.text() or str(Path.home()),
                                              "Checkpoints (*.pt);;All files (*)")
        if path:
            edit.setText(path)

    def device_choice(self) -> DeviceChoice:
        return choose_device(self.device_combo.currentData())

    def _checkpoint_path(self, edit: QLineEdit, what: str) -> Path | None:
        text = edit.text().strip()
        if not text:
            self.error(f"Type or browse to the {what} checkpoint (a .pt file or its run folder), then press "
                       "Load.")
            return None
        path = Path(text).expanduser()
        if not path.exists():
            self.error(f"{path}: no such file or folder; give the {what} checkpoint written by its "
                       "training run.")
            return None
        return path

    def load_prior_checkpoint(self) -> None:
        """Load the prior in ``prior_edit`` onto the chosen device (in a worker)."""
        path = self._checkpoint_path(self.prior_edit, "flow prior")
        if path is None:
            return
        device = self.device_choice()

        def work(reporter: TaskReporter) -> LoadedPrior:
            reporter.stage(f"loading the prior {path.name}")
            return load_flow_prior(path, device)

        self.tasks.run("Loading the flow prior", work, self.prior_loaded)

    def load_predictor_checkpoint(self) -> None:
        """Load the predictor in ``predictor_edit`` onto the chosen device (in a worker)."""
        path = self._checkpoint_path(self.predictor_edit, "patch predictor")
        if path is None:
            return
        device = self.device_choice()

        def work(reporter: TaskReporter) -> LoadedPredictor:
            reporter.stage(f"loading the predictor {path.name}")
            return load_flow_predictor(path, device)

        self.tasks.run("Loading the patch predictor", work, self.predictor_loaded)

    def prior_loaded(self, prior: LoadedPrior) -> None:
        self.prior = prior
        self._update_label()

    def predictor_loaded(self, predictor: LoadedPredictor) -> None:
        self.predictor = predictor
        self._update_label()

    def _update_label(self) -> None:
        lines = [f"Prior: {describe_prior(self.prior)}" if self.prior else "Prior: not loaded",
                 f"Predictor: {describe_predictor(self.predictor)}" if self.predictor
                 else "Predictor: not loaded"]
        if self.prior is not None and self.predictor is not None:
            try:
                size, spacing = patch_protocol(self.prior.config, self.predictor.patch_config)
                lines.append(f"Patches: {size}³ voxels at {spacing:g} mm.")
            except FlowProtocolError as error:
                lines.append(f"⚠ {error}")
        self.models_label.setText("\n".join(lines))
