"""Training the rectified-flow prior (the velocity UNet) on unlabeled CT patches.

Each step draws a batch of cubic patches from the training volumes (centred on a random lung voxel
when the volume has a lung mask, anywhere otherwise), maps HU ``hu_window`` = [-1000, 1000] to
[0, 1] (MAISI) or [-1, 1] (``intensity_range``), and takes one AdamW step on
:func:`~wsnodule_core.flow.rectified_flow.rf_loss`. An exponential moving average (EMA) of the
weights is kept; :func:`load_prior` returns it. Checkpoint ``last.pt`` (``kind = "flow-prior"``)
is written every ``steps_per_epoch`` steps and on cancellation, and resumes exactly: the patches,
times and noise of step ``k`` depend only on ``(seed, k)``, so a resumed run makes the same
batches (and, with one process, the same weights) as an uninterrupted one. ``batch_size`` is the
global batch: under ``torchrun`` each of ``N`` processes takes every N-th patch of it. Run:
``torchrun --nproc_per_node=N -m wsnodule_core.cli.main train --method flow-prior DATA --out OUT
--flow-preset gpu``.
"""

from __future__ import annotations

import copy
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from wsnodule_core.errors import CheckpointError, ModelConfigError, TrainingDataError
from wsnodule_core.flow.rectified_flow import T_SAMPLING, VELOCITY, rf_loss, sample_noise, sample_times
from wsnodule_core.flow.velocity import VelocityConfig, VelocityUNet, build_velocity_model
from wsnodule_core.io.volume import Volume
from wsnodule_core.training import distributed as ddp
from wsnodule_core.training.callbacks import TrainCallbacks, as_callbacks
from wsnodule_core.training.checkpoint import (LAST, Checkpoint, capture_rng_state, load_model,
                                               restore_training_state, save_checkpoint)
from wsnodule_core.training.device import amp_enabled, deterministic, grad_scaler
from wsnodule_core.training.result import RunResult, config_from_dict
from wsnodule_core.training.setup import start_run

KIND = "flow-prior"
INTENSITY_RANGES = {"unit": (0.0, 1.0), "symmetric": (-1.0, 1.0)}
#: Lung voxels are listed on a grid of this stride (memory); patch centres are jittered within it.
CENTRE_STRIDE = 4


@dataclass(frozen=True)
class PriorTrainConfig:
    """Everything that defines a prior training run (saved in every checkpoint).

    ``patch_size`` None takes the model's; ``spacing_mm`` resamples every volume to isotropic
    voxels of that size first (None: the volumes' own grids); ``batch_size`` is the global
    batch; ``steps`` optimiser steps in all, ``steps_per_epoch`` of them between checkpoints and
    ``on_epoch`` reports. ``hu_window`` maps to ``intensity_range`` ("unit" [0, 1] as MAISI,
    "symmetric" [-1, 1]), clipped. ``t_sampling`` "uniform" (MAISI's default) or
    "logit-normal" (``t_loc``, ``t_scale``). LR: linear warm-up over ``warmup_steps``, then
    constant. EMA decay ramps as ``min(ema_decay, (1 + k) / (10 + k))`` at step ``k``.
    """

    model: VelocityConfig = field(default_factory=VelocityConfig.compact)
    patch_size: int | None = None
    spacing_mm: float | None = 1.5
    batch_size: int = 4
    steps: int = 1000
    steps_per_epoch: int = 100
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup_steps: int = 100
    grad_clip: float | None = 1.0
    ema_decay: float = 0.999
    t_sampling: str = "uniform"
    t_loc: float = 0.0
    t_scale: float = 1.0
    hu_window: tuple[float, float] = (-1000.0, 1000.0)
    intensity_range: str = "unit"
    splits: tuple[str, ...] = ("train",)
    seed: int = 0
    amp: bool = True                       # CUDA only
    device: str = "auto"
    deterministic: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.model, dict):
            object.__setattr__(self, "model", VelocityConfig.from_dict(self.model))
        object.__setattr__(self, "hu_window", tuple(float(v) for v in self.hu_window))
        object.__setattr__(self, "splits", tuple(self.splits))
        for name in ("batch_size", "steps", "steps_per_epoch"):
            if int(getattr(self, name)) < 1:
                raise ModelConfigError(f"{name} must be at least 1, got {getattr(self, name)!r}.")
        if self.warmup_steps < 0:
            raise ModelConfigError(f"warmup_steps must be >= 0, got {self.warmup_steps!r}.")
        if self.patch_size is not None and (self.patch_size < 1 or self.patch_size % self.model.divisor):
            raise ModelConfigError(f"patch_size must be a positive multiple of {self.model.divisor} for this "
                                   f"model, got {self.patch_size!r}.")
        if self.spacing_mm is not None and not self.spacing_mm > 0:
            raise ModelConfigError(f"spacing_mm must be positive (or None for the native grid), "
                                   f"got {self.spacing_mm!r}.")
        if not self.lr > 0 or self.weight_decay < 0:
            raise ModelConfigError(f"lr must be positive and weight_decay >= 0, got {self.lr}, "
                                   f"{self.weight_decay}.")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ModelConfigError(f"grad_clip must be positive or None, got {self.grad_clip!r}.")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ModelConfigError(f"ema_decay must lie in [0, 1), got {self.ema_decay!r}.")
        if self.t_sampling not in T_SAMPLING:
            raise ModelConfigError(f"t_sampling must be one of {T_SAMPLING}, got {self.t_sampling!r}.")
        if len(self.hu_window) != 2 or not self.hu_window[0] < self.hu_window[1]:
            raise ModelConfigError(f"hu_window must be (low, high) with low < high, got {self.hu_window!r}.")
        if self.intensity_range not in INTENSITY_RANGES:
            raise ModelConfigError(f"intensity_range must be one of {list(INTENSITY_RANGES)}, "
                                   f"got {self.intensity_range!r}.")

    @property
    def patch(self) -> int:
        """The patch edge in voxels."""
        return int(self.patch_size or self.model.patch_size)

    @classmethod
    def for_preset(cls, name: str = "compact", **changes) -> "PriorTrainConfig":
        """"compact": the CPU model, 32^3 patches at 1.5 mm, batch 4; "gpu": the GPU model, 64^3
        patches at 1 mm, batch 16, lr 1e-4, 20k steps; ``changes`` override fields."""
        model = VelocityConfig.preset(name)
        gpu = {"spacing_mm": 1.0, "batch_size": 16, "steps": 20000, "steps_per_epoch": 500,
               "warmup_steps": 500, "ema_decay": 0.9999}
        base = {"compact": {}, "gpu": gpu}[name]
        return cls(model=model, **{**base, **changes})

    def to_model(self, hu):
        """HU (numpy or torch) -> the model's intensities: ``hu_window`` onto ``intensity_range``, clipped."""
        low, high = self.hu_window
        a, b = INTENSITY_RANGES[self.intensity_range]
        unit = ((hu - low) / (high - low)).clip(0.0, 1.0)
        return unit * (b - a) + a

    def to_hu(self, x):
        """The model's intensities -> HU (inverse of :meth:`to_model` inside the window)."""
        low, high = self.hu_window
        a, b = INTENSITY_RANGES[self.intensity_range]
        return (x - a) / (b - a) * (high - low) + low

    def to_dict(self) -> dict:
        return {**asdict(self), "model": self.model.to_dict()}

    @classmethod
    def from_dict(cls, data: dict) -> "PriorTrainConfig":
        return config_from_dict(cls, data)


# --- data: volumes and patches ---------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class PatchSource:
    """One training volume: its HU array and candidate patch centres (lung voxels on a coarse grid,
    or None for anywhere)."""

    name: str
    array: np.ndarray
    centres: np.ndarray | None


def _as_pairs(data, config: PriorTrainConfig) -> Iterable[tuple[str, Volume, np.ndarray | None]]:
    from wsnodule_core.data.cases import Case
    from wsnodule_core.data.dataset import Dataset, load_dataset

    if isinstance(data, (str, os.PathLike)):
        data = load_dataset(data)
    if isinstance(data, Dataset):
        for split in config.splits:
            for case in data.cases(split):
                yield case.case_id, case.image, case.lungs
        return
    if isinstance(data, (Volume, Case)):
        data = [data]
    for i, item in enumerate(data):
        if isinstance(item, Case):
            yield item.case_id, item.image, item.lungs
        elif isinstance(item, Volume):
            yield f"volume{i}", item, None
        elif isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], Volume):
            lungs = item[1].array if isinstance(item[1], Volume) else item[1]
            yield f"volume{i}", item[0], None if lungs is None else np.asarray(lungs) > 0
        else:
            raise TrainingDataError(f"training item {i} is a {type(item).__name__}; give Volumes, "
                                    "(Volume, lung mask) pairs, Cases, a Dataset or a data set folder.")


def prepare_sources(data, config: PriorTrainConfig) -> list[PatchSource]:
    """The training volumes of ``data`` (a data set folder or ``Dataset``: the cases of
    ``config.splits``; or Volumes, ``(Volume, lungs)`` pairs, Cases), resampled to
    ``config.spacing_mm`` when set, with their lung voxels as patch centres."""
    from wsnodule_core.image.resample import resample_to_spacing

    sources = []
    for name, volume, lungs in _as_pairs(data, config):
        if lungs is not None and np.shape(lungs) != volume.shape:
            raise TrainingDataError(f"{name}: the lung mask has shape {np.shape(lungs)}, the image "
                                    f"{volume.shape}; give a mask on the image's grid.")
        if config.spacing_mm is not None:
            spacing = (float(config.spacing_mm),) * 3
            if lungs is not None:
                lungs = resample_to_spacing(volume.with_array(np.asarray(lungs, np.uint8)), spacing,
                                            interpolator="nearest").array > 0
            volume = resample_to_spacing(volume, spacing, fill=config.hu_window[0], keep_dtype=True)
        array = np.asarray(volume.array)
        array = array.astype(np.int16 if array.dtype.kind in "iu" else np.float32, copy=False)
        centres = None
        if lungs is not None and np.any(lungs):
            coarse = np.asarray(lungs)[::CENTRE_STRIDE, ::CENTRE_STRIDE, ::CENTRE_STRIDE]
            centres = (np.argwhere(coarse) * CENTRE_STRIDE).astype(np.int32)
            if not len(centres):  # lungs thinner than the stride: every lung voxel
                centres = np.argwhere(lungs).astype(np.int32)
        sources.append(PatchSource(name, array, centres))
    return sources


def extract_patch(array: np.ndarray, centre: Sequence[int], size: int, fill: float) -> np.ndarray:
    """The ``size``^3 cube of ``array`` with voxel ``centre`` at index ``size // 2``; outside filled
    with ``fill``."""
    out = np.full((size,) * 3, fill, np.float32)
    start = np.asarray(centre, int) - size // 2
    lo = np.maximum(start, 0)
    hi = np.minimum(start + size, array.shape)
    if np.all(hi > lo):
        src = tuple(slice(a, b) for a, b in zip(lo, hi))
        dst = tuple(slice(a - s, b - s) for a, b, s in zip(lo, hi, start))
        out[dst] = array[src]
    return out


def draw_batch(sources: Sequence[PatchSource], config: PriorTrainConfig, step: int, rank: int = 0,
               world_size: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Step ``step``'s patches for process ``rank`` of ``world_size`` (in model intensities,
    (n, 1, p, p, p) float32) and one seed per patch for its time and noise. The global batch
    depends only on ``(config.seed, step)``; each process takes every ``world_size``-th patch."""
    rng = np.random.default_rng([config.seed, step, 71])
    size = config.patch
    which = rng.integers(len(sources), size=config.batch_size)
    jitter = rng.integers(CENTRE_STRIDE, size=(config.batch_size, 3))
    uniform = rng.random((config.batch_size, 4))
    seeds = rng.integers(2**62, size=config.batch_size)
    patches = []
    for i in range(rank, config.batch_size, world_size):
        source = sources[which[i]]
        shape = np.asarray(source.array.shape)
        if source.centres is not None:
            centre = source.centres[int(uniform[i, 0] * len(source.centres))] + jitter[i]
        else:
            centre = np.floor(uniform[i, 1:] * shape).astype(int)
        hu = extract_patch(source.array, np.minimum(centre, shape - 1), size, config.hu_window[0])
        patches.append(config.to_model(hu))
    return np.stack(patches)[:, None].astype(np.float32), seeds[rank::world_size]


def _times_and_noise(seeds: np.ndarray, x0: torch.Tensor, config: PriorTrainConfig):
    ts, noises = [], []
    for i, seed in enumerate(seeds):
        g = torch.Generator().manual_seed(int(seed))
        ts.append(sample_times(1, g, method=config.t_sampling, loc=config.t_loc, scale=config.t_scale))
        noises.append(sample_noise(x0[i:i + 1], g))
    return torch.cat(ts), torch.cat(noises)


# --- model, optimiser, EMA -------------------------------------------------------------------------


def build_prior_model(config: PriorTrainConfig) -> VelocityUNet:
    """A fresh velocity UNet for ``config.model``, initialised from ``config.seed``."""
    torch.manual_seed(config.seed)
    return build_velocity_model(config.model)


def make_optimizer(model: torch.nn.Module, config: PriorTrainConfig):
    """AdamW and a linear warm-up (then constant) LambdaLR, stepped once per optimiser step."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    warmup = config.warmup_steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda k: min(1.0, (k + 1) / warmup) if warmup else 1.0)
    return optimizer, scheduler


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float, step: int) -> None:
    """``ema <- d ema + (1 - d) model`` with ``d = min(decay, (1 + step) / (10 + step))``; buffers copied."""
    d = min(decay, (1.0 + step) / (10.0 + step))
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p.detach(), 1.0 - d)
    for e, b in zip(ema.buffers(), model.buffers()):
        e.copy_(b)


def load_prior(path: str | os.PathLike, device: str | torch.device | None = None, *,
               ema: bool = True) -> tuple[VelocityUNet, PriorTrainConfig]:
    """The prior of a checkpoint (``last.pt`` or its run folder): the EMA weights (``ema=False``:
    the raw training weights), in eval mode on ``device`` (default the CPU), and the run's
    :class:`PriorTrainConfig` (model, patch size, spacing and intensity mapping)."""

    def build(checkpoint) -> VelocityUNet:
        return VelocityUNet(VelocityConfig.from_dict(checkpoint.model_config))

    model, checkpoint = load_model(path, KIND, build, "a rectified-flow prior; give a checkpoint written by "
                                   "train_prior", device)
    if ema:
        try:
            model.load_state_dict(checkpoint.raw["ema_state"])
        except (RuntimeError, KeyError) as error:
            raise CheckpointError(f"{checkpoint.path}: its EMA weights are missing or do not fit the model "
                                  f"({error}); load it with ema=False.") from error
    return model.eval(), PriorTrainConfig.from_dict(checkpoint.train_config)


# --- training --------------------------------------------------------------------------------------


def train_prior(volumes_or_dataset, out_dir: str | os.PathLike, config: PriorTrainConfig | None = None,
                callbacks: TrainCallbacks | object | None = None, *, resume: bool = False,
                overwrite: bool = False, log=None) -> RunResult:
    """Train the rectified-flow prior; write ``last.pt`` (with the EMA weights) into ``out_dir``.

    Parameters
    ----------
    volumes_or_dataset
        A data set folder or loaded ``Dataset`` (the cases of ``config.splits``), or a list of
        Volumes, ``(Volume, lung mask)`` pairs or Cases (see :func:`prepare_sources`).
    config
        The run's settings; with ``resume`` and no config, the checkpoint's own. A resumed run may
        change ``steps`` (train longer), not the model.
    callbacks
        ``on_step(step, total, loss)``, ``on_epoch(epoch, metrics)`` every ``steps_per_epoch``
        steps, ``should_stop()`` after each step (True saves ``last.pt`` and returns).
    resume, overwrite
        A folder holding checkpoints is refused unless ``resume`` (continue from ``last.pt``
        exactly) or ``overwrite`` (start again).
    log
        ``log(text)`` for one-line messages; rank 0 only.

    Returns
    -------
    RunResult
        ``best_path`` None (no validation), ``last_path``, ``best_metric`` None, ``model`` the EMA
        model in eval mode.
    """
    callbacks = as_callbacks(callbacks)

    def configure(checkpoint: Checkpoint | None) -> PriorTrainConfig:
        if checkpoint is None:
            return config or PriorTrainConfig()
        saved = PriorTrainConfig.from_dict(checkpoint.train_config)
        if config is not None and config.model != saved.model:
            raise CheckpointError(f"{checkpoint.path}: the run trained {saved.model}, the config asks for "
                                  f"{config.model}; resume with the same model.")
        return config or saved

    with start_run(out_dir, kind=KIND, name="flow prior", configure=configure, resume=resume,
                   overwrite=overwrite, distributed=True, log=log) as run:
        config, ctx = run.config, run.ctx
        if config.batch_size % ctx.world_size:
            raise ModelConfigError(f"batch_size {config.batch_size} must be a multiple of the "
                                   f"{ctx.world_size} processes.")
        with deterministic(config.deterministic):
            return _train(volumes_or_dataset, run.out, config, callbacks, run.checkpoint, ctx, run.device, run.say)


def _train(data, out: Path, config: PriorTrainConfig, callbacks: TrainCallbacks, checkpoint, ctx, device,
           say) -> RunResult:
    sources = prepare_sources(data, config)
    if not sources:
        raise TrainingDataError("no training volumes: the data (or the data set's splits "
                                f"{list(config.splits)}) holds none; give Volumes or another split.")
    with_lungs = sum(s.centres is not None for s in sources)
    say(f"training volumes: {len(sources)} ({with_lungs} with lungs); patches {config.patch}^3"
        + (f" at {config.spacing_mm} mm" if config.spacing_mm else " on the native grids"))
    use_amp = amp_enabled(device, config.amp)
    random.seed(config.seed)
    np.random.seed(config.seed % 2**32)
    model = build_prior_model(config).to(device)
    ema = copy.deepcopy(model).requires_grad_(False)
    optimizer, scheduler = make_optimizer(model, config)
    scaler = grad_scaler(device, use_amp)
    state = restore_training_state(checkpoint, model, optimizer, scheduler, scaler)
    global_step, history = state.global_step, state.history
    running = (0.0, 0)
    if checkpoint is not None:
        ema.load_state_dict(checkpoint.raw["ema_state"])
        running = tuple(checkpoint.raw.get("epoch_loss", (0.0, 0)))
        say(f"resuming from {out / LAST} at step {global_step}")
    net = model
    if ctx.enabled:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    data_info = {"volumes": len(sources), "with_lungs": with_lungs, "names": [s.name for s in sources][:1000]}
    loss_sum, n_losses = float(running[0]), int(running[1])

    def save() -> None:
        document = {"kind": KIND, "model_config": model.config.to_dict(), "train_config": config.to_dict(),
                    "epoch": global_step // config.steps_per_epoch,
                    "step_in_epoch": global_step % config.steps_per_epoch, "global_step": global_step,
                    "model_state": model.state_dict(), "ema_state": ema.state_dict(),
                    "optimizer_state": optimizer.state_dict(), "scheduler_state": scheduler.state_dict(),
                    "scaler_state": scaler.state_dict(), "rng": capture_rng_state(),
                    "epoch_loss": [loss_sum, n_losses], "best_metric": None, "best_epoch": None,
                    "history": history, "data": data_info, "world_size": ctx.world_size,
                    "conventions": {"velocity": VELOCITY, "time": "x_t = (1 - t) x0 + t eps; t=0 clean",
                                    "hu_window": list(config.hu_window),
                                    "intensity_range": list(INTENSITY_RANGES[config.intensity_range])}}
        if ctx.is_main:
            save_checkpoint(out / LAST, document)
        ddp.barrier(ctx)

    model.train()
    started = time.monotonic()
    while global_step < config.steps:
        x0, seeds = draw_batch(sources, config, global_step, ctx.rank, ctx.world_size)
        x0 = torch.from_numpy(x0).to(device, non_blocking=True)
        t, noise = _times_and_noise(seeds, x0, config)
        loss = rf_loss(net, x0, t=t, noise=noise, use_amp=use_amp)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if config.grad_clip is not None:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        update_ema(ema, model, config.ema_decay, global_step)
        global_step += 1
        loss_value = float(loss.detach())
        if not math.isfinite(loss_value):
            raise TrainingDataError(f"the training loss became {loss_value} at step {global_step}; lower the "
                                    f"learning rate (lr={config.lr}) or check the volumes' intensities.")
        loss_sum, n_losses = loss_sum + loss_value, n_losses + 1
        if ctx.is_main:
            callbacks.on_step(global_step, config.steps, loss_value)
        epoch_done = global_step % config.steps_per_epoch == 0 or global_step == config.steps
        if epoch_done:
            sums = ddp.all_reduce_sum(torch.tensor([loss_sum, n_losses], dtype=torch.float64), ctx)
            metrics = {"epoch": math.ceil(global_step / config.steps_per_epoch), "step": global_step,
                       "train_loss": float(sums[0] / max(float(sums[1]), 1.0)),
                       "lr": optimizer.param_groups[0]["lr"], "seconds": time.monotonic() - started}
            history.append(metrics)
            loss_sum, n_losses, started = 0.0, 0, time.monotonic()
            save()
            say(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()))
            if ctx.is_main:
                callbacks.on_epoch(metrics["epoch"], metrics)
        stop = torch.tensor([float(callbacks.should_stop())], dtype=torch.float64)
        if ddp.all_reduce_sum(stop, ctx).item() > 0 and global_step < config.steps:
            if not epoch_done:
                save()
            say(f"stopped at step {global_step}; {out / LAST} saved")
            return _result(out, global_step, history, True, device, ema, config)
    if global_step and not (out / LAST).exists():
        save()
    return _result(out, global_step, history, False, device, ema, config)


def _result(out: Path, step: int, history, cancelled: bool, device, ema, config) -> RunResult:
    return RunResult(out, None, out / LAST if (out / LAST).exists() else None, step // config.steps_per_epoch,
                     step, None, None, history, cancelled, str(device), ema.eval())
