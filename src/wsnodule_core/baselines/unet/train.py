"""Training the U-Net baseline on full nodule masks (the paper's section 3.2 recipe).

The slices are the NAM classifier's (:mod:`wsnodule_core.data.slices`: lung-centred crops of
the train/val splits, with their per-slice nodule masks); batches hold as many slices with a
nodule as without (1:1, as the paper's slice set; by default an epoch is every nodule slice
and as many fresh nodule-free ones). Loss: the negative Dice coefficient of the mini-batch
(soft Dice of the sigmoid probabilities); Adam, initial LR 2e-4, decay 0.999 per epoch, batch
20. ``best.pt`` is chosen by the validation Dice (mean over validation slices with a nodule,
prediction thresholded), ``last.pt`` resumes exactly. Device choice, checkpoints, callbacks,
batch sampling and augmentation are the shared :mod:`wsnodule_core.training` pieces.
"""

from __future__ import annotations

import math
import os
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from wsnodule_core.baselines.unet.model import UNetConfig, UNetSegmenter
from wsnodule_core.errors import CheckpointError, ModelConfigError, TrainingDataError
from wsnodule_core.training.augment import AugmentConfig, augment_pair
from wsnodule_core.training.callbacks import TrainCallbacks, as_callbacks
from wsnodule_core.training.checkpoint import (LAST, Checkpoint, capture_rng_state, load_model,
                                               restore_training_state, save_checkpoint)
from wsnodule_core.training.device import amp_enabled, autocast, deterministic, grad_scaler
from wsnodule_core.training.loop import EpochLoop, RunState, optimizer_step
from wsnodule_core.training.result import RunResult, config_from_dict
from wsnodule_core.training.sampler import BalancedBatchSampler
from wsnodule_core.training.setup import start_run

KIND = "unet-baseline"
LOSS_MODES = ("batch", "per_slice")


def negative_dice_loss(logits: torch.Tensor, target: torch.Tensor, *, mode: str = "batch",
                       smooth: float = 1.0) -> torch.Tensor:
    """The paper's cost: minus the soft Dice coefficient of a mini-batch, in [-1, 0].

    With ``p = sigmoid(logits)`` and ``g`` the masks (B, 1, H, W):
    ``mode="batch"``: ``-(2 sum(p g) + s) / (sum(p) + sum(g) + s)`` with the sums over the whole
    mini-batch (MONAI ``DiceLoss(sigmoid=True, batch=True)`` minus 1; a slice without nodule adds
    its false positives to the denominator); ``mode="per_slice"``: minus the mean over the slices
    of each slice's Dice (MONAI ``batch=False``; an empty slice scores ``s / (sum(p) + s)``).
    ``smooth`` is ``s`` (numerator and denominator).
    """
    from monai.losses import DiceLoss

    if mode not in LOSS_MODES:
        raise ModelConfigError(f"loss mode must be one of {LOSS_MODES}, got {mode!r}.")
    if logits.shape != target.shape:
        raise ModelConfigError(f"negative_dice_loss: logits {tuple(logits.shape)} and masks "
                               f"{tuple(target.shape)} differ in shape.")
    dice_loss = DiceLoss(sigmoid=True, batch=mode == "batch", smooth_nr=smooth, smooth_dr=smooth)
    return dice_loss(logits.float(), target.float()) - 1.0


@dataclass(frozen=True)
class UNetTrainConfig:
    """Everything that defines a U-Net run (saved in every checkpoint); defaults = the paper."""

    model: UNetConfig = field(default_factory=UNetConfig)
    lr: float = 2e-4
    lr_decay: float = 0.999                # ExponentialLR gamma, per epoch
    batch_size: int = 20
    epochs: int = 50
    max_steps_per_epoch: int | None = None
    epoch_size: str = "balanced"           # "balanced": every nodule slice and as many without; "all" slices
    loss: str = "batch"                    # see negative_dice_loss
    smooth: float = 1.0
    threshold: float = 0.5                 # probability -> mask, for the validation Dice
    min_nodule_area_mm2: float = 0.0
    min_lung_fraction: float = 0.1
    seed: int = 0
    amp: bool = True                       # CUDA only
    device: str = "auto"
    deterministic: bool = False
    augment: bool = True
    eval_batch_size: int = 32

    def __post_init__(self) -> None:
        if isinstance(self.model, dict):
            object.__setattr__(self, "model", UNetConfig.from_dict(self.model))
        for name in ("batch_size", "epochs", "eval_batch_size"):
            if int(getattr(self, name)) < 1:
                raise ModelConfigError(f"{name} must be at least 1, got {getattr(self, name)!r}.")
        if self.batch_size < 2:
            raise ModelConfigError(f"batch_size must be at least 2 (half the slices hold a nodule), "
                                   f"got {self.batch_size}.")
        if not self.lr > 0 or not 0 < self.lr_decay <= 1:
            raise ModelConfigError(f"lr must be positive and lr_decay in (0, 1], "
                                   f"got {self.lr}, {self.lr_decay}.")
        if self.loss not in LOSS_MODES:
            raise ModelConfigError(f"loss must be one of {LOSS_MODES}, got {self.loss!r}.")
        if self.epoch_size not in ("balanced", "all"):
            raise ModelConfigError(f"epoch_size must be 'balanced' or 'all', got {self.epoch_size!r}.")
        if not 0 < self.threshold < 1:
            raise ModelConfigError(f"threshold must lie in (0, 1), got {self.threshold}.")

    def slice_config(self):
        return self.model.slice_config(min_nodule_area_mm2=self.min_nodule_area_mm2,
                                       min_lung_fraction=self.min_lung_fraction)

    def to_dict(self) -> dict:
        return {**asdict(self), "model": self.model.to_dict()}

    @classmethod
    def from_dict(cls, data: dict) -> "UNetTrainConfig":
        return config_from_dict(cls, data)


UNetTrainResult = RunResult  # what train_* returns; the model is a UNetSegmenter


def build_model(config: UNetTrainConfig) -> UNetSegmenter:
    """A fresh U-Net, initialised from ``config.seed``."""
    torch.manual_seed(config.seed)
    return UNetSegmenter(config.model)


def make_optimizer(model: torch.nn.Module, config: UNetTrainConfig):
    """Adam at ``config.lr`` and an ExponentialLR of ``config.lr_decay`` (stepped once per epoch)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    return optimizer, torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=config.lr_decay)


def load_unet(path: str | os.PathLike,
              device: str | torch.device | None = None) -> tuple[UNetSegmenter, Checkpoint]:
    """The U-Net of a checkpoint (``best.pt``/``last.pt`` or its run folder), in eval mode on
    ``device`` (default the CPU)."""
    return load_model(path, KIND, lambda c: UNetSegmenter(UNetConfig.from_dict(c.model_config)),
                      "the U-Net baseline; give a checkpoint written by the U-Net training", device)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else 2.0 * float(np.logical_and(a, b).sum()) / float(total)


@torch.no_grad()
def evaluate(model: UNetSegmenter, slices, device: torch.device | str = "cpu", *, batch_size: int = 32,
             threshold: float = 0.5, loss: str = "batch", smooth: float = 1.0, use_amp: bool = False) -> dict:
    """Scores of ``model`` on a :class:`~wsnodule_core.data.slices.SliceSet`.

    ``soft_dice``: minus the training loss averaged over batches of ``batch_size``; ``dice``: the
    mean over slices with a nodule of the Dice of the thresholded prediction (the paper's
    "Dice"); ``dice_pooled``: Dice of all slices' pixels together; ``fp_slice_rate``: fraction
    of slices without nodule where something is predicted.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    soft, dices, fp, n_neg, inter, total = [], [], 0, 0, 0.0, 0.0
    for start in range(0, len(slices), batch_size):
        chunk = slice(start, start + batch_size)
        x = torch.from_numpy(np.asarray(slices.images[chunk], np.float32))[:, None].to(device)
        g = torch.from_numpy(np.asarray(slices.masks[chunk] > 0, np.float32))[:, None].to(device)
        with autocast(device, use_amp):
            logits = model(x)
        soft.append(-float(negative_dice_loss(logits, g, mode=loss, smooth=smooth)))
        pred = (torch.sigmoid(logits.float()) >= threshold).cpu().numpy()[:, 0]
        truth = g.cpu().numpy()[:, 0] > 0
        inter += float(np.logical_and(pred, truth).sum())
        total += float(pred.sum() + truth.sum())
        for p, t in zip(pred, truth):
            if t.any():
                dices.append(_dice(p, t))
            else:
                n_neg += 1
                fp += int(p.any())
    model.train(was_training)
    return {"soft_dice": float(np.mean(soft)) if soft else float("nan"),
            "dice": float(np.mean(dices)) if dices else float("nan"),
            "dice_pooled": 2 * inter / total if total else 1.0,
            "fp_slice_rate": fp / n_neg if n_neg else float("nan")}


def _resolve_data(data, config: UNetTrainConfig):
    from wsnodule_core.data.slices import SliceSet, slices_from_dataset

    if isinstance(data, SliceSet):
        return data, None
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], SliceSet):
        return data[0], data[1]
    slice_config = config.slice_config()
    train = slices_from_dataset(data, "train", slice_config)
    val = slices_from_dataset(data, "val", slice_config)
    return train, (val if len(val) else None)


def _check_slices(slices, config: UNetTrainConfig, name: str) -> None:
    size = config.model.input_size
    if slices.images.shape[1:] != (size, size):
        raise TrainingDataError(f"the {name} slices are {slices.images.shape[1:]} pixels but the U-Net takes "
                                f"{size} x {size}; cut them with config.slice_config().")
    if name == "training" and not slices.masks[slices.labels == 1].any():
        raise TrainingDataError("the training slices with a nodule carry no nodule mask (weak labels "
                                "only); the U-Net baseline needs voxel masks.")


def _aug_seed(seed: int, epoch: int) -> int:
    return int(np.random.default_rng([seed, epoch, 29]).integers(2**62))


def train_unet(data, out_dir: str | os.PathLike, config: UNetTrainConfig | None = None,
               callbacks: TrainCallbacks | object | None = None, *, resume: bool = False,
               overwrite: bool = False, log=None) -> UNetTrainResult:
    """Train the U-Net baseline; write ``best.pt`` and ``last.pt`` into ``out_dir``.

    Parameters
    ----------
    data
        A data set folder or loaded ``Dataset`` (train and val splits, cut with
        ``config.slice_config()``), a ``SliceSet`` (training only) or a ``(train, val)`` pair.
    config
        The run's settings; with ``resume`` and no config, the checkpoint's own.
    callbacks
        ``on_step(step, total, loss)``, ``on_epoch(epoch, metrics)``, ``should_stop()``
        (True saves ``last.pt`` and returns).
    resume, overwrite
        A folder holding checkpoints is refused unless ``resume`` (continue from ``last.pt``:
        same batches, augmentation, optimiser and RNG states) or ``overwrite`` (start again).
    log
        ``log(text)`` for one-line messages.
    """
    callbacks = as_callbacks(callbacks)

    def configure(checkpoint: Checkpoint | None) -> UNetTrainConfig:
        if checkpoint is None:
            return config or UNetTrainConfig()
        saved = UNetTrainConfig.from_dict(checkpoint.train_config)
        if config is not None and config.model != saved.model:
            raise CheckpointError(f"{checkpoint.path}: the run trained {saved.model}, the config asks for "
                                  f"{config.model}; resume with the same model settings.")
        return config or saved

    run = start_run(out_dir, kind=KIND, name="U-Net", configure=configure, resume=resume, overwrite=overwrite,
                    log=log)
    with deterministic(run.config.deterministic):
        return _train(data, run.out, run.config, callbacks, run.checkpoint, run.device, run.say)


def _train(data, out: Path, config: UNetTrainConfig, callbacks: TrainCallbacks, checkpoint, device, say
           ) -> UNetTrainResult:
    train_set, val_set = _resolve_data(data, config)
    if len(train_set) == 0:
        raise TrainingDataError("no training slices: the train split yields no labelled slice; check its "
                                "lungs and nodule masks, or lower min_lung_fraction.")
    _check_slices(train_set, config, "training")
    if val_set is not None:
        _check_slices(val_set, config, "validation")
    say(f"training slices: {train_set.n_positive} with nodule, {train_set.n_negative} without (batches 1:1); "
        f"validation: {len(val_set) if val_set is not None else 0}")
    use_amp = amp_enabled(device, config.amp)
    random.seed(config.seed)
    np.random.seed(config.seed % 2**32)
    model = build_model(config).to(device)
    optimizer, scheduler = make_optimizer(model, config)
    scaler = grad_scaler(device, use_amp)
    state = RunState.resumed(restore_training_state(checkpoint, model, optimizer, scheduler, scaler), checkpoint)
    aug_state = None
    if checkpoint is not None:
        aug_state = checkpoint.raw.get("augment_rng")
        if not state.epoch_sums and state.step_in_epoch:  # runs saved before epoch_sums existed
            state.epoch_sums = [float(v) for v in checkpoint.raw.get("epoch_loss", (0.0, 0))]
        say(f"resuming from {out / LAST} after epoch {state.epoch}, step {state.global_step}")
    images = torch.from_numpy(np.ascontiguousarray(train_set.images))
    masks = torch.from_numpy(np.ascontiguousarray(train_set.masks > 0))
    sampler = BalancedBatchSampler(train_set.labels, config.batch_size, config.seed,
                                   epoch_size=config.epoch_size)
    steps_per_epoch = len(sampler) if config.max_steps_per_epoch is None else min(len(sampler),
                                                                                  config.max_steps_per_epoch)
    augment = AugmentConfig()
    data_info = {"train": train_set.describe(), "val": val_set.describe() if val_set is not None else None}

    def batches(epoch: int) -> list:
        sampler.set_epoch(epoch)
        return list(sampler)[:steps_per_epoch]

    def train_step(batch, generator: torch.Generator) -> tuple[float, torch.Tensor]:
        index = torch.as_tensor(batch)
        x = images[index].to(device).float()[:, None]
        g = masks[index].to(device).float()[:, None]
        if config.augment:
            x, g = augment_pair(x, g, generator, augment)
        with autocast(device, use_amp):
            logits = model(x)
        loss = negative_dice_loss(logits, g, mode=config.loss, smooth=config.smooth)
        value = optimizer_step(loss, optimizer, scaler, step=state.global_step + 1, lr=config.lr)
        return value, torch.tensor([value, 1.0], dtype=torch.float64)

    def end_epoch(epoch: int, sums: torch.Tensor) -> tuple[dict, float]:
        scheduler.step()
        loss_sum, n_batches = float(sums[0]), max(float(sums[1]), 1.0)
        metrics = {"epoch": epoch + 1, "train_loss": loss_sum / n_batches, "train_dice": -loss_sum / n_batches,
                   "lr": optimizer.param_groups[0]["lr"]}
        if val_set is not None:
            val = evaluate(model, val_set, device, batch_size=config.eval_batch_size,
                           threshold=config.threshold, loss=config.loss, smooth=config.smooth,
                           use_amp=use_amp)
            metrics.update({f"val_{k}": v for k, v in val.items()})
        score = metrics.get("val_dice", float("nan"))
        if not math.isfinite(score):  # no validation slice with a nodule: the training Dice decides
            score = metrics["train_dice"]
        return metrics, score

    def save(names: tuple[str, ...], run: RunState) -> None:
        document = {"kind": KIND, "model_config": model.config.to_dict(), "train_config": config.to_dict(),
                    **run.fields(), "model_state": model.state_dict(), "optimizer_state": optimizer.state_dict(),
                    "scheduler_state": scheduler.state_dict(), "scaler_state": scaler.state_dict(),
                    "rng": capture_rng_state(), "augment_rng": loop.generator.get_state(), "data": data_info}
        for name in names:
            save_checkpoint(out / name, document)

    loop = EpochLoop(config.epochs, steps_per_epoch, batches, train_step, end_epoch, save,
                     lambda epoch: _aug_seed(config.seed, epoch), callbacks, say, out, n_sums=2)
    model.train()
    epochs_done, cancelled = loop.run(state, aug_state)
    return state.result(out, epochs_done, cancelled, device, model)
