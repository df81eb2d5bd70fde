"""A small live plot of the training loss, painted with QPainter.

Not matplotlib: redrawing a matplotlib canvas took 100-200 ms of the main thread per refresh on
the project's CPU machine (text layout and Agg rendering), which froze the window while training;
a polyline painted by Qt costs well under a millisecond.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from qtpy.QtCore import QPointF, QRectF, Qt
from qtpy.QtGui import QColor, QPainter, QPainterPath, QPen
from qtpy.QtWidgets import QSizePolicy, QWidget

MAX_POINTS = 1000      # longer series are thinned (by block means) before painting
MARGIN = (44, 8, 8, 20)  # left, top, right, bottom: room for the axis labels


class LossPlot(QWidget):
    """Loss per step as a line; repainted only when points were added (or when forced)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Fixed)
        self.setFixedHeight(130)
        self.values: tuple[float, ...] = ()
        self.n_updates = 0  # repaints asked for (Qt paints only when the widget is shown)

    def clear(self) -> None:
        self.values = ()
        self._repaint()

    def set_values(self, values: Sequence[float], *, force: bool = False) -> None:
        """Show ``values``; nothing happens when their number did not change (unless ``force``)."""
        values = tuple(float(v) for v in values)
        changed = len(values) != len(self.values)
        self.values = values
        if changed or force:
            self._repaint()

    def _repaint(self) -> None:
        self.n_updates += 1
        self.update()

    def points(self, width: float, height: float) -> list[tuple[float, float]]:
        """The line's vertices in widget pixels for a plot area of ``width`` x ``height``."""
        y = np.asarray(self.values, float)
        y = y[np.isfinite(y)]
        if y.size == 0:
            return []
        if y.size > MAX_POINTS:
            blocks = np.array_split(y, MAX_POINTS)
            y = np.array([b.mean() for b in blocks])
        top = max(float(y.max()), 1e-6) * 1.05
        left, upper = MARGIN[0], MARGIN[1]
        xs = left + (np.arange(y.size) / max(y.size - 1, 1)) * width
        ys = upper + height * (1.0 - y / top)
        return list(zip(xs.tolist(), ys.tolist()))

    def paintEvent(self, event) -> None:  # noqa: N802 - Qt's name
        painter = QPainter(self)
        painter.setRenderHint(QPainter.Antialiasing)
        width = max(self.width() - MARGIN[0] - MARGIN[2], 1)
        height = max(self.height() - MARGIN[1] - MARGIN[3], 1)
        text = self.palette().windowText().color()
        painter.setPen(QPen(text, 1))
        painter.drawRect(QRectF(MARGIN[0], MARGIN[1], width, height))
        finite = [v for v in self.values if math.isfinite(v)]
        top = max(max(finite), 1e-6) * 1.05 if finite else 1.0
        font = painter.font()
        font.setPointSizeF(max(font.pointSizeF() * 0.8, 6.0))
        painter.setFont(font)
        painter.drawText(QRectF(0, MARGIN[1] - 6, MARGIN[0] - 4, 14), Qt.AlignRight, f"{top:.3g}")
        painter.drawText(QRectF(0, MARGIN[1] + height - 8, MARGIN[0] - 4, 14), Qt.AlignRight, "0")
        caption = f"loss, {len(self.values)} steps" if self.values else "loss (training not started)"
        painter.drawText(QRectF(MARGIN[0], MARGIN[1] + height + 2, width, 16), Qt.AlignHCenter, caption)
        points = self.points(width, height)
        if len(points) >= 2:
            path = QPainterPath(QPointF(*points[0]))
            for x, y in points[1:]:
                path.lineTo(x, y)
            painter.setPen(QPen(QColor(31, 119, 180), 1.5))
            painter.drawPath(path)
        painter.end()
