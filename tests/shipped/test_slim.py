"""``python -m wsnodule_core.shipped.slim``: a run's checkpoint without its training state, for shipping."""

from __future__ import annotations

import hashlib

import pytest
import torch

from wsnodule_core.errors import OutputExistsError
from wsnodule_core.shipped.slim import TRAINING_STATE, main, slim_checkpoint
from wsnodule_core.training.checkpoint import load_checkpoint, save_checkpoint


@pytest.fixture()
def prior_run(tmp_path):
    """A tiny flow-prior checkpoint with an optimiser state as large as its weights twice (as AdamW's)."""
    from wsnodule_core.flow.train_prior import PriorTrainConfig, build_prior_model
    from wsnodule_core.flow.velocity import VelocityConfig

    config = PriorTrainConfig(model=VelocityConfig(channels=(8, 16, 32), num_head_channels=8, patch_size=16),
                              device="cpu", seed=1)
    model = build_prior_model(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)  # not the zero-initialised output layers of a fresh model
    state = model.state_dict()
    optimizer = {"state": {i: {"exp_avg": v.clone(), "exp_avg_sq": v.clone()} for i, v in enumerate(state.values())}}
    return save_checkpoint(tmp_path / "run" / "last.pt", {
        "kind": "flow-prior", "model_config": model.config.to_dict(), "train_config": config.to_dict(),
        "model_state": state, "ema_state": state, "optimizer_state": optimizer, "scheduler_state": {},
        "rng": {"python": 1}, "global_step": 7, "history": [{"step": 7, "loss": 0.5}]}), model


def test_the_slim_copy_loads_the_same_prior_and_is_smaller(prior_run, tmp_path):
    from wsnodule_core.flow.train_prior import load_prior

    source, model = prior_run
    target = slim_checkpoint(source, tmp_path / "ship" / "flow-prior.pt")
    raw = load_checkpoint(target).raw
    assert not set(TRAINING_STATE) & set(raw) and raw["slim"] is True and raw["global_step"] == 7
    assert target.stat().st_size < 0.6 * source.stat().st_size
    loaded, config = load_prior(target)
    x = torch.rand(1, 1, 16, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded(x, torch.tensor([0.5])), model.eval()(x, torch.tensor([0.5])))
    assert config.model.channels == (8, 16, 32)


def test_same_weights_same_bytes_and_nothing_overwritten(prior_run, tmp_path, capsys):
    source, _ = prior_run
    first = slim_checkpoint(source, tmp_path / "a.pt")
    assert main([str(source), str(tmp_path / "b.pt")]) == 0 and "MB" in capsys.readouterr().out
    digest = [hashlib.sha256(p.read_bytes()).hexdigest() for p in (first, tmp_path / "b.pt")]
    assert digest[0] == digest[1]
    before = first.read_bytes()
    with pytest.raises(OutputExistsError):
        slim_checkpoint(source, first)
    assert first.read_bytes() == before
