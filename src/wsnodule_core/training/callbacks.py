"""Progress and cancellation hooks of a training run (method-agnostic)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping


@dataclass
class TrainCallbacks:
    """Optional hooks: ``on_step(step, total, loss)`` after each optimiser step (step counts the
    run's steps, ``total`` all steps of the run), ``on_epoch(epoch, metrics)`` after each epoch
    (1-based), ``should_stop()`` checked after each step: True saves ``last.pt`` and returns.

    Subclass it and override the methods, or pass plain functions.
    """

    step_fn: Callable[[int, int, float], None] | None = None
    epoch_fn: Callable[[int, Mapping[str, float]], None] | None = None
    stop_fn: Callable[[], bool] | None = None

    def on_step(self, step: int, total: int, loss: float) -> None:
        if self.step_fn is not None:
            self.step_fn(step, total, loss)

    def on_epoch(self, epoch: int, metrics: Mapping[str, float]) -> None:
        if self.epoch_fn is not None:
            self.epoch_fn(epoch, metrics)

    def should_stop(self) -> bool:
        return bool(self.stop_fn()) if self.stop_fn is not None else False


def as_callbacks(callbacks: "TrainCallbacks | object | None") -> TrainCallbacks:
    """Any object with some of ``on_step``/``on_epoch``/``should_stop`` as a :class:`TrainCallbacks`."""
    if callbacks is None:
        return TrainCallbacks()
    if isinstance(callbacks, TrainCallbacks):
        return callbacks
    return TrainCallbacks(getattr(callbacks, "on_step", None), getattr(callbacks, "on_epoch", None),
                          getattr(callbacks, "should_stop", None))
