"""Training the PW4MedSeg probabilistic UNETR on targets made from simulated sparse annotations.

Per training case the target is built once, on the case's own grid: sparse annotations are simulated
from the ground truth (:mod:`wsnodule_core.pw4medseg.annotations`: points, tight or loose boxes,
marked slices) and turned into a probability and a confidence map
(:func:`wsnodule_core.pw4medseg.pseudo_labels.pseudo_label`); ``"full"`` uses the ground-truth mask
with confidence 1 (the fully supervised reference with the same network). Image, target, confidence,
ground truth and lungs are then resampled to ``spacing_mm`` (the paper: 1 mm isotropic) and the image
normalised (:mod:`.preprocess`); settings and loading live in :mod:`.config`, the targets in
:mod:`.targets`.

A step draws ``batch_size`` crops of ``crop_size``: each from a random case; with probability
``foreground_probability`` it holds a random voxel of the pseudo-label's foreground (probability > 0.5)
at a random place (not in the outer eighth of any side: a crop always centred on the nodule teaches
the network that nodules sit in the middle of its window, and sliding-window inference then misses
them), else it is centred with probability ``background_in_lungs`` on a random lung voxel (every voxel
when the case has no lung mask) and otherwise on any voxel; then randomly flipped along each axis.
Loss: :class:`~wsnodule_core.pw4medseg.loss.ProbabilityInformedLoss` with the model's per-layer KLs.
AdamW (``lr``: 5e-4 on the CPU, the paper's 1e-4 in :meth:`PwTrainConfig.paper`; weight decay 1e-4),
linear warm-up then cosine decay per step, AMP on CUDA. Validation: Dice of the mean-probability
prediction (``val_passes`` stochastic sliding-window passes) thresholded at ``threshold`` and, with
``tune_threshold``, at each of :data:`VAL_THRESHOLDS` (the best one is recorded in the checkpoint and
used at inference), against the ground truth on the training grid. Batches are a function of
``(seed, epoch, step)`` only, so ``last.pt`` (optimiser, scheduler, scaler and RNG states) resumes to
bit-identical weights.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from wsnodule_core.errors import CheckpointError, TrainingDataError
from wsnodule_core.pw4medseg.config import KIND, PwTrainConfig, PwTrainResult
from wsnodule_core.pw4medseg.loss import LossConfig, ProbabilityInformedLoss
from wsnodule_core.pw4medseg.model import ProbabilisticUNETR
from wsnodule_core.pw4medseg.targets import TrainingCase, prepare_case, resolve_cases
from wsnodule_core.training.callbacks import TrainCallbacks, as_callbacks
from wsnodule_core.training.checkpoint import (LAST, capture_rng_state, restore_training_state, save_checkpoint)
from wsnodule_core.training.device import amp_enabled, autocast, deterministic, grad_scaler
from wsnodule_core.training.loop import EpochLoop, RunState, optimizer_step
from wsnodule_core.training.setup import start_run

_PARTS = ("total", "classification", "dice", "kl")  # the loss parts summed over an epoch's steps
_NAMES = {"total": "loss", "classification": "classification", "dice": "dice_loss", "kl": "kl"}
#: Probability thresholds tried on the validation cases when ``tune_threshold`` is on.
VAL_THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)


# --- batches -----------------------------------------------------------------------


def _window(n: int, size: int, centre: int) -> tuple[int, int]:
    """Start in the array and the padding before, of a window of ``size`` centred near ``centre``."""
    if n <= size:
        return 0, (size - n) // 2
    return int(np.clip(centre - size // 2, 0, n - size)), 0


def _crop(array: np.ndarray, starts, pads, size, fill) -> np.ndarray:
    out = np.full(size, fill, dtype=array.dtype)
    source = tuple(slice(s, s + min(n, c)) for s, n, c in zip(starts, array.shape, size))
    target = tuple(slice(p, p + min(n, c)) for p, n, c in zip(pads, array.shape, size))
    out[target] = array[source]
    return out


def sample_batch(cases: Sequence[TrainingCase], config: PwTrainConfig, epoch: int, step: int) -> dict:
    """The crops of step ``step`` of epoch ``epoch`` (numpy arrays (B, 1, *crop)): a function of
    ``(config.seed, epoch, step)`` only, so that a resumed run sees the same batches."""
    rng = np.random.default_rng([config.seed, epoch, step, 41])
    size = config.crop_size
    images, targets, confs, padded = [], [], [], []
    groups = _source_groups(cases) if config.balance_sources else [list(range(len(cases)))]
    for _ in range(config.batch_size):
        group = groups[int(rng.integers(len(groups)))] if len(groups) > 1 else groups[0]
        case = cases[group[int(rng.integers(len(group)))]]
        on_foreground = len(case.foreground) > 0 and rng.random() < config.foreground_probability
        if on_foreground or rng.random() < config.background_in_lungs:
            pool = case.foreground if on_foreground else case.region
            flat = int(pool[rng.integers(len(pool))])
        else:  # anywhere: the body wall, mediastinum and air must be learnt as background too
            flat = int(rng.integers(case.image.size))
        centre = np.asarray(np.unravel_index(flat, case.image.shape))
        if on_foreground:  # the voxel anywhere but the outer eighths: no "nodule in the middle" bias
            side = np.asarray(size)
            centre = centre + side // 2 - rng.integers(side // 8, side - side // 8)
        windows = [_window(n, c, int(m)) for n, c, m in zip(case.image.shape, size, centre)]
        starts, pads = [w[0] for w in windows], [w[1] for w in windows]
        crops = [_crop(case.image, starts, pads, size, case.fill),
                 _crop(case.target, starts, pads, size, 0.0),
                 _crop(case.confidence, starts, pads, size, 0.0) if case.confidence is not None else None,
                 _padding(case.image.shape, pads, size)]
        if config.flips:
            for axis in range(3):
                if rng.random() < 0.5:
                    crops = [np.flip(c, axis) if c is not None else None for c in crops]
        images.append(crops[0])
        targets.append(crops[1])
        confs.append(crops[2])
        padded.append(crops[3])
    if any(c is None for c in confs) and not all(c is None for c in confs):  # cases of both kinds mixed
        confs = [_loss_weights(t, config.loss) if c is None else c for c, t in zip(confs, targets)]

    def stack(items, dtype=None) -> np.ndarray:
        return np.ascontiguousarray(np.stack(items)[:, None], dtype=dtype)

    return {"image": stack(images), "target": stack(targets, np.float32),
            "confidence": stack(confs, np.float32) if confs[0] is not None else None, "ignore": stack(padded)}


def _source_groups(cases: Sequence[TrainingCase]) -> list[list[int]]:
    """Case indices grouped by source kind (in order of first appearance)."""
    groups: dict[str, list[int]] = {}
    for i, case in enumerate(cases):
        groups.setdefault(case.source_kind, []).append(i)
    return list(groups.values())


def _padding(shape, pads, size) -> np.ndarray:
    """True where a crop of ``size`` placed with ``pads`` lies outside an array of ``shape``."""
    out = np.ones(size, bool)
    out[tuple(slice(p, p + min(n, c)) for p, n, c in zip(pads, shape, size))] = False
    return out


def _loss_weights(target: np.ndarray, loss: LossConfig) -> np.ndarray:
    """The loss's own voxel weights (p / 1 - p, or 1) for a crop without a confidence map."""
    t = np.asarray(target, np.float32)
    return np.where(t > loss.threshold, t, 1.0 - t) if loss.confidence_weighted else np.ones_like(t)


# --- model, optimiser, schedule --------------------------------------------------------


def build_model(config: PwTrainConfig) -> ProbabilisticUNETR:
    """A fresh probabilistic UNETR, initialised from ``config.seed``."""
    torch.manual_seed(config.seed)
    return ProbabilisticUNETR(config.model)


def load_initial_weights(model: ProbabilisticUNETR, config: PwTrainConfig) -> None:
    """Copy the weights of the PW4MedSeg checkpoint ``config.init_from`` into ``model`` (same network)."""
    from wsnodule_core.training.checkpoint import load_checkpoint

    source = load_checkpoint(config.init_from)
    if source.kind != KIND:
        raise CheckpointError(f"{config.init_from}: a {source.kind!r} checkpoint; fine-tuning starts from a "
                              f"PW4MedSeg one ({KIND!r}).")
    if _plain(source.model_config) != _plain(config.model.to_dict()):
        raise CheckpointError(f"{config.init_from}: its network differs from this run's (model settings "
                              f"{source.model_config} against {config.model.to_dict()}); give the same preset, "
                              "crop size and norm as the run it comes from.")
    model.load_state_dict(source.raw["model_state"])


def _plain(settings: dict) -> dict:
    """Settings with tuples as lists, so that a saved and a live config compare equal."""
    import json

    return json.loads(json.dumps(settings))


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    span = max(total - warmup, 1)
    return 0.5 * (1.0 + math.cos(math.pi * min(step - warmup, span) / span))


def make_optimizer(model: torch.nn.Module, config: PwTrainConfig):
    """AdamW and the per-step warm-up + cosine LambdaLR."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    total = config.epochs * config.steps_per_epoch
    warmup = min(int(config.warmup_steps), max(total - 1, 0))

    def factor(step: int) -> float:
        return lr_factor(step, warmup, total)

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * float(np.logical_and(a, b).sum()) / total


def validate(model: ProbabilisticUNETR, cases: Sequence[TrainingCase], config: PwTrainConfig,
             device: torch.device, use_amp: bool = False) -> dict:
    """Dice of the thresholded mean probability (``val_passes`` stochastic passes, seeded) with the
    ground truth, averaged over ``cases``: ``dice`` at ``config.threshold``, ``dice_nodule`` the same over
    cases with a nodule; with ``tune_threshold``, ``threshold`` is the one of :data:`VAL_THRESHOLDS`
    with the best mean Dice (ties: the first) and ``dice_tuned`` that Dice."""
    from wsnodule_core.pw4medseg.infer import mc_sliding_window

    if not len(cases):
        return {"dice": float("nan"), "dice_nodule": float("nan")}
    thresholds = sorted({config.threshold, *(VAL_THRESHOLDS if config.tune_threshold else ())})
    scores = np.zeros((len(cases), len(thresholds)))
    for i, case in enumerate(cases):
        mean, _ = mc_sliding_window(model, case.image, config.crop_size, passes=config.val_passes,
                                    overlap=config.val_overlap, batch_size=config.batch_size, device=device,
                                    fill=case.fill, seed=config.seed, use_amp=use_amp)
        scores[i] = [_dice(mean >= t, case.truth) for t in thresholds]
    fixed = scores[:, thresholds.index(config.threshold)]
    nodule = [s for s, case in zip(fixed, cases) if case.truth.any()]
    result = {"dice": float(fixed.mean()), "dice_nodule": float(np.mean(nodule)) if nodule else float("nan")}
    if config.tune_threshold:
        best = int(np.argmax(scores.mean(axis=0)))
        result.update(threshold=float(thresholds[best]), dice_tuned=float(scores[:, best].mean()))
    return result



# --- training ----------------------------------------------------------------------------


def train_pw4medseg(data, out_dir: str | os.PathLike, config: PwTrainConfig | None = None,
                    callbacks: TrainCallbacks | object | None = None, resume: bool = False,
                    overwrite: bool = False, *, log: Callable[[str], None] | None = None,
                    progress: Callable[[int, int], None] | None = None) -> PwTrainResult:
    """Train PW4MedSeg; write ``best.pt`` and ``last.pt`` (kind ``"pw4medseg"``) into ``out_dir``.

    Parameters
    ----------
    data
        A data set folder or loaded ``Dataset`` (train and val splits), a list of
        :class:`~wsnodule_core.data.cases.Case` or :class:`TargetCase` (training only) or a
        ``(train, val)`` pair of such lists.
    config
        The run's settings; with ``resume`` and no config, the checkpoint's own.
    callbacks
        ``on_step(step, total, loss)``, ``on_epoch(epoch, metrics)``, ``should_stop()`` (True saves
        ``last.pt`` and returns a result with ``cancelled``).
    resume, overwrite
        A folder holding checkpoints is refused unless ``resume`` (continue exactly from ``last.pt``)
        or ``overwrite`` (start again).
    log
        ``log(text)`` for one-line messages.
    progress
        ``progress(done, total)`` while the training targets are built (one per case); ``should_stop()``
        is also polled between cases (a stop there saves nothing).
    """
    callbacks = as_callbacks(callbacks)

    def configure(checkpoint) -> PwTrainConfig:
        if checkpoint is None:
            return config or PwTrainConfig()
        saved = PwTrainConfig.from_dict(checkpoint.train_config)
        if config is not None and _comparable(config) != _comparable(saved):
            raise CheckpointError(f"{checkpoint.path}: the run was trained with other settings than the config "
                                  "given; resume with the same config (or none: the checkpoint's own).")
        return config or saved

    with start_run(out_dir, kind=KIND, name="PW4MedSeg", configure=configure, resume=resume,
                   overwrite=overwrite, log=log) as run, deterministic(run.config.deterministic):
        return _train(data, run.out, run.config, callbacks, run.checkpoint, run.device, run.say, progress)


def _comparable(config: PwTrainConfig) -> dict:
    """The settings a resumed run must share with the saved one (the device may change)."""
    return {k: v for k, v in config.to_dict().items() if k != "device"}


def _prepare(data, config: PwTrainConfig, say, progress, stop: Callable[[], bool]
             ) -> tuple[list[TrainingCase], list[TrainingCase]] | None:
    """The training and validation cases, targets made; None when ``stop()`` said so in between."""
    train_cases, val_cases = resolve_cases(data)
    if not train_cases:
        raise TrainingDataError("no training case: the train split is empty; build a data set with training "
                                "cases (`wsnodule data ...`).")
    total = len(train_cases) + len(val_cases)
    prepared = []
    for i, case in enumerate(train_cases + val_cases):
        seed = int(np.random.default_rng([config.seed, i, 7]).integers(2**31))
        prepared.append(prepare_case(case, config, seed))
        if progress is not None:
            progress(i + 1, total)
        if stop():
            return None
    train, val = prepared[:len(train_cases)], prepared[len(train_cases):]
    if not any(len(c.foreground) for c in train):
        say("warning: no training target reaches 0.5 anywhere; crops are centred at random only")
    say(f"targets ({config.annotation.describe()}): {len(train)} training, {len(val)} validation cases")
    return train, val


def _train(data, out: Path, config: PwTrainConfig, callbacks: TrainCallbacks, checkpoint, device, say,
           progress) -> PwTrainResult:
    prepared = _prepare(data, config, say, progress, callbacks.should_stop)
    train_cases, val_cases = prepared or ([], [])
    use_amp = amp_enabled(device, config.amp)
    model = build_model(config)
    if checkpoint is None and config.init_from:
        load_initial_weights(model, config)
        say(f"starting from the weights of {config.init_from}")
    model = model.to(device)
    optimizer, scheduler = make_optimizer(model, config)
    scaler = grad_scaler(device, use_amp)
    loss_fn = ProbabilityInformedLoss(config.loss)
    state = RunState.resumed(restore_training_state(checkpoint, model, optimizer, scheduler, scaler), checkpoint)
    if checkpoint is not None:
        say(f"resuming from {out / LAST} after epoch {state.epoch}, step {state.global_step}")
    data_info = {"train": [c.case_id for c in train_cases], "val": [c.case_id for c in val_cases],
                 "annotation": config.annotation.describe()}
    if prepared is None:
        say("stopped while building the training targets; nothing was saved")
        return state.result(out, state.epoch, True, device, model)

    def train_step(item, generator: torch.Generator) -> tuple[float, torch.Tensor]:
        epoch, step = item  # the batch depends on (seed, epoch, step) only: resume is exact
        batch = sample_batch(train_cases, config, epoch, step)
        x = torch.from_numpy(batch["image"]).to(device)
        target = torch.from_numpy(batch["target"]).to(device)
        conf = None if batch["confidence"] is None else torch.from_numpy(batch["confidence"]).to(device)
        ignore = torch.from_numpy(batch["ignore"]).to(device) if batch["ignore"].any() else None
        with autocast(device, use_amp):
            logits, kl = model(x, return_kl=True)
        loss, parts = loss_fn(logits, target, kl, confidence=conf, ignore=ignore)
        value = optimizer_step(loss, optimizer, scaler, step=state.global_step + 1, lr=config.lr)
        scheduler.step()
        return value, torch.tensor([float(parts[k]) for k in _PARTS] + [1.0], dtype=torch.float64)

    def end_epoch(epoch: int, sums: torch.Tensor) -> tuple[dict, float | None]:
        n = max(float(sums[-1]), 1.0)
        metrics = {"epoch": epoch + 1, **{f"train_{_NAMES[k]}": float(v) / n for k, v in zip(_PARTS, sums)},
                   "lr": optimizer.param_groups[0]["lr"]}
        validated = bool(val_cases) and ((epoch + 1) % config.val_every == 0 or epoch + 1 == config.epochs)
        if validated:
            val = validate(model, val_cases, config, device, use_amp)
            model.train()
            metrics.update({f"val_{k}": v for k, v in val.items()})
        score_key = "val_dice_tuned" if config.tune_threshold else "val_dice"
        return metrics, metrics.get(score_key) if validated else (None if val_cases else -metrics["train_loss"])

    def save(names: tuple[str, ...], run: RunState) -> None:
        document = {"kind": KIND, "model_config": model.config.to_dict(), "train_config": config.to_dict(),
                    **run.fields(), "model_state": model.state_dict(), "optimizer_state": optimizer.state_dict(),
                    "scheduler_state": scheduler.state_dict(), "scaler_state": scaler.state_dict(),
                    "rng": capture_rng_state(), "data": data_info,
                    "probability_threshold": next((h["val_threshold"] for h in reversed(run.history)
                                                   if "val_threshold" in h), None)}
        for name in names:
            save_checkpoint(out / name, document)

    loop = EpochLoop(config.epochs, config.steps_per_epoch,
                     lambda epoch: [(epoch, step) for step in range(config.steps_per_epoch)], train_step,
                     end_epoch, save, lambda epoch: 0, callbacks, say, out, n_sums=len(_PARTS) + 1)
    model.train()
    epochs_done, cancelled = loop.run(state)
    return state.result(out, epochs_done, cancelled, device, model)

