"""The shared epoch loop: cancel inside an epoch, resume from the saved state, and the same history
and augmentation stream as an uninterrupted run."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from wsnodule_core.errors import TrainingDataError
from wsnodule_core.training.callbacks import TrainCallbacks
from wsnodule_core.training.checkpoint import BEST, LAST
from wsnodule_core.training.loop import EpochLoop, RunState, optimizer_step


class Toy:
    """A loop whose 'training' records the augmentation draws; scores rise then fall."""

    def __init__(self, stop_after: int | None = None):
        self.draws: list[float] = []
        self.saved: dict[str, tuple[dict, torch.Tensor]] = {}
        self.stop_after = stop_after
        self.steps = 0

    def loop(self) -> EpochLoop:
        def train_step(batch, generator):
            draw = float(torch.rand(1, generator=generator))
            self.draws.append(draw)
            self.steps += 1
            return draw, torch.tensor([draw, 1.0], dtype=torch.float64)

        def end_epoch(epoch, sums):
            return {"epoch": epoch + 1, "mean": float(sums[0] / sums[1])}, [0.1, 0.5, 0.3][epoch]

        def save(names, state):
            for name in names:
                self.saved[name] = (copy.deepcopy(state.fields()), loop.generator.get_state())

        callbacks = TrainCallbacks(stop_fn=lambda: self.stop_after is not None and self.steps >= self.stop_after)
        loop = EpochLoop(3, 4, lambda epoch: [[epoch, i] for i in range(4)], train_step, end_epoch, save,
                         lambda epoch: 100 + epoch, callbacks, lambda text: None, Path("run"), n_sums=2)
        return loop


def _strip_seconds(history):
    return [{k: v for k, v in m.items() if k != "seconds"} for m in history]


def test_cancel_mid_epoch_then_resume_matches_an_uninterrupted_run():
    whole = Toy()
    state = RunState()
    assert whole.loop().run(state) == (3, False)
    assert len(whole.draws) == 12 and state.global_step == 12
    assert state.best_epoch == 2 and state.best_metric == 0.5
    assert set(whole.saved) == {LAST, BEST} and whole.saved[BEST][0]["epoch"] == 2

    first = Toy(stop_after=6)  # stops at step 2 of epoch 2
    state = RunState()
    assert first.loop().run(state) == (1, True)
    fields, generator_state = first.saved[LAST]
    assert fields["epoch"] == 1 and fields["step_in_epoch"] == 2 and len(fields["epoch_sums"]) == 2

    second = Toy()
    resumed = RunState(**{k: copy.deepcopy(v) for k, v in fields.items()})
    assert second.loop().run(resumed, generator_state) == (3, False)
    assert first.draws + second.draws == whole.draws
    assert _strip_seconds(resumed.history) == [
        {"epoch": e + 1, "mean": sum(whole.draws[4 * e:4 * e + 4]) / 4} for e in range(3)]


def test_a_stop_on_the_last_step_of_an_epoch_finishes_that_epoch():
    toy = Toy(stop_after=4)
    state = RunState()
    assert toy.loop().run(state) == (1, True)
    assert toy.saved[LAST][0]["epoch"] == 1 and toy.saved[LAST][0]["step_in_epoch"] == 0
    assert len(state.history) == 1


def test_optimizer_step_refuses_a_non_finite_loss():
    weight = torch.nn.Parameter(torch.ones(2))
    optimizer = torch.optim.SGD([weight], lr=0.1)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    assert optimizer_step((weight ** 2).sum(), optimizer, scaler, step=1) == pytest.approx(2.0)
    assert torch.allclose(weight.detach(), torch.full((2,), 0.8))
    with pytest.raises(TrainingDataError, match="at step 7; lower the learning rate \\(lr=0.1\\)"):
        optimizer_step(weight.sum() * float("nan"), optimizer, scaler, step=7, lr=0.1)
