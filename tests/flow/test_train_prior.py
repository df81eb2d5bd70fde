"""Training the rectified-flow prior: patch sampling, learning, checkpoints, exact resume, cancel, DDP."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from wsnodule_core.errors import CheckpointError, ModelConfigError, OutputExistsError, TrainingDataError
from wsnodule_core.flow.rectified_flow import rf_loss
from wsnodule_core.flow.train_prior import (KIND, PriorTrainConfig, build_prior_model, draw_batch,
                                            extract_patch, load_prior, prepare_sources, train_prior)
from wsnodule_core.flow.velocity import VelocityConfig
from wsnodule_core.io.volume import Volume
from wsnodule_core.training.callbacks import TrainCallbacks
from wsnodule_core.training.checkpoint import load_checkpoint, save_checkpoint

TINY = VelocityConfig(channels=(8, 16, 32), num_head_channels=8, patch_size=16)
FAST = PriorTrainConfig(model=TINY, spacing_mm=None, batch_size=4, steps=6, steps_per_epoch=3, lr=2e-3,
                        warmup_steps=2, ema_decay=0.9, device="cpu", seed=1)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _flat_volume(hu: int = -200, shape=(20, 40, 40)) -> Volume:
    return Volume(np.full(shape, hu, np.int16), spacing=(1.5, 1.5, 1.5))


def _states(path):
    raw = load_checkpoint(path).raw
    return raw["model_state"], raw["ema_state"]


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


# --- configuration and data ------------------------------------------------------------------------


def test_config_validation_presets_and_dict_round_trip():
    for bad in ({"batch_size": 0}, {"patch_size": 18}, {"t_sampling": "beta"}, {"hu_window": (10, -10)},
                {"intensity_range": "byte"}, {"ema_decay": 1.0}, {"spacing_mm": 0.0}, {"grad_clip": 0.0}):
        with pytest.raises(ModelConfigError):
            PriorTrainConfig(model=TINY, **bad)
    data = json.loads(json.dumps(FAST.to_dict()))        # lists instead of tuples, as a JSON reader gives
    assert PriorTrainConfig.from_dict({**data, "future_field": 3}) == FAST
    gpu = PriorTrainConfig.for_preset("gpu")
    assert gpu.patch == 64 and gpu.model == VelocityConfig.gpu() and gpu.spacing_mm == 1.0
    assert PriorTrainConfig.for_preset("compact", steps=7).patch == 32
    assert FAST.patch == 16 and PriorTrainConfig(model=TINY, patch_size=32).patch == 32


@pytest.mark.parametrize("name, low, high", [("unit", 0.0, 1.0), ("symmetric", -1.0, 1.0)])
def test_intensity_mapping(name, low, high):
    config = PriorTrainConfig(model=TINY, intensity_range=name)
    hu = np.array([-3000.0, -1000.0, 0.0, 1000.0, 2500.0])
    x = config.to_model(hu)
    assert np.allclose(x, [low, low, (low + high) / 2, high, high])
    assert np.allclose(config.to_hu(x[1:4]), hu[1:4])
    assert torch.allclose(config.to_model(torch.tensor(hu)), torch.tensor(x))


def test_extract_patch_centres_and_pads_with_air():
    array = np.arange(10 * 10 * 10, dtype=np.float32).reshape(10, 10, 10)
    patch = extract_patch(array, (5, 5, 5), 4, -1000.0)
    assert patch[2, 2, 2] == array[5, 5, 5] and np.array_equal(patch, array[3:7, 3:7, 3:7])
    corner = extract_patch(array, (0, 0, 9), 4, -1000.0)
    assert corner[2, 2, 2] == array[0, 0, 9]
    assert np.all(corner[:2] == -1000.0) and np.all(corner[:, :, 3] == -1000.0)
    assert np.array_equal(corner[2:, 2:, :3], array[:2, :2, 7:10])


def test_patches_come_from_the_lungs_and_are_reproducible():
    hu = np.full((40, 48, 48), -1000, np.int16)
    lungs = np.zeros(hu.shape, bool)
    lungs[8:32, 24:44, 4:20] = True
    hu[lungs] = 0                                                   # lung region at 0 HU, air elsewhere
    config = PriorTrainConfig(model=TINY, patch_size=8, spacing_mm=None, batch_size=16, seed=4)
    sources = prepare_sources([(Volume(hu), lungs)], config)
    assert sources[0].centres is not None and lungs[tuple(sources[0].centres.T)].all()
    x, seeds = draw_batch(sources, config, step=3)
    assert x.shape == (16, 1, 8, 8, 8) and x.dtype == np.float32 and len(set(seeds.tolist())) == 16
    assert np.allclose(x[:, 0, 4, 4, 4], 0.5)                       # every centre voxel lies in the lungs
    again, seeds_again = draw_batch(sources, config, step=3)
    assert np.array_equal(x, again) and np.array_equal(seeds, seeds_again)
    assert not np.array_equal(x, draw_batch(sources, config, step=4)[0])
    # two processes split the same global batch
    r0, s0 = draw_batch(sources, config, 3, rank=0, world_size=2)
    r1, s1 = draw_batch(sources, config, 3, rank=1, world_size=2)
    assert np.array_equal(r0, x[0::2]) and np.array_equal(r1, x[1::2])
    assert np.array_equal(s0, seeds[0::2]) and np.array_equal(s1, seeds[1::2])
    no_lungs = prepare_sources([Volume(hu)], config)
    assert no_lungs[0].centres is None


def test_sources_from_cases_are_resampled_with_their_lungs():
    from wsnodule_core.data.cases import make_phantom_case

    case = make_phantom_case("p0", seed=0, shape=(16, 48, 48), spacing=(5.0, 3.0, 3.0), n_nodules=0)
    config = PriorTrainConfig(model=TINY, spacing_mm=2.5)
    (source,) = prepare_sources([case], config)
    assert source.name == "p0" and source.array.dtype == np.int16
    assert source.array.shape == (32, 58, 58)                        # 80 x 144 x 144 mm at 2.5 mm
    inside = source.array[tuple(source.centres.T)]
    assert np.median(inside) < -500                                  # lung centres hold lung parenchyma
    with pytest.raises(TrainingDataError, match="lung mask"):
        prepare_sources([(case.image, case.lungs[:-1])], config)
    with pytest.raises(TrainingDataError, match="give Volumes"):
        prepare_sources(["not a volume"], config)


# --- training --------------------------------------------------------------------------------------


def test_a_few_steps_reduce_the_loss(tmp_path):
    volume = _flat_volume(-200)
    config = PriorTrainConfig(model=TINY, spacing_mm=None, batch_size=4, steps=12, steps_per_epoch=4,
                              lr=3e-3, warmup_steps=0, ema_decay=0.5, device="cpu", seed=0)
    x0 = torch.full((8, 1, 16, 16, 16), 0.4)
    g = torch.Generator().manual_seed(9)
    t, noise = torch.rand(8, generator=g), torch.randn(x0.shape, generator=g)
    untrained = float(rf_loss(lambda x, tt: torch.zeros_like(x), x0, t=t, noise=noise))  # fresh model: v = 0
    result = train_prior([volume], tmp_path / "run", config)
    with torch.no_grad():
        trained = float(rf_loss(result.model, x0, t=t, noise=noise))
    assert trained < 0.8 * untrained
    losses = [h["train_loss"] for h in result.history]
    assert len(losses) == 3 and losses[-1] < losses[0]
    assert result.global_step == 12 and result.epochs_completed == 3 and not result.cancelled
    assert result.best_path is None and result.last_path == tmp_path / "run" / "last.pt"


@pytest.mark.parametrize("stop_at", [2, 3])   # inside the first epoch, and at its end
def test_resume_equals_an_uninterrupted_run(tmp_path, stop_at):
    volumes = [_flat_volume(-200), _flat_volume(300, (24, 24, 24))]
    full = train_prior(volumes, tmp_path / "full", FAST)
    steps = []
    cut = train_prior(volumes, tmp_path / "cut", FAST, TrainCallbacks(
        step_fn=lambda s, n, loss: steps.append(s), stop_fn=lambda: len(steps) >= stop_at))
    assert cut.cancelled and cut.global_step == stop_at and steps == list(range(1, stop_at + 1))
    assert load_checkpoint(tmp_path / "cut" / "last.pt").global_step == stop_at   # cancel keeps last.pt
    resumed = train_prior(volumes, tmp_path / "cut", FAST, resume=True)
    assert resumed.global_step == 6 and not resumed.cancelled
    for a, b in zip(_states(tmp_path / "full" / "last.pt"), _states(tmp_path / "cut" / "last.pt")):
        _assert_same(a, b)
    assert [h["train_loss"] for h in full.history] == [h["train_loss"] for h in resumed.history]
    # training longer continues from the same point
    longer = PriorTrainConfig.from_dict({**FAST.to_dict(), "steps": 9})
    assert train_prior(volumes, tmp_path / "cut", longer, resume=True).global_step == 9


def test_cancel_after_the_first_step_keeps_last(tmp_path):
    epochs = []
    result = train_prior([_flat_volume()], tmp_path / "run", FAST,
                         TrainCallbacks(epoch_fn=lambda e, m: epochs.append(e), stop_fn=lambda: True))
    assert result.cancelled and result.global_step == 1 and epochs == []
    checkpoint = load_checkpoint(tmp_path / "run")
    assert checkpoint.kind == KIND and checkpoint.global_step == 1


def test_existing_runs_are_not_overwritten(tmp_path):
    volumes = [_flat_volume()]
    short = PriorTrainConfig.from_dict({**FAST.to_dict(), "steps": 1})
    train_prior(volumes, tmp_path / "run", short)
    with pytest.raises(OutputExistsError, match="resume"):
        train_prior(volumes, tmp_path / "run", short)
    assert train_prior(volumes, tmp_path / "run", short, overwrite=True).global_step == 1
    with pytest.raises(CheckpointError, match="nothing to resume"):
        train_prior(volumes, tmp_path / "new", short, resume=True)
    two_levels = VelocityConfig(channels=(8, 16), attention=(False, False), num_head_channels=8,
                                patch_size=16)
    other = PriorTrainConfig.from_dict({**short.to_dict(), "model": two_levels.to_dict()})
    with pytest.raises(CheckpointError, match="same model"):
        train_prior(volumes, tmp_path / "run", other, resume=True)
    with pytest.raises(TrainingDataError, match="no training volumes"):
        train_prior([], tmp_path / "empty", short)


def test_checkpoint_round_trip_loads_the_ema(tmp_path):
    result = train_prior([_flat_volume()], tmp_path / "run", FAST)
    raw = load_checkpoint(tmp_path / "run" / "last.pt").raw
    assert raw["kind"] == KIND and raw["conventions"]["velocity"] == "x0-eps"
    assert raw["conventions"]["intensity_range"] == [0.0, 1.0]
    model, config = load_prior(tmp_path / "run")
    assert config == FAST and model.config == TINY and not model.training
    _assert_same(model.state_dict(), raw["ema_state"])
    _assert_same(model.state_dict(), result.model.state_dict())
    raw_model, _ = load_prior(tmp_path / "run" / "last.pt", ema=False)
    _assert_same(raw_model.state_dict(), raw["model_state"])
    assert any(not torch.equal(raw["model_state"][k], raw["ema_state"][k]) for k in raw["model_state"])
    x = torch.rand(2, 1, 16, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(x, 0.3), result.model(x, 0.3))
    save_checkpoint(tmp_path / "other" / "last.pt", {**raw, "kind": "nam-multigap"})
    with pytest.raises(CheckpointError, match="not a rectified-flow prior"):
        load_prior(tmp_path / "other")


# --- two processes (gloo) --------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ddp_worker(rank: int, world: int, port: int, tmp: str) -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank)})
    torch.set_num_threads(1)
    import wsnodule_core.flow.train_prior as train_module

    writes: list[str] = []
    original = train_module.save_checkpoint

    def counting_save(path, payload):
        writes.append(Path(path).name)
        return original(path, payload)

    train_module.save_checkpoint = counting_save
    volumes = [_flat_volume(-200), _flat_volume(300, (24, 24, 24))]
    result = train_module.train_prior(volumes, Path(tmp) / "ddp", FAST)
    torch.save(result.model.state_dict(), Path(tmp) / f"rank{rank}.pt")
    (Path(tmp) / f"rank{rank}.json").write_text(json.dumps({"writes": writes, "steps": result.global_step}))


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    states = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    _assert_same(states[0], states[1])
    info = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert info[1]["writes"] == [] and info[0]["writes"] == ["last.pt", "last.pt"]
    assert info[0]["steps"] == info[1]["steps"] == 6
    assert load_checkpoint(tmp_path / "ddp").raw["world_size"] == 2
    # the same global batches in one process: the same losses up to float summation order, and
    # nearly the same weights (Adam's first steps, ~lr * sign(g), amplify rounding where g ~ 0)
    single = train_prior([_flat_volume(-200), _flat_volume(300, (24, 24, 24))], tmp_path / "one", FAST)
    ddp_losses = [h["train_loss"] for h in load_checkpoint(tmp_path / "ddp").history]
    assert np.allclose(ddp_losses, [h["train_loss"] for h in single.history], rtol=1e-4)
    init = build_prior_model(FAST).state_dict()
    ours = single.model.state_dict()
    apart = sum(float((states[0][k] - ours[k]).pow(2).sum()) for k in ours) ** 0.5
    moved = sum(float((ours[k] - init[k]).pow(2).sum()) for k in ours) ** 0.5
    assert apart < 0.05 * moved
