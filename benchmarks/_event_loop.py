"""Measure how long the Qt main thread is blocked: a fast timer and the largest gap between its ticks."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from qtpy.QtCore import QTimer


@dataclass
class StallMeter:
    """Start a ``interval_ms`` timer on the main thread; ``stalls_ms`` holds each tick's lateness.

    A tick that arrives ``interval_ms + s`` after the previous one means the event loop was busy
    for about ``s`` ms; the longest such ``s`` is the longest freeze a user would feel.
    """

    interval_ms: int = 10
    stalls_ms: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._timer = QTimer()
        self._timer.setInterval(self.interval_ms)
        self._timer.timeout.connect(self._tick)
        self._last: float | None = None

    def _tick(self) -> None:
        now = time.perf_counter()
        if self._last is not None:
            self.stalls_ms.append(max(0.0, (now - self._last) * 1000.0 - self.interval_ms))
        self._last = now

    def start(self) -> None:
        self.stalls_ms.clear()
        self._last = None
        self._timer.start()

    def stop(self) -> None:
        self._timer.stop()

    def summary(self) -> dict[str, float]:
        values = sorted(self.stalls_ms) or [0.0]
        return {"ticks": len(self.stalls_ms), "max_ms": values[-1],
                "p99_ms": values[min(len(values) - 1, int(0.99 * len(values)))],
                "over_100ms": sum(v > 100 for v in values)}
