"""Heavy work off the Qt main thread: core callbacks in, progress bar, Cancel and notifications out.

The core reports through plain callbacks (``progress(done, total)``, ``cancel() -> bool``,
:class:`~wsnodule_core.training.callbacks.TrainCallbacks`). A :class:`TaskReporter` offers those
callbacks to the worker thread and only stores what they say, under a lock; the :class:`TaskPanel`
on the main thread polls it with a timer. So a training that reports every step cannot flood the
event loop, and no Qt object is touched from the worker thread.
"""

from __future__ import annotations

import threading
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QTimer, Signal
from qtpy.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QPushButton, QVBoxLayout, QWidget

from wsnodule_core.errors import SegmentationCancelled, WsnoduleError
from wsnodule_core.training.callbacks import TrainCallbacks

POLL_MS = 100


class TaskCancelled(Exception):
    """Raised inside a task (via :meth:`TaskReporter.raise_if_cancelled`) to stop it early."""


@dataclass(frozen=True)
class TaskSnapshot:
    """What a running task has said so far (a copy, safe to read on the main thread)."""

    done: int = 0
    total: int = 0
    message: str = ""
    series: dict[str, tuple[float, ...]] = field(default_factory=dict)


class TaskReporter:
    """Thread-safe progress and cancel state, with adapters to the core's callback shapes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cancel = threading.Event()
        self._done = 0
        self._total = 0
        self._message = ""
        self._series: dict[str, list[float]] = {}

    def progress(self, done: int, total: int, message: str | None = None) -> None:
        with self._lock:
            self._done, self._total = int(done), int(total)
            if message is not None:
                self._message = message

    def stage(self, message: str) -> None:
        with self._lock:
            self._message = message
            self._done, self._total = 0, 0

    def record(self, name: str, value: float) -> None:
        """Append a value to a named series (e.g. the training loss) for live plots."""
        with self._lock:
            self._series.setdefault(name, []).append(float(value))

    def cancel(self) -> None:
        self._cancel.set()

    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def raise_if_cancelled(self) -> None:
        if self._cancel.is_set():
            raise TaskCancelled()

    def progress_fn(self, message: str) -> Callable[[int, int], None]:
        """A ``progress(done, total)`` callback that also sets the message."""
        return lambda done, total: self.progress(done, total, message)

    def train_callbacks(self, message: str = "training") -> TrainCallbacks:
        """Training hooks: steps drive the bar, losses and epoch metrics go to the series."""

        def on_step(step: int, total: int, loss: float) -> None:
            self.progress(step, total, f"{message}: step {step}/{total}, loss {loss:.3f}")
            self.record("loss", loss)

        def on_epoch(epoch: int, metrics) -> None:
            for key, value in metrics.items():
                if isinstance(value, (int, float)):
                    self.record(key, float(value))

        return TrainCallbacks(step_fn=on_step, epoch_fn=on_epoch, stop_fn=self.cancelled)

    def snapshot(self) -> TaskSnapshot:
        with self._lock:
            return TaskSnapshot(self._done, self._total, self._message,
                                {k: tuple(v) for k, v in self._series.items()})


def _error_text(name: str, error: BaseException) -> str:
    if isinstance(error, WsnoduleError):
        return f"{name} failed: {error}"
    return (f"{name} failed with an unexpected error ({type(error).__name__}: {error}). The details are "
            "in the console; please report them with the steps that led here.")


class TaskPanel(QWidget):
    """Status line, progress bar and Cancel button for one widget's background task.

    ``run`` starts ``fn(reporter)`` in a napari thread worker; its return value is handed to
    ``on_result`` on the main thread. Errors become napari notifications. One task at a time.
    """

    snapshot_changed = Signal(object)   # TaskSnapshot, every poll while running
    task_finished = Signal(str)         # "done", "cancelled" or "failed"

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.status = QLabel("Ready.")
        self.status.setWordWrap(True)
        self.bar = QProgressBar()
        self.bar.setRange(0, 1)
        self.bar.setValue(0)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        row = QHBoxLayout()
        row.addWidget(self.bar, 1)
        row.addWidget(self.cancel_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.status)
        layout.addLayout(row)
        self._timer = QTimer(self)
        self._timer.setInterval(POLL_MS)
        self._timer.timeout.connect(self._poll)
        self._reporter: TaskReporter | None = None
        self.worker = None
        self.last_error: BaseException | None = None
        self.last_outcome: str | None = None

    @property
    def busy(self) -> bool:
        return self._reporter is not None

    def run(self, name: str, fn: Callable[[TaskReporter], Any], on_result: Callable[[Any], None] | None = None,
            ) -> TaskReporter | None:
        """Start ``fn`` unless a task is running (then say so and return None)."""
        if self.busy:
            show_info(f"Wait for the running task to finish (or press Cancel) before starting '{name}'.")
            return None
        reporter = TaskReporter()
        self._reporter, self._name, self.last_error, self.last_outcome = reporter, name, None, None
        self.status.setText(f"{name}…")
        self.bar.setRange(0, 0)  # busy until the first progress report
        self.cancel_button.setEnabled(True)
        worker = create_worker(fn, reporter, _start_thread=False, _ignore_errors=True)
        worker.returned.connect(lambda result: self._returned(result, on_result))
        worker.errored.connect(self._errored)
        worker.finished.connect(self._finished)
        self.worker = worker
        self._timer.start()
        worker.start()
        return reporter

    def cancel(self) -> None:
        if self._reporter is not None:
            self._reporter.cancel()
            self.status.setText(f"{self._name}: cancelling…")
            self.cancel_button.setEnabled(False)

    def _poll(self) -> None:
        if self._reporter is None:
            return
        snap = self._reporter.snapshot()
        if snap.total > 0:
            self.bar.setRange(0, snap.total)
            self.bar.setValue(min(snap.done, snap.total))
        if snap.message and not self._reporter.cancelled():
            self.status.setText(snap.message)
        self.snapshot_changed.emit(snap)

    def _returned(self, result: Any, on_result: Callable[[Any], None] | None) -> None:
        if self._reporter is not None and self._reporter.cancelled():
            self.last_outcome = "cancelled"
        else:
            self.last_outcome = "done"
        if on_result is not None:
            try:
                on_result(result)
            except Exception as error:  # a failure while showing results must not look like success
                self._errored(error)
                return

    def _errored(self, error: BaseException) -> None:
        if isinstance(error, (TaskCancelled, SegmentationCancelled)):
            self.last_outcome = "cancelled"
            return
        self.last_outcome, self.last_error = "failed", error
        if not isinstance(error, WsnoduleError):
            traceback.print_exception(type(error), error, error.__traceback__)
        show_error(_error_text(self._name, error))

    def _finished(self) -> None:
        self._poll()
        self._timer.stop()
        outcome = self.last_outcome or "done"
        self.status.setText({"done": f"{self._name}: done.", "cancelled": f"{self._name}: cancelled.",
                             "failed": f"{self._name}: failed (see the notification)."}[outcome])
        self.bar.setRange(0, 1)
        self.bar.setValue(1 if outcome == "done" else 0)
        self.cancel_button.setEnabled(False)
        self._reporter = None
        self.worker = None
        self.task_finished.emit(outcome)
