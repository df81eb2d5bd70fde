"""Measure how long the Qt main thread is blocked: a fast timer and the largest gap between its ticks."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from qtpy.QtCore import QEventLoop, QTimer


@dataclass
class StallMeter:
    """Start a ``interval_ms`` timer on the main thread; each tick's lateness is filed under the
    current ``phase``.

    A tick that arrives ``interval_ms + s`` after the previous one means the event loop was busy
    for about ``s`` ms; the longest such ``s`` is the longest freeze a user would feel.
    """

    interval_ms: int = 10
    phase: str = "run"
    stalls_ms: dict[str, list[float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._timer = QTimer()
        self._timer.setInterval(self.interval_ms)
        self._timer.timeout.connect(self._tick)
        self._last: float | None = None

    def _tick(self) -> None:
        now = time.perf_counter()
        if self._last is not None:
            lateness = max(0.0, (now - self._last) * 1000.0 - self.interval_ms)
            self.stalls_ms.setdefault(self.phase, []).append(lateness)
        self._last = now

    def start(self, phase: str = "run") -> None:
        self.phase = phase
        self.stalls_ms.clear()
        self._last = None
        self._timer.start()

    def stop(self) -> None:
        self._timer.stop()

    def summary(self, phase: str | None = None) -> dict[str, float]:
        """Ticks, max, 99th percentile and number of stalls over 100 ms: of one phase or of all."""
        chosen = [self.stalls_ms.get(phase, [])] if phase else list(self.stalls_ms.values())
        values = sorted(v for phase_values in chosen for v in phase_values) or [0.0]
        return {"ticks": len(values), "max_ms": values[-1],
                "p99_ms": values[min(len(values) - 1, int(0.99 * len(values)))],
                "over_100ms": sum(v > 100 for v in values)}


def run_until(done: Callable[[], bool], timeout_s: float, check_ms: int = 20) -> float:
    """Run the Qt event loop (as ``napari.run`` would) until ``done()``; returns the seconds taken.
    Raises TimeoutError after ``timeout_s``."""
    loop = QEventLoop()
    start = time.perf_counter()
    timed_out = []

    def check() -> None:
        if done():
            loop.quit()
        elif time.perf_counter() - start > timeout_s:
            timed_out.append(True)
            loop.quit()

    timer = QTimer()
    timer.setInterval(check_ms)
    timer.timeout.connect(check)
    timer.start()
    loop.exec_()
    timer.stop()
    if timed_out:
        raise TimeoutError(f"not done after {timeout_s:.0f} s")
    return time.perf_counter() - start
