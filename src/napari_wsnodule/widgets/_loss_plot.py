"""A small live plot of the training loss (matplotlib's Qt canvas), cheap to refresh."""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from qtpy.QtWidgets import QSizePolicy, QVBoxLayout, QWidget

MAX_POINTS = 2000      # longer series are thinned before drawing
MIN_REDRAW_S = 0.3     # at most about three redraws a second while training


class LossPlot(QWidget):
    """Loss per step, redrawn only when new points arrived and not more often than ``MIN_REDRAW_S``."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.figure = Figure(figsize=(3.2, 1.6), dpi=90, tight_layout=True)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Fixed)
        self.canvas.setFixedHeight(150)
        self.axes = self.figure.add_subplot(111)
        self.axes.set_xlabel("step", fontsize=8)
        self.axes.set_ylabel("loss", fontsize=8)
        self.axes.tick_params(labelsize=7)
        (self.line,) = self.axes.plot([], [], lw=1.0, color="tab:blue")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.canvas)
        self.values: tuple[float, ...] = ()
        self._last_draw = 0.0
        self.n_draws = 0

    def clear(self) -> None:
        self.values = ()
        self.line.set_data([], [])
        self._draw()

    def set_values(self, values: Sequence[float], *, force: bool = False) -> None:
        """Show ``values``; skipped when nothing changed or the last redraw was too recent (unless ``force``)."""
        values = tuple(values)
        changed = len(values) != len(self.values)
        self.values = values
        if not changed and not force:
            return
        if not force and time.monotonic() - self._last_draw < MIN_REDRAW_S:
            return
        y = np.asarray(values, float)
        x = np.arange(1, len(y) + 1)
        if len(y) > MAX_POINTS:
            keep = np.linspace(0, len(y) - 1, MAX_POINTS).astype(int)
            x, y = x[keep], y[keep]
        self.line.set_data(x, y)
        if len(y):
            finite = y[np.isfinite(y)]
            top = float(finite.max()) if finite.size else 1.0
            self.axes.set_xlim(0.5, max(float(x[-1]), 1.0) + 0.5)
            self.axes.set_ylim(0.0, top * 1.05 + 1e-6)
        self._draw()

    def _draw(self) -> None:
        self._last_draw = time.monotonic()
        self.n_draws += 1
        self.canvas.draw_idle()
