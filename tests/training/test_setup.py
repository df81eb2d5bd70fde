"""The shared start of a training run: folder rules, kind check, config, device, processes."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from wsnodule_core.errors import CheckpointError, ModelConfigError, OutputExistsError
from wsnodule_core.training.checkpoint import save_checkpoint
from wsnodule_core.training.setup import start_run


@dataclass(frozen=True)
class _Config:
    device: str = "cpu"


def _start(out, **changes):
    seen = []

    def configure(checkpoint):
        seen.append(checkpoint)
        return _Config()

    options = {"kind": "demo-kind", "name": "demo", "configure": configure, **changes}
    return start_run(out, **options), seen


def test_a_fresh_run_gets_its_folder_device_and_log(tmp_path):
    lines = []
    run, seen = _start(tmp_path / "run", log=lines.append)
    with run:
        assert run.out.is_dir() and run.checkpoint is None and seen == [None]
        assert str(run.device) == "cpu" and not run.ctx.enabled and lines == [run.choice.describe()]


def test_resume_loads_last_pt_and_refuses_another_kind(tmp_path):
    save_checkpoint(tmp_path / "run" / "last.pt", {"kind": "demo-kind", "epoch": 2})
    run, seen = _start(tmp_path / "run", resume=True)
    assert run.checkpoint.epoch == 2 and seen == [run.checkpoint]
    with pytest.raises(CheckpointError, match="holds a 'demo-kind' run, not a other run"):
        _start(tmp_path / "run", kind="other-kind", name="other", resume=True)
    with pytest.raises(OutputExistsError, match="resume"):
        _start(tmp_path / "run")


def test_a_single_process_trainer_refuses_torchrun(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ModelConfigError, match="demo training runs in one process only"):
        _start(tmp_path / "run")
    assert not (tmp_path / "run").exists()  # refused before the folder was touched
