"""Text progress bars on stderr for the command line (the core reports through callbacks)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class TextProgress:
    """A one-line text progress bar: ``label [#####.....] 3/6 12 s``; call it as ``progress(done, total)``."""

    def __init__(self, label: str, stream: TextIO | None = None, width: int = 30) -> None:
        self.label, self.stream, self.width = label, stream or sys.stderr, width
        self.start = time.monotonic()

    def __call__(self, done: int, total: int) -> None:
        filled = int(self.width * done / total) if total else self.width
        bar = "#" * filled + "." * (self.width - filled)
        elapsed = time.monotonic() - self.start
        end = "\n" if done >= total else ""
        self.stream.write(f"\r{self.label} [{bar}] {done}/{total} {elapsed:.0f} s{end}")
        self.stream.flush()


class StagedTextProgress:
    """``progress(stage, done, total)``: a new bar each time the stage name changes."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self._stage: str | None = None
        self._bar: TextProgress | None = None

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage != self._stage or self._bar is None:
            self._stage, self._bar = stage, TextProgress(stage, self.stream)
        self._bar(done, total)


def training_hooks(label: str, show: bool = True):
    """``(callbacks, log)`` for a training run on the command line: a progress bar per step (when
    ``show``) and one-line messages on stderr that do not overwrite the bar."""
    from wsnodule_core.training.callbacks import TrainCallbacks

    bar = TextProgress(label) if show else None

    def on_step(step: int, total: int, loss: float) -> None:
        if bar is not None:
            bar(step, total)

    def log(text: str) -> None:
        sys.stderr.write(("\n" if bar is not None else "") + text + "\n")

    return TrainCallbacks(step_fn=on_step), log


def print_run(result, metric: str) -> None:
    """The last line of ``wsnodule train``: epochs, steps, device, the best validation score, the folder."""
    best = f"{result.best_metric:.3f} (epoch {result.best_epoch})" if result.best_metric is not None else "-"
    print(f"trained {result.epochs_completed} epoch(s), {result.global_step} steps on {result.device}; "
          f"best {metric} {best}; checkpoints in {result.out_dir}")
