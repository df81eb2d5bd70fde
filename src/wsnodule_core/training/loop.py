"""The epoch loop every epoch-based trainer shares.

Resume inside an epoch (same batches, same augmentation stream, the interrupted epoch's running
sums), one seeded augmentation generator per epoch, Cancel that keeps ``last.pt``, the best and
last checkpoints, the history and the one-line log. A trainer keeps only what is its own (data,
model, loss, metrics) and hands the loop small functions for those; see ``nam/train.py``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch

from wsnodule_core.errors import TrainingDataError
from wsnodule_core.training.callbacks import TrainCallbacks
from wsnodule_core.training.checkpoint import BEST, LAST, Checkpoint, ResumeState
from wsnodule_core.training.device import autocast
from wsnodule_core.training.result import RunResult


@dataclass
class RunState:
    """Where a run stands; every checkpoint carries it (:meth:`fields`), resume restores it."""

    epoch: int = 0                 # epochs completed
    step_in_epoch: int = 0         # steps done in the interrupted epoch (0: at an epoch boundary)
    global_step: int = 0
    best_metric: float | None = None
    best_epoch: int | None = None
    history: list[dict] = field(default_factory=list)
    epoch_sums: list[float] = field(default_factory=list)  # the interrupted epoch's running sums

    @classmethod
    def resumed(cls, state: ResumeState, checkpoint: Checkpoint | None) -> "RunState":
        sums = checkpoint.raw.get("epoch_sums") if checkpoint is not None else None
        sums = list(sums) if isinstance(sums, (list, tuple)) else []
        return cls(state.epoch, state.step_in_epoch, state.global_step, state.best_metric, state.best_epoch,
                   list(state.history), [float(v) for v in sums])

    def fields(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "global_step": self.global_step,
                "best_metric": self.best_metric, "best_epoch": self.best_epoch, "history": self.history,
                "epoch_sums": list(self.epoch_sums)}

    def result(self, out: Path, epochs_completed: int, cancelled: bool, device: Any,
               model: torch.nn.Module) -> RunResult:
        model.eval()
        return RunResult(out, out / BEST if (out / BEST).exists() else None,
                         out / LAST if (out / LAST).exists() else None, epochs_completed, self.global_step,
                         self.best_metric, self.best_epoch, self.history, cancelled, str(device), model)


def optimizer_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler, *, step: int,
                   lr: float | None = None) -> float:
    """Zero the gradients, back-propagate (scaled under AMP), step; the loss as a float.

    Raises :class:`TrainingDataError` when the loss is not finite (``step`` and ``lr`` go into the
    message), so a diverging run stops with advice instead of writing NaN weights.
    """
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    value = float(loss.detach())
    if not math.isfinite(value):
        rate = f" (lr={lr})" if lr is not None else ""
        raise TrainingDataError(f"the training loss became {value} at step {step}; lower the learning rate"
                                f"{rate} or check the data.")
    return value


def format_metrics(metrics: dict) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())


@dataclass
class EpochLoop:
    """Run epochs ``state.epoch .. epochs - 1``.

    Parameters
    ----------
    batches
        ``batches(epoch)``: the epoch's batches (index lists), the same on every call for an epoch.
    train_step
        ``train_step(items, generator)`` for one batch: does the optimiser step and returns
        ``(loss, sums)``, ``sums`` a 1-D float64 tensor added into the epoch's running sums.
    end_epoch
        ``end_epoch(epoch, sums) -> (metrics, score)`` after the last step (scheduler, validation);
        the largest ``score`` so far makes ``best.pt`` (None or nan: not scored this epoch; the
        first epoch writes ``best.pt`` anyway, so a run always has one).
    save
        ``save(names, state)`` writes the checkpoint document (with ``state.fields()``) as each name.
    aug_seed
        ``aug_seed(epoch)``: the seed of the epoch's augmentation generator.
    load
        ``load(batches)`` turns the remaining batches of an epoch into what ``train_step`` takes
        (default: the index lists themselves); e.g. a DataLoader with workers.
    stop_all
        Combines the local stop request across processes (DDP); identity by default.
    n_sums
        Length of ``train_step``'s ``sums`` (the running sums start at zero).
    """

    epochs: int
    steps_per_epoch: int
    batches: Callable[[int], Sequence]
    train_step: Callable[[Any, torch.Generator], tuple[float, torch.Tensor]]
    end_epoch: Callable[[int, torch.Tensor], tuple[dict, float | None]]
    save: Callable[[tuple[str, ...], RunState], None]
    aug_seed: Callable[[int], int]
    callbacks: TrainCallbacks
    say: Callable[[str], None]
    out: Path
    load: Callable[[Sequence], Iterable] = iter
    stop_all: Callable[[bool], bool] = bool
    is_main: bool = True
    n_sums: int = 1
    generator: torch.Generator = field(default_factory=torch.Generator)

    def run(self, state: RunState, aug_state: torch.Tensor | None = None) -> tuple[int, bool]:
        """Train; returns (epochs completed, cancelled). ``aug_state``: the augmentation generator
        of an interrupted epoch (from its checkpoint)."""
        total_steps = self.steps_per_epoch * self.epochs
        start_epoch, cancelled = state.epoch, False
        for epoch in range(start_epoch, self.epochs):
            started = time.monotonic()
            batches = self.batches(epoch)
            first = 0
            sums = torch.zeros(self.n_sums, dtype=torch.float64)
            self.generator.manual_seed(self.aug_seed(epoch))
            if epoch == start_epoch and state.step_in_epoch > 0:  # resume inside the epoch
                first = state.step_in_epoch
                if aug_state is not None:
                    self.generator.set_state(aug_state)
                if state.epoch_sums:
                    sums = torch.tensor(state.epoch_sums, dtype=torch.float64)
            for b, items in enumerate(self.load(batches[first:]), start=first):
                loss, step_sums = self.train_step(items, self.generator)
                state.global_step += 1
                sums = sums + step_sums
                if self.is_main:
                    self.callbacks.on_step(state.global_step, total_steps, loss)
                if self.stop_all(self.callbacks.should_stop()):
                    cancelled = True
                    if b + 1 == len(batches):
                        break
                    state.epoch, state.step_in_epoch, state.epoch_sums = epoch, b + 1, sums.tolist()
                    self.save((LAST,), state)
                    self.say(f"stopped at epoch {epoch + 1}, step {state.global_step}; {self.out / LAST} saved")
                    return epoch, True
            metrics, score = self.end_epoch(epoch, sums)
            metrics["seconds"] = time.monotonic() - started
            state.history.append(metrics)
            scored = score is not None and math.isfinite(score)
            improved = scored and (state.best_metric is None or score > state.best_metric)
            first_best = state.best_epoch is None
            if improved:
                state.best_metric, state.best_epoch = float(score), epoch + 1
            state.epoch, state.step_in_epoch, state.epoch_sums = epoch + 1, 0, []
            self.save((LAST, BEST) if improved or first_best else (LAST,), state)
            self.say(format_metrics(metrics))
            if self.is_main:
                self.callbacks.on_epoch(epoch + 1, metrics)
            if cancelled:
                self.say(f"stopped after epoch {epoch + 1}; {self.out / LAST} saved")
                return epoch + 1, True
        return max(start_epoch, self.epochs), False


CLASSIFY_SUMS = 3  # loss x n, n, correct: the running sums of classify_step


def classify_step(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, optimizer: torch.optim.Optimizer,
                  scaler, *, use_amp: bool, step: int, lr: float | None = None) -> tuple[float, torch.Tensor]:
    """One cross-entropy step of a classifier on ``(x, y)``; the loss and ``CLASSIFY_SUMS`` sums."""
    with autocast(x.device, use_amp):
        logits = net(x)
    loss = torch.nn.functional.cross_entropy(logits.float(), y)
    value = optimizer_step(loss, optimizer, scaler, step=step, lr=lr)
    return value, torch.tensor([value * len(y), len(y), float((logits.argmax(1) == y).sum())], dtype=torch.float64)


def classify_metrics(epoch: int, sums: torch.Tensor, optimizer: torch.optim.Optimizer) -> dict:
    """The epoch's training loss and accuracy from :func:`classify_step`'s sums, and the learning rate."""
    seen = max(float(sums[1]), 1.0)
    return {"epoch": epoch + 1, "train_loss": float(sums[0]) / seen, "train_accuracy": float(sums[2]) / seen,
            "lr": optimizer.param_groups[0]["lr"]}
