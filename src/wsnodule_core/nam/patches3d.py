"""Isotropic 3D CT patches with patch-level labels, and training the 3D multi-GAP classifier on them.

Data: every case of a data-set split (``wsnodule_core.data.dataset``) is resampled once to an
isotropic grid (SimpleITK, linear for the image, nearest for the label map and lungs, the same
physical box, origin and direction), padded by a patch side, and cut into cubes of
``patch_size`` voxels: label 1 = a nodule centre lies in the central ``centre_fraction`` of the
cube (one cube centred on each nodule plus ``positives_per_nodule - 1`` jittered ones), label 0 =
a cube centred on a lung voxel that holds no nodule voxel. Intensities: HU over ``window`` mapped
to [0, 1] (clipped), stored as float16.

Training (:func:`train_classifier_3d`) reuses the project's training infrastructure
(``wsnodule_core.training``: device choice, mixed precision on CUDA, class-balanced batches,
self-describing checkpoints, callbacks): AdamW (or the paper's SGD with momentum), exponential LR
decay, ``best.pt`` by validation accuracy and ``last.pt``, exact resume. Augmentation: random
90-degree rotations in the axial plane and flips along x and z (exact, no interpolation). Single
process (no DDP).
"""

from __future__ import annotations

import math
import os
import random
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from wsnodule_core.errors import (CheckpointError, ModelConfigError, SegmentationCancelled, TrainingDataError)
from wsnodule_core.image.resample import resample_to_spacing
from wsnodule_core.image.window import AIR_HU, NAM3D_WINDOW, apply_window
from wsnodule_core.nam.model3d import KIND_3D, MultiGap3DClassifier, MultiGap3DConfig
from wsnodule_core.training.augment import augment_patches
from wsnodule_core.training.callbacks import TrainCallbacks, as_callbacks
from wsnodule_core.training.checkpoint import (LAST, Checkpoint, capture_rng_state, restore_training_state,
                                               save_checkpoint)
from wsnodule_core.training.device import amp_enabled, autocast, grad_scaler
from wsnodule_core.training.loop import CLASSIFY_SUMS, EpochLoop, RunState, classify_metrics, classify_step
from wsnodule_core.training.result import RunResult, config_from_dict
from wsnodule_core.training.sampler import BalancedBatchSampler
from wsnodule_core.training.setup import start_run


# --- patch sets -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Patch3DConfig:
    """How patches are cut (see the module docstring). Sizes in voxels of the isotropic grid."""

    patch_size: int = 32
    spacing_mm: float = 1.0
    window: tuple[float, float] = NAM3D_WINDOW
    centre_fraction: float = 0.5
    positives_per_nodule: int = 4
    negatives_per_case: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "window", tuple(float(w) for w in self.window))
        if int(self.patch_size) < 4 or not self.spacing_mm > 0 or not 0 < self.centre_fraction <= 1:
            raise ModelConfigError(
                "Patch3DConfig: patch_size must be >= 4, spacing_mm > 0 and centre_fraction in (0, 1], got "
                f"{self.patch_size}, {self.spacing_mm}, {self.centre_fraction}.")
        if self.positives_per_nodule < 1 or self.negatives_per_case < 0:
            raise ModelConfigError(
                "Patch3DConfig: positives_per_nodule must be >= 1 and negatives_per_case >= 0, got "
                f"{self.positives_per_nodule} and {self.negatives_per_case}.")


@dataclass(frozen=True, eq=False)
class PatchSet3D:
    """Patches ``images`` (n, s, s, s) float16 in [0, 1], ``labels`` (n,) int8, each patch's case and the
    world (x, y, z) mm of its centre voxel (index ``s // 2``)."""

    images: np.ndarray
    labels: np.ndarray
    case_ids: np.ndarray
    centres_xyz: np.ndarray
    config: Patch3DConfig

    def __len__(self) -> int:
        return int(len(self.labels))

    @property
    def n_positive(self) -> int:
        return int(np.count_nonzero(self.labels == 1))

    @property
    def n_negative(self) -> int:
        return int(np.count_nonzero(self.labels == 0))

    def describe(self) -> dict:
        return {"n": len(self), "positive": self.n_positive, "negative": self.n_negative,
                "cases": sorted({str(c) for c in self.case_ids}), "config": asdict(self.config)}

    @staticmethod
    def concatenate(sets: "list[PatchSet3D]", config: Patch3DConfig) -> "PatchSet3D":
        s = int(config.patch_size)
        if not sets:
            return PatchSet3D(np.zeros((0, s, s, s), np.float16), np.zeros(0, np.int8), np.zeros(0, object),
                              np.zeros((0, 3)), config)
        return PatchSet3D(np.concatenate([p.images for p in sets]), np.concatenate([p.labels for p in sets]),
                          np.concatenate([p.case_ids for p in sets]),
                          np.concatenate([p.centres_xyz for p in sets]),
                          config)


def case_patches(case, config: Patch3DConfig = Patch3DConfig()) -> PatchSet3D:
    """The labelled isotropic patches of one :class:`~wsnodule_core.data.cases.Case`."""
    s = int(config.patch_size)
    image = resample_to_spacing(case.image, config.spacing_mm, size="ceil", fill=AIR_HU)
    mask = resample_to_spacing(case.mask, config.spacing_mm, size="ceil", interpolator="nearest")
    lungs = resample_to_spacing(case.image.with_array(np.asarray(case.lungs, np.uint8)), config.spacing_mm,
                                size="ceil", interpolator="nearest")
    pad = [(s, s)] * 3
    hu = np.pad(np.asarray(image.array, np.float32), pad, constant_values=AIR_HU)
    nodule = np.pad(np.asarray(mask.array) > 0, pad)
    lung = np.pad(np.asarray(lungs.array) > 0, pad)
    rng = np.random.default_rng([int(config.seed), *[ord(c) for c in case.case_id]])
    half = s // 2
    # the largest jitter that keeps the nodule centre inside the central region
    reach = max(0, int(math.floor(config.centre_fraction * s / 2.0)) - 1)
    centres: list[np.ndarray] = []
    labels: list[int] = []
    sites = [(record.centre_xyz, 1) for record in case.nodules]
    sites += [(site, 0) for site in case.negative_sites_xyz]  # nodule-free crops: cut as positives are
    for site, label in sites:
        centre = np.round(image.world_to_index(site)).astype(int) + s
        for k in range(config.positives_per_nodule):
            shift = np.zeros(3, int) if k == 0 else rng.integers(-reach, reach + 1, 3)
            centres.append(centre + shift)
            labels.append(label)
    if case.negatives_ok and config.negatives_per_case > 0 and not case.negative_sites_xyz:
        candidates = np.flatnonzero(lung)
        tries = 0
        found = 0
        want = config.negatives_per_case
        while candidates.size and found < want and tries < 30 * want:
            tries += 1
            centre = np.array(np.unravel_index(int(candidates[rng.integers(candidates.size)]), lung.shape))
            start = centre - half
            if np.any(start < 0) or np.any(start + s > np.asarray(lung.shape)):
                continue
            if nodule[tuple(slice(a, a + s) for a in start)].any():
                continue
            centres.append(centre)
            labels.append(0)
            found += 1
    images = np.zeros((len(centres), s, s, s), np.float16)
    kept = []
    for i, centre in enumerate(centres):
        start = np.clip(centre - half, 0, np.asarray(hu.shape) - s)
        images[i] = apply_window(hu[tuple(slice(a, a + s) for a in start)], config.window)
        kept.append(start + half - s)  # the centre voxel on the unpadded isotropic grid
    world = image.index_to_world(np.asarray(kept, float)) if kept else np.zeros((0, 3))
    return PatchSet3D(images, np.asarray(labels, np.int8), np.full(len(labels), case.case_id, dtype=object),
                      np.asarray(world, float).reshape(-1, 3), config)


def patches_from_dataset(data, split: str | None, config: Patch3DConfig = Patch3DConfig(), *,
                         progress: Callable[[int, int], None] | None = None,
                         cancel: Callable[[], bool] | None = None) -> PatchSet3D:
    """All patches of a data-set split (``data``: a folder of ``build_dataset`` or a loaded ``Dataset``)."""
    from wsnodule_core.data.dataset import load_dataset

    dataset = load_dataset(data) if isinstance(data, (str, os.PathLike)) else data
    entries = dataset.entries(split)
    sets = []
    for i, entry in enumerate(entries):
        if cancel is not None and cancel():
            raise SegmentationCancelled(f"cutting 3D patches was cancelled after {i} case(s).")
        sets.append(case_patches(dataset.load_case(entry), config))
        if progress is not None:
            progress(i + 1, len(entries))
    return PatchSet3D.concatenate(sets, config)


# --- training ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Train3DConfig:
    """Everything that defines a 3D NAM training run (saved in every checkpoint)."""

    n_gap: int = 1
    width: str = "narrow"
    channels: tuple[int, ...] | None = None
    head_channels: int | None = None
    convs_per_block: int = 2
    norm: str = "group"
    patch_size: int = 32
    spacing_mm: float = 1.0
    window: tuple[float, float] = NAM3D_WINDOW
    centre_fraction: float = 0.5
    positives_per_nodule: int = 4
    negatives_per_case: int = 8
    optimizer: str = "adamw"           # "adamw" (from scratch) or "sgd" (the paper's, momentum below)
    lr: float = 3e-3
    new_layer_lr_factor: float = 1.0   # the paper's 10x is for fine-tuning; a 3D backbone starts fresh
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_decay: float = 0.99
    batch_size: int = 16
    epochs: int = 20
    max_steps_per_epoch: int | None = None
    augment: bool = True
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    eval_batch_size: int = 32

    def __post_init__(self) -> None:
        object.__setattr__(self, "window", tuple(float(w) for w in self.window))
        if self.channels is not None:
            object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        for name in ("batch_size", "epochs", "eval_batch_size"):
            if int(getattr(self, name)) < 1:
                raise ModelConfigError(f"{name} must be at least 1, got {getattr(self, name)!r}.")
        if not self.lr > 0:
            raise ModelConfigError(f"lr must be positive, got {self.lr!r}.")
        if self.optimizer not in ("adamw", "sgd"):
            raise ModelConfigError(f"optimizer must be 'adamw' or 'sgd', got {self.optimizer!r}.")
        model = self.model_config()
        if self.patch_size % model.downsampling:
            raise ModelConfigError(
                f"patch_size {self.patch_size} is not a multiple of {model.downsampling}, the model's "
                "downsampling; pick another patch size or fewer blocks (channels).")

    def model_config(self) -> MultiGap3DConfig:
        return MultiGap3DConfig(n_gap=self.n_gap, width=self.width, channels=self.channels,
                                head_channels=self.head_channels, convs_per_block=self.convs_per_block,
                                norm=self.norm)

    def patch_config(self) -> Patch3DConfig:
        return Patch3DConfig(self.patch_size, self.spacing_mm, self.window, self.centre_fraction,
                             self.positives_per_nodule, self.negatives_per_case, self.seed)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["window"] = list(self.window)
        data["channels"] = None if self.channels is None else list(self.channels)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "Train3DConfig":
        return config_from_dict(cls, data)


Train3DResult = RunResult  # what train_* returns; the model is a MultiGap3DClassifier


@torch.no_grad()
def evaluate_3d(model: MultiGap3DClassifier, patches: PatchSet3D, device: torch.device | str = "cpu", *,
                batch_size: int = 32, use_amp: bool = False) -> dict:
    """Mean cross-entropy, accuracy, sensitivity and specificity of ``model`` on ``patches`` (eval mode)."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    loss_sum, correct, tp, tn = 0.0, 0, 0, 0
    for start in range(0, len(patches), batch_size):
        x = torch.from_numpy(patches.images[start:start + batch_size]).to(device).float()[:, None]
        y = torch.from_numpy(patches.labels[start:start + batch_size].astype(np.int64)).to(device)
        with autocast(device, use_amp):
            logits = model(x)
        loss_sum += float(F.cross_entropy(logits.float(), y, reduction="sum"))
        pred = logits.argmax(1)
        correct += int((pred == y).sum())
        tp += int(((pred == 1) & (y == 1)).sum())
        tn += int(((pred == 0) & (y == 0)).sum())
    model.train(was_training)
    n = max(len(patches), 1)
    return {"loss": loss_sum / n, "accuracy": correct / n,
            "sensitivity": tp / patches.n_positive if patches.n_positive else float("nan"),
            "specificity": tn / patches.n_negative if patches.n_negative else float("nan")}


def _resolve(data, config: Train3DConfig, progress) -> tuple[PatchSet3D, PatchSet3D | None]:
    if isinstance(data, PatchSet3D):
        return data, None
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], PatchSet3D):
        return data[0], data[1]
    patch_config = config.patch_config()
    train = patches_from_dataset(data, "train", patch_config, progress=progress)
    val = patches_from_dataset(data, "val", patch_config)
    return train, (val if len(val) and val.n_positive and val.n_negative else None)


def build_model_3d(config: Train3DConfig) -> MultiGap3DClassifier:
    torch.manual_seed(config.seed)
    return MultiGap3DClassifier(config.model_config())


def _optimizer(model: MultiGap3DClassifier, config: Train3DConfig):
    groups = [{"params": model.backbone_parameters(), "lr": config.lr, "name": "backbone"},
              {"params": model.new_parameters(), "lr": config.lr * config.new_layer_lr_factor, "name": "new"}]
    if config.optimizer == "sgd":
        optimizer = torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum,
                                    weight_decay=config.weight_decay)
    else:
        optimizer = torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
    return optimizer, torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=config.lr_decay)


def _aug_seed(seed: int, epoch: int) -> int:
    return int(np.random.default_rng([seed, epoch, 31]).integers(2**62))


def train_classifier_3d(data, out_dir: str | os.PathLike, config: Train3DConfig | None = None,
                        callbacks: TrainCallbacks | object | None = None, *, resume: bool = False,
                        overwrite: bool = False, log: Callable[[str], None] | None = None) -> Train3DResult:
    """Train the 3D multi-GAP classifier on patch labels; write ``best.pt`` and ``last.pt`` into ``out_dir``.

    Parameters
    ----------
    data
        A data-set folder (or loaded ``Dataset``: its train and val splits are cut into patches
        with the config's patch settings), a :class:`PatchSet3D` (no validation) or a
        ``(train, val)`` pair of patch sets.
    config
        The run's settings; with ``resume`` and no config, the checkpoint's own.
    callbacks
        ``on_step(step, total, loss)``, ``on_epoch(epoch, metrics)``, ``should_stop()`` (True saves
        ``last.pt`` and returns a result with ``cancelled=True``).
    resume, overwrite
        A folder with checkpoints is refused unless ``resume`` (continue from ``last.pt``, exactly:
        same batches, augmentation and optimiser state) or ``overwrite`` (start again).
    """
    callbacks = as_callbacks(callbacks)

    def configure(checkpoint: Checkpoint | None) -> Train3DConfig:
        if checkpoint is None:
            return config or Train3DConfig()
        saved = Train3DConfig.from_dict(checkpoint.train_config)
        if config is not None and config.model_config() != saved.model_config():
            raise CheckpointError(
                f"{checkpoint.path}: the run trained {saved.model_config()}, the config asks for "
                f"{config.model_config()}; resume with the same model settings.")
        return config or saved

    run = start_run(out_dir, kind=KIND_3D, name="3D NAM", configure=configure, resume=resume,
                    overwrite=overwrite, log=log)
    out, checkpoint, config, device, say = run.out, run.checkpoint, run.config, run.device, run.say
    train_set, val_set = _resolve(data, config, None)
    if len(train_set) == 0:
        raise TrainingDataError("no training patches: the train split yields no labelled 3D patch; check its "
                                "lungs and nodules, or the patch settings.")
    if train_set.config.patch_size != config.patch_size:
        raise ModelConfigError(
            f"the patches are {train_set.config.patch_size} voxels wide but the config says "
            f"patch_size={config.patch_size}; cut them with config.patch_config().")
    say(f"training patches: {train_set.n_positive} with nodule, {train_set.n_negative} without; "
        f"validation: {len(val_set) if val_set is not None else 0}")
    use_amp = amp_enabled(device, config.amp)
    random.seed(config.seed)
    np.random.seed(config.seed % 2**32)
    model = build_model_3d(config).to(device)
    optimizer, scheduler = _optimizer(model, config)
    scaler = grad_scaler(device, use_amp)
    state = RunState.resumed(restore_training_state(checkpoint, model, optimizer, scheduler, scaler), checkpoint)
    aug_state = None
    if checkpoint is not None:
        aug_state = checkpoint.raw.get("augment_rng")
        say(f"resuming from {out / LAST} after epoch {state.epoch}, step {state.global_step}")
    images = torch.from_numpy(np.ascontiguousarray(train_set.images))
    labels = torch.from_numpy(train_set.labels.astype(np.int64))
    sampler = BalancedBatchSampler(train_set.labels, config.batch_size, config.seed)
    steps = len(sampler)
    if config.max_steps_per_epoch is not None:
        steps = min(steps, config.max_steps_per_epoch)
    data_info = {"train": train_set.describe(), "val": val_set.describe() if val_set is not None else None}

    def batches(epoch: int) -> list:
        sampler.set_epoch(epoch)
        return list(sampler)[:steps]

    def train_step(batch, generator: torch.Generator) -> tuple[float, torch.Tensor]:
        index = torch.as_tensor(batch)
        x = images[index].to(device).float()[:, None]
        y = labels[index].to(device)
        if config.augment:
            x = augment_patches(x, generator)
        return classify_step(model, x, y, optimizer, scaler, use_amp=use_amp, step=state.global_step + 1,
                             lr=config.lr)

    def end_epoch(epoch: int, sums: torch.Tensor) -> tuple[dict, float]:
        scheduler.step()
        metrics = classify_metrics(epoch, sums, optimizer)
        if val_set is not None:
            metrics.update({f"val_{k}": v for k, v in evaluate_3d(model, val_set, device,
                                                                  batch_size=config.eval_batch_size,
                                                                  use_amp=use_amp).items()})
        return metrics, metrics.get("val_accuracy", metrics["train_accuracy"])

    def save(names: tuple[str, ...], run: RunState) -> None:
        document = {"kind": KIND_3D, "model_config": model.config.to_dict(), "train_config": config.to_dict(),
                    **run.fields(), "model_state": model.state_dict(), "optimizer_state": optimizer.state_dict(),
                    "scheduler_state": scheduler.state_dict(), "scaler_state": scaler.state_dict(),
                    "rng": capture_rng_state(), "augment_rng": loop.generator.get_state(), "data": data_info}
        for name in names:
            save_checkpoint(out / name, document)

    loop = EpochLoop(config.epochs, steps, batches, train_step, end_epoch, save,
                     lambda epoch: _aug_seed(config.seed, epoch), callbacks, say, out, n_sums=CLASSIFY_SUMS)
    model.train()
    epochs_done, cancelled = loop.run(state, aug_state)
    return state.result(out, epochs_done, cancelled, device, model)
