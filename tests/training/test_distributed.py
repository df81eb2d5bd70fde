"""DDP on the CPU (gloo, two processes): identical weights on both ranks, one checkpoint writer."""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from wsnodule_core.training.distributed import DistContext, all_reduce_sum, barrier, init_distributed


@pytest.fixture(autouse=True)
def _one_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(rank: int, world: int, port: int, tmp: str) -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank)})
    torch.set_num_threads(1)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "nam"))
    from conftest import disc_slices  # the NAM tests' synthetic slices

    import wsnodule_core.nam.train as train_module

    writes: list[str] = []
    original = train_module.save_checkpoint

    def counting_save(path, payload):
        writes.append(Path(path).name)
        return original(path, payload)

    train_module.save_checkpoint = counting_save
    config = train_module.TrainConfig(width="narrow", head_channels=8, image_size=32, batch_size=4, epochs=2,
                                      lr=1e-2, device="cpu", seed=0)
    result = train_module.train_classifier((disc_slices(32, seed=1), disc_slices(8, seed=2)), Path(tmp) / "run",
                                           config)
    torch.save(result.model.state_dict(), Path(tmp) / f"rank{rank}.pt")
    (Path(tmp) / f"rank{rank}.json").write_text(json.dumps({"writes": writes, "steps": result.global_step,
                                                            "history": len(result.history)}))


@pytest.mark.slow
def test_two_process_training_agrees(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    states = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert states[0].keys() == states[1].keys()
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key]), key
    info = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert info[1]["writes"] == [] and set(info[0]["writes"]) == {"best.pt", "last.pt"}
    # 32 slices / batch 4 = 8 global batches per epoch, 4 per rank, 2 epochs
    assert info[0]["steps"] == info[1]["steps"] == 8 and info[0]["history"] == 2
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["best.pt", "last.pt"]
    raw = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert raw["world_size"] == 2 and set(raw["augment_rng"]) == {"0", "1"}


def test_single_process_helpers_are_no_ops(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx = init_distributed()
    assert ctx == DistContext() and ctx.is_main and not ctx.enabled
    values = torch.tensor([1.0, 2.0])
    assert all_reduce_sum(values, ctx) is values
    barrier(ctx)
