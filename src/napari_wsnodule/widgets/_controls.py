"""Small control factories shared by the panels: combo boxes of values, spin boxes, a row of widgets."""

from __future__ import annotations

from typing import Sequence

from qtpy.QtWidgets import QComboBox, QDoubleSpinBox, QHBoxLayout, QSpinBox, QWidget


def value_combo(values: Sequence[str], current: str) -> QComboBox:
    """A combo box listing ``values`` (each its own data), ``current`` selected."""
    combo = QComboBox()
    for value in values:
        combo.addItem(value, value)
    combo.setCurrentIndex(list(values).index(current))
    return combo


def int_spin(low: int, high: int, value: int) -> QSpinBox:
    spin = QSpinBox()
    spin.setRange(low, high)
    spin.setValue(value)
    return spin


def double_spin(low: float, high: float, value: float, decimals: int, step: float) -> QDoubleSpinBox:
    spin = QDoubleSpinBox()
    spin.setDecimals(decimals)
    spin.setRange(low, high)
    spin.setSingleStep(step)
    spin.setValue(value)
    return spin


def hbox(*widgets: QWidget) -> QHBoxLayout:
    """A horizontal layout of the widgets (to add to a box's layout)."""
    row = QHBoxLayout()
    for widget in widgets:
        row.addWidget(widget)
    return row
