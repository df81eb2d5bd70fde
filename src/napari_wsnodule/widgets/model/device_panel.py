"""The Model widget's device panel: where training and loading run (Auto, CPU, CUDA, MPS)."""

from __future__ import annotations

from qtpy.QtWidgets import QFormLayout

from napari_wsnodule.widgets._base import Panel, WsnoduleWidget, device_picker
from wsnodule_core.training.device import DeviceChoice, choose_device


class DevicePanel(Panel):
    """The device combo and the line saying what it resolves to."""

    def __init__(self, dock: WsnoduleWidget) -> None:
        super().__init__("Device", dock)
        form = QFormLayout(self)
        self.device_combo, self.device_label = device_picker()
        form.addRow("Run on", self.device_combo)
        form.addRow(self.device_label)

    def preference(self) -> str:
        return str(self.device_combo.currentData())

    def choice(self) -> DeviceChoice:
        return choose_device(self.device_combo.currentData())
