"""Checkpoint files: atomic saving, self-description, RNG states, run folders."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from wsnodule_core import __version__
from wsnodule_core.errors import CheckpointError, OutputExistsError
from wsnodule_core.nam.model import load_classifier
from wsnodule_core.training.checkpoint import (capture_rng_state, load_checkpoint, prepare_run_dir, restore_rng_state,
                                               save_checkpoint)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def test_save_and_load_round_trip(tmp_path):
    path = save_checkpoint(tmp_path / "run" / "last.pt", {"kind": "demo", "epoch": 3, "global_step": 30,
                                                          "model_state": {"w": torch.arange(4.0)},
                                                          "history": [{"epoch": 1, "loss": 0.5}]})
    loaded = load_checkpoint(path)
    assert loaded.kind == "demo" and loaded.epoch == 3 and loaded.global_step == 30
    assert loaded.package_version == __version__ and loaded.torch_version == str(torch.__version__)
    assert torch.equal(loaded.raw["model_state"]["w"], torch.arange(4.0))
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["last.pt"]  # the temp file was renamed
    assert load_checkpoint(tmp_path / "run").path.name == "last.pt"  # a folder without best.pt
    with pytest.raises(CheckpointError, match="NAM"):
        load_classifier(path)


def test_unreadable_or_foreign_files_are_refused(tmp_path):
    with pytest.raises(CheckpointError, match="no such"):
        load_checkpoint(tmp_path / "none.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match="not a wsnodule checkpoint"):
        load_checkpoint(tmp_path / "plain.pt")


def test_rng_states_round_trip(tmp_path):
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    state = capture_rng_state()
    first = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    torch.manual_seed(99), np.random.seed(99), random.seed(99)
    restore_rng_state(state)
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == first
    path = save_checkpoint(tmp_path / "c.pt", {"rng": state})
    restore_rng_state(load_checkpoint(path).raw["rng"])  # survives weights_only loading
    assert random.random() == first[0]


def test_run_folder_rules(tmp_path):
    out = prepare_run_dir(tmp_path / "run")
    assert out.is_dir()
    (out / "best.pt").write_bytes(b"x")
    with pytest.raises(OutputExistsError, match="best.pt"):
        prepare_run_dir(out)
    assert prepare_run_dir(out, overwrite=True) == out
    with pytest.raises(CheckpointError, match="nothing to resume"):
        prepare_run_dir(out, resume=True)
    (out / "last.pt").write_bytes(b"x")
    assert prepare_run_dir(out, resume=True) == out
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputExistsError, match="is a file"):
        prepare_run_dir(tmp_path / "file")
