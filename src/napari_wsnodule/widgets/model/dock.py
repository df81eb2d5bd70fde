"""The Model dock widget: pick the device, train the NAM classifier, load and save checkpoints.

It composes three panels, one per stage (:mod:`.device_panel`, :mod:`.training_panel`,
:mod:`.models_panel`) and the task panel. Trained and loaded models go into the viewer's session,
where the NAM widget finds them.
"""

from __future__ import annotations

from qtpy.QtWidgets import QWidget

import napari
from napari_wsnodule._warm_up import warm_up_torch_in_background
from napari_wsnodule.widgets._base import WsnoduleWidget
from napari_wsnodule.widgets.model.device_panel import DevicePanel
from napari_wsnodule.widgets.model.models_panel import ModelsPanel
from napari_wsnodule.widgets.model.training_panel import TrainingPanel


class ModelWidget(WsnoduleWidget):
    """Train, load, list and save models; choose the device."""

    def __init__(self, napari_viewer: napari.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(napari_viewer, parent)
        warm_up_torch_in_background()
        self.device = DevicePanel(self)
        self.training = TrainingPanel(self, self.device)
        self.models = ModelsPanel(self, self.device)
        layout = self.layout()
        for panel in (self.device, self.training, self.models):
            layout.addWidget(panel)
        layout.addWidget(self.tasks)
        layout.addStretch(1)
