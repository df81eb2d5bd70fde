"""The PW4MedSeg dock widget: sparse annotations on the open CT -> probabilistic pseudo-label -> train -> infer.

It composes four panels, one per stage (:mod:`.annotations_panel`, :mod:`.pseudo_label_panel`,
:mod:`.training_panel`, :mod:`.inference_panel`), the task panel and a summary line. Results
(pseudo-label probability and confidence, the network's probability and uncertainty, a new Labels
layer for its mask) are tied to the CT picked when their task started and are added one layer per
event-loop turn.
"""

from __future__ import annotations

from typing import Any, Callable

from qtpy.QtWidgets import QLabel, QWidget

import napari
from napari_wsnodule._layers import show_overlay
from napari_wsnodule._warm_up import warm_up_torch_in_background
from napari_wsnodule.widgets._base import WsnoduleWidget
from napari_wsnodule.widgets._staged import StagedSteps
from napari_wsnodule.widgets.pw4medseg.annotations_panel import AnnotationsPanel
from napari_wsnodule.widgets.pw4medseg.inference_panel import InferencePanel, InferRun
from napari_wsnodule.widgets.pw4medseg.pseudo_label_panel import PseudoLabelPanel, PseudoRun
from napari_wsnodule.widgets.pw4medseg.training_panel import TrainingPanel, TrainOutcome
from wsnodule_core.io.volume import Volume


class Pw4MedSegWidget(WsnoduleWidget):
    """Sparse annotations -> pseudo-label -> train the probabilistic transformer -> segment with uncertainty."""

    def __init__(self, napari_viewer: napari.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(napari_viewer, parent)
        self.last_pseudo: PseudoRun | None = None
        self.last_train: TrainOutcome | None = None
        self.last_infer: InferRun | None = None
        self.last_layers: dict[str, Any] = {}
        self._staged = StagedSteps(self.error)
        warm_up_torch_in_background()
        self.summary_label = QLabel("")
        self.summary_label.setWordWrap(True)
        self.annotations = AnnotationsPanel(self)
        self.pseudo_label = PseudoLabelPanel(self)
        self.training = TrainingPanel(self)
        self.inference = InferencePanel(self)
        layout = self.layout()
        for panel in (self.annotations, self.pseudo_label, self.training, self.inference):
            layout.addWidget(panel)
        layout.addWidget(self.tasks)
        layout.addWidget(self.summary_label)
        layout.addStretch(1)

    # --- results, one layer per event-loop turn ------------------------------------------------------------

    @property
    def showing(self) -> bool:
        return self._staged.busy

    def busy_showing(self) -> bool:
        """True (and says so) while earlier results are still being added."""
        if self._staged.busy:
            self.info("The previous results are still being added to the viewer; press again in a moment.")
            return True
        return False

    def show_layers(self, steps: list[tuple[str, Callable[[], Any]]],
                    done: Callable[[dict[str, Any]], None]) -> None:
        def finished(layers: dict[str, Any]) -> None:
            self.last_layers = layers
            done(layers)

        self._staged.start(steps, finished)

    def map_layer(self, volume: Volume, name: str, source: Any, generated: str, colormap: str, *,
                  visible: bool = True, limits: tuple[float, float] = (0.0, 1.0)) -> Any:
        """A probability-like map over the CT (refreshed in place on a later run) in the overlay style,
        brightest at ``limits[1]``."""
        return show_overlay(self.viewer, volume, name, source=source, generated=generated, colormap=colormap,
                            top=limits[1], visible=visible, reveal_later=True)
