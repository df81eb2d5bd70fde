"""Putting a finished task's layers into the viewer one per event-loop turn.

napari needs 0.1-0.2 s of the main thread to add a layer (layer controls, vispy visuals); a task
that adds five at once froze the window for a second. Each step here runs in its own event-loop
turn, with a short pause before the next so repaints and input are served in between
(benchmarks/plugin_responsiveness.py measures it).
"""

from __future__ import annotations

import traceback
from collections import deque
from typing import Any, Callable, Hashable, Sequence

from qtpy.QtCore import QTimer

STEP_GAP_MS = 15  # with 0, the next step ran before the canvas repaint, and the freezes added up
# (longer than _layers.REVEAL_DELAY_MS: a layer a step added hidden is shown in the first gap after it)


class StagedSteps:
    """Run ``(key, make)`` steps one per turn; ``done({key: make()})`` after the last.

    A step that raises stops the rest and reports ``on_error(text)`` (the traceback goes to the
    console); ``busy`` is True until the last step ran or one failed.
    """

    def __init__(self, on_error: Callable[[str], None], what: str = "the results") -> None:
        self._on_error = on_error
        self._what = what
        self._state: tuple[deque, dict, Callable[[dict], None]] | None = None

    @property
    def busy(self) -> bool:
        return self._state is not None

    def start(self, steps: Sequence[tuple[Hashable, Callable[[], Any]]], done: Callable[[dict], None]) -> None:
        self._state = (deque(steps), {}, done)
        QTimer.singleShot(0, self._next)

    def _next(self) -> None:
        if self._state is None:
            return
        steps, made, _ = self._state
        if steps:
            key, make = steps.popleft()
            try:
                made[key] = make()
            except Exception as error:  # noqa: BLE001 - shown to the user like a task error
                self._state = None
                traceback.print_exception(type(error), error, error.__traceback__)
                self._on_error(f"Showing {self._what} failed ({type(error).__name__}: {error}).")
                return
        state = self._state
        QTimer.singleShot(STEP_GAP_MS, lambda: self._pause_over(state))

    def _pause_over(self, state: tuple[deque, dict, Callable[[dict], None]]) -> None:
        """A second gap, counted from now: a layer the last step added hidden was shown in this turn
        (``_layers.show_later``), and its first draw gets a turn of its own before the next step."""
        if self._state is not state:  # a newer start() replaced this run
            return
        QTimer.singleShot(STEP_GAP_MS, self._next if state[0] else lambda: self._finish(state))

    def _finish(self, state: tuple[deque, dict, Callable[[dict], None]]) -> None:
        if self._state is not state:
            return
        self._state = None
        _, made, done = state
        done(made)
