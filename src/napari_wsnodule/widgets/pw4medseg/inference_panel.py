"""The PW4MedSeg widget's inference panel: pick or load a model, K stochastic passes over the picked CT,
probability and uncertainty maps and a new mask layer on the CT picked when the task started."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtWidgets import QComboBox, QFileDialog, QFormLayout, QLineEdit, QPushButton, QSpinBox, QVBoxLayout

from napari_wsnodule._layers import add_volume_layer, result_name
from napari_wsnodule._session import LoadedModel
from napari_wsnodule._tasks import TaskReporter
from napari_wsnodule.widgets._base import Panel
from napari_wsnodule.widgets._view import row_of
from napari_wsnodule.widgets.pw4medseg.training_panel import pw4medseg_kind
from wsnodule_core.io.volume import Volume
from wsnodule_core.training.device import choose_device

if TYPE_CHECKING:
    from napari_wsnodule.widgets.pw4medseg.dock import Pw4MedSegWidget


@dataclass(frozen=True, eq=False)
class InferRun:
    source: Any
    volume: Volume
    probability: Volume
    uncertainty: Volume
    mask: Volume
    model_name: str
    passes: int
    threshold: float


class InferencePanel(Panel):
    """Model (the session's PW4MedSeg models), checkpoint loading, passes K, Infer."""

    def __init__(self, dock: Pw4MedSegWidget) -> None:
        super().__init__("Segment", dock)
        self.dock: Pw4MedSegWidget = dock
        outer = QVBoxLayout(self)
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
        self.session.models_changed.connect(self.refresh_models)
        self.refresh_models()

    # --- models -----------------------------------------------------------------------------------------

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
            self.error(f"{path if text else 'No checkpoint given'}: give the best.pt / last.pt (or the run "
                       "folder) of a PW4MedSeg training run.")
            return
        preference = self.dock.training.device_preference()

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
        self.select_model(added)
        reason = f" ({model.device.fallback_reason})" if model.device.fallback_reason else ""
        self.dock.summary_label.setText(f"Loaded '{added.name}' on {model.device.device}{reason}.")

    def select_model(self, model: LoadedModel) -> None:
        for i in range(self.model_combo.count()):
            if self.model_combo.itemData(i) is model:
                self.model_combo.setCurrentIndex(i)

    def selected_model(self) -> LoadedModel | None:
        return self.model_combo.currentData() if self.model_combo.count() else None

    # --- inference --------------------------------------------------------------------------------------

    def start_inference(self) -> None:
        """K stochastic passes of the chosen model over the picked CT (thread worker)."""
        got = self.dock.annotations.source_volume("segment")
        if got is None or self.dock.busy_showing():
            return
        source, volume = got
        model = self.selected_model()
        if model is None:
            self.error("No PW4MedSeg model is loaded: train one here (Train) or load a PW4MedSeg checkpoint "
                       "(Checkpoint, Load), then press Infer.")
            return
        passes = int(self.passes_spin.value())

        def work(reporter: TaskReporter) -> InferRun:
            from wsnodule_core.segmentation import segmenter_for_model

            # the front door's segmenter: the checkpoint's grid and validation threshold, as on the command line
            segmenter = segmenter_for_model(model.kind, model.model, model.checkpoint, name=model.name,
                                            passes=passes)
            result = segmenter.segment(volume, lungs=None,
                                       progress=reporter.progress_fn(f"segmenting: {passes} passes"),
                                       cancel=reporter.cancelled)
            probability = _on_grid(result.maps["probability"], volume, np.float32)
            uncertainty = _on_grid(result.maps["uncertainty"], volume, np.float32)
            return InferRun(source, volume, probability, uncertainty, result.mask, model.name, passes,
                            float(segmenter.threshold))

        self.tasks.run(f"PW4MedSeg segmentation of {source.name}", work, self.show_inference)

    def show_inference(self, run: InferRun) -> None:
        source, dock = run.source, self.dock
        dock.last_infer = run
        top = max(float(run.uncertainty.array.max()), 1e-6)
        names = {what: result_name(source, f"PW4MedSeg {what}") for what in ("probability", "uncertainty", "mask")}
        dock.show_layers([
            ("probability", lambda: dock.map_layer(run.probability, names["probability"], source,
                                                   "pw4medseg:probability", "magma")),
            ("uncertainty", lambda: dock.map_layer(run.uncertainty, names["uncertainty"], source,
                                                   "pw4medseg:uncertainty", "cyan", visible=False,
                                                   limits=(0.0, top))),
            # a mask is a result to correct: always a new layer
            ("mask", lambda: add_volume_layer(self.viewer, run.mask, "labels", names["mask"],
                                              source=source, generated="pw4medseg:mask", reveal_later=True)),
        ], lambda layers: self._inferred(run, layers))

    def _inferred(self, run: InferRun, layers: dict[str, Any]) -> None:
        voxels = int(np.count_nonzero(run.mask.array))
        self.dock.summary_label.setText(
            f"{run.model_name}, {run.passes} passes: {voxels} voxels at or above {run.threshold:.2f} (the threshold "
            f"its validation chose) in '{layers['mask'].name}', one label per nodule. The "
            "uncertainty layer shows where the passes disagree; correct the mask with the paint and erase tools.")
        self.dock.info(f"PW4MedSeg segmentation of {run.source.name}: {voxels} nodule voxels.")


def _on_grid(array: Any, volume: Volume, dtype: Any) -> Volume:
    array = np.asarray(array.array if isinstance(array, Volume) else array, dtype)
    return volume.with_array(array)
