"""The flow widget's mask panel: the threshold rule of the difference map and its HU floor."""

from __future__ import annotations

from typing import Any

from qtpy.QtWidgets import QFormLayout

from napari_wsnodule.widgets._base import Panel, WsnoduleWidget
from napari_wsnodule.widgets._controls import double_spin, value_combo


class MaskPanel(Panel):
    """Threshold rule, its value and the floor (HU)."""

    def __init__(self, dock: WsnoduleWidget) -> None:
        from wsnodule_core.flow.attribution import RULES, ThresholdRule

        super().__init__("Mask", dock)
        d = ThresholdRule()
        form = QFormLayout(self)
        self.threshold_combo = value_combo(RULES, d.kind)
        self.threshold_combo.setToolTip("fraction: >= value x the largest difference in the lungs; otsu: "
                                        "Otsu's threshold; top_percent: the value % of lung voxels that "
                                        "changed most.")
        self.threshold_combo.currentIndexChanged.connect(self._rule_changed)
        self.threshold_spin = double_spin(0.001, 1.0, d.value, 3, 0.05)
        self.floor_spin = double_spin(0.0, 2000.0, 0.0, 1, 5.0)
        self.floor_spin.setSuffix(" HU")
        self.floor_spin.setToolTip("Differences below this are ignored first, so reconstruction noise alone "
                                   "gives an empty mask (20 HU is a reasonable start).")
        form.addRow("Threshold rule", self.threshold_combo)
        form.addRow("Value", self.threshold_spin)
        form.addRow("Floor", self.floor_spin)
        self._rule_changed()

    def _rule_changed(self, *_: Any) -> None:
        kind = self.threshold_combo.currentData()
        self.threshold_spin.setEnabled(kind != "otsu")
        high = 100.0 if kind == "top_percent" else 1.0
        self.threshold_spin.setRange(0.001, high)
        self.threshold_spin.setSuffix(" %" if kind == "top_percent" else "")

    def rule(self) -> Any:
        """The ThresholdRule."""
        from wsnodule_core.flow.attribution import ThresholdRule

        return ThresholdRule(str(self.threshold_combo.currentData()), float(self.threshold_spin.value()))

    def floor_hu(self) -> float:
        return float(self.floor_spin.value())
