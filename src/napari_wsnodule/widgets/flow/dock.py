"""The flow-guidance dock widget: guide the rectified-flow prior towards "no nodule" around chosen points.

It composes the input, models, guidance and mask panels, a Run button and the task panel. Run hands
the CT, the centres and the loaded models to :func:`~wsnodule_core.flow.on_volume.guide_at_points` in
a worker (cubes cut at the prior's patch protocol, each with its own geometry, guided and
thresholded); :mod:`.results` shows per patch the counterfactual (HU), the difference ``|x - x_cf|``
(HU, additive heat map), the return-path trajectory (4D, leading axis the integration step, t0 -> 0)
and the mask, plus the union of the masks on the CT's own grid, tied to the CT layer picked at Run.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from qtpy.QtWidgets import QWidget

import napari
from napari_wsnodule._geometry import mask_volume, volume_of_layer
from napari_wsnodule._tasks import TaskReporter
from napari_wsnodule.widgets._base import WsnoduleWidget
from napari_wsnodule.widgets._staged import StagedSteps
from napari_wsnodule.widgets.flow.guidance_panel import GuidancePanel
from napari_wsnodule.widgets.flow.inputs_panel import InputsPanel
from napari_wsnodule.widgets.flow.mask_panel import MaskPanel
from napari_wsnodule.widgets.flow.models_panel import ModelsPanel
from napari_wsnodule.widgets.flow.results import CT_MASK, FlowRun, layer_steps, per_patch, summary_text
from wsnodule_core.errors import WsnoduleError
from wsnodule_core.flow.on_volume import intensity_bounds, patch_protocol

NO_CT = "Open a CT first (File > Open, or the Load CT widget), then press Run."
NO_PRIOR = ("No flow prior is loaded: give its checkpoint (last.pt of `python -m "
            "wsnodule_core.flow.train_prior`, or the run folder) under 'Prior' and press Load, then press "
            "Run again.")
NO_PREDICTOR = ("No patch predictor is loaded: give its checkpoint (best.pt / last.pt of train_predictor, or "
                "the run folder) under 'Predictor' and press Load, then press Run again.")


class FlowGuidanceWidget(WsnoduleWidget):
    """Guide the flow prior with a patch predictor around points of a CT and show what changed."""

    def __init__(self, napari_viewer: napari.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(napari_viewer, parent)
        self.last_run: FlowRun | None = None
        self.last_layers: list[dict[str, Any]] = []
        self.last_ct_mask: Any = None
        self._staged = StagedSteps(self.error, "the flow guidance results")
        self.inputs = InputsPanel(self)
        self.models = ModelsPanel(self)
        self.guidance = GuidancePanel(self)
        self.mask = MaskPanel(self)
        layout = self.layout()
        for panel in (self.inputs, self.models, self.guidance, self.mask):
            layout.addWidget(panel)
        self.run_button = self.add_run_row("Run", self.start_guidance)
        layout.addStretch(1)

    @property
    def showing(self) -> bool:
        """True while the layers of a finished run are still being added."""
        return self._staged.busy

    def start_guidance(self) -> None:
        source = self.inputs.image_combo.layer()
        prior, predictor = self.models.prior, self.models.predictor
        if source is None:
            self.error(NO_CT)
            return
        if prior is None:
            self.error(NO_PRIOR)
            return
        if predictor is None:
            self.error(NO_PREDICTOR)
            return
        if self.showing:
            self.info("The previous results are still being added to the viewer; press Run again in a "
                      "moment.")
            return
        lungs_layer = self.inputs.lungs_combo.layer()
        try:
            size, spacing = patch_protocol(prior.config, predictor.patch_config)
            config = self.guidance.config(intensity_bounds(prior.config))
            rule = self.mask.rule()
            volume = volume_of_layer(source)
            centres = self.inputs.patch_centres(volume, source.name)
            lungs = None
            if lungs_layer is not None:
                lungs = mask_volume((np.asarray(lungs_layer.data) > 0).astype(np.uint8), volume)
        except WsnoduleError as error:
            self.error(f"Cannot run the guidance on {source.name!r}: {error}")
            return
        floor_hu = self.mask.floor_hu()

        def work(reporter: TaskReporter) -> FlowRun:
            from wsnodule_core.flow.on_volume import guide_at_points

            reporter.stage(f"cutting {len(centres)} patch(es) of {size}³ voxels at {spacing:g} mm")
            result = guide_at_points(volume, centres, prior.model, predictor.model, config, rule,
                                     prior_config=prior.config, patch_config=predictor.patch_config,
                                     floor_hu=floor_hu, lungs=lungs, name=source.name,
                                     progress=reporter.progress_fn("guidance: integration steps"),
                                     cancel=reporter.cancelled)
            return FlowRun(source, result)

        self.tasks.run(f"Flow guidance on {source.name}", work, self.show_run)

    def show_run(self, run: FlowRun) -> None:
        """Put a finished run into the viewer, one layer per event-loop turn (short pause between)."""
        self._staged.start(layer_steps(self.viewer, run), lambda made: self._shown(run, made))

    def _shown(self, run: FlowRun, made: dict) -> None:
        self.last_run, self.last_layers = run, per_patch(made, len(run.result.patches))
        self.last_ct_mask = made[CT_MASK]
        self.summary_label.setText(summary_text(run, self.last_layers, self.last_ct_mask))
        result = run.result
        self.info(f"Flow guidance on {run.source.name}: P(nodule) "
                  + ", ".join(f"{a:.2f} → {b:.2f}" for a, b in zip(result.p_before, result.p_after)))
