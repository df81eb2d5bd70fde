"""Training the NAM multi-GAP classifier from slice-level labels (the paper's recipe).

SGD with momentum 0.9; the new layers (heads + FC) at 10x the backbone learning rate; initial
LR 1e-2 / 2e-3 / 1e-3 for 1- / 2- / 3-GAP; decay 0.99 per epoch; class-balanced batches of 30.
``TrainConfig.optimizer`` also offers Adam / AdamW (same two LR groups). Checkpoints ``best.pt``
(by balanced validation accuracy, or ``select_metric``) and ``last.pt`` describe themselves and
resume exactly; they record the slice probability threshold that maximised balanced validation
accuracy (``probability_threshold``; see :func:`checkpoint_threshold`). Run several GPUs with
``torchrun --nproc_per_node=N -m wsnodule_core.cli.main train``. With ``backbone="lite_medsam"``
and a frozen encoder the head trains on each slice's embedding, computed once and cached on disk
(``cache_embeddings``; no augmentation then).
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from wsnodule_core.data.slices import SliceSet, slices_from_dataset
from wsnodule_core.errors import CheckpointError, TrainingDataError
from wsnodule_core.metrics.classification import roc_auc
from wsnodule_core.nam.model import KIND, MultiGapClassifier, build_classifier, load_classifier
from wsnodule_core.nam.train_config import TrainConfig
from wsnodule_core.training import distributed as ddp
from wsnodule_core.training.augment import augment_batch
from wsnodule_core.training.callbacks import TrainCallbacks, as_callbacks
from wsnodule_core.training.checkpoint import (
    LAST,
    Checkpoint,
    capture_rng_state,
    load_checkpoint,
    restore_training_state,
    save_checkpoint,
)
from wsnodule_core.training.device import amp_enabled, autocast, deterministic, grad_scaler
from wsnodule_core.training.loop import CLASSIFY_SUMS, EpochLoop, RunState, classify_metrics, classify_step
from wsnodule_core.training.result import RunResult
from wsnodule_core.training.sampler import BalancedBatchSampler
from wsnodule_core.training.setup import start_run

TrainResult = RunResult  # what train_* returns; the model is a MultiGapClassifier


def _resolve_data(data, config: TrainConfig, progress=None) -> tuple[SliceSet, SliceSet | None]:
    in_memory = isinstance(data, SliceSet) or (isinstance(data, tuple) and len(data) == 2
                                               and isinstance(data[0], SliceSet))
    if in_memory and config.hard_tiles_from is not None:
        raise TrainingDataError("hard tiles (--hard-tiles-from) are mined for a data set folder's splits; with "
                                "slice sets in memory, add the tiles (nam.hard_tiles.mine_hard_tiles) yourself.")
    if isinstance(data, SliceSet):
        return data, None
    if in_memory:
        return data[0], data[1]
    miner = _hard_tile_miner(config) if config.hard_tiles_from is not None else None  # checked first
    slice_config = config.slice_config()
    train = slices_from_dataset(data, "train", slice_config, progress=progress)
    val = slices_from_dataset(config.val_data or data, "val", slice_config)
    if miner is not None:
        train, val = _with_hard_tiles(train, val, miner, config)
    return train, (val if len(val) else None)


def _hard_tile_miner(config: TrainConfig) -> tuple[torch.nn.Module, list]:
    """The classifier of ``config.hard_tiles_from`` (refused unless it learnt this run's crop) and the
    nodule-free whole scans of ``$WSNODULE_DATA`` it mines."""
    from wsnodule_core.data.nodule_free import check_sources, default_sources

    model, checkpoint = load_classifier(config.hard_tiles_from, "cpu")
    trained = checkpoint.train_config or {}
    if (trained.get("image_size"), trained.get("pixel_spacing_mm")) != (config.image_size, config.pixel_spacing_mm):
        raise TrainingDataError(
            f"{config.hard_tiles_from}: the tile classifier learnt {trained.get('image_size')} px crops at "
            f"{trained.get('pixel_spacing_mm')} mm, this run {config.image_size} px at {config.pixel_spacing_mm} mm: "
            "mine with a classifier of the same crop (or train with its --image-size and --pixel-spacing)."
        )
    sources = default_sources()
    check_sources(sources)
    return model, sources


def _with_hard_tiles(train: SliceSet, val: SliceSet, miner: tuple, config: TrainConfig
                     ) -> tuple[SliceSet, SliceSet]:
    """``train`` and ``val`` plus the miner's hard tiles of the nodule-free whole scans of their splits."""
    from wsnodule_core.nam.hard_tiles import HardTileConfig, mine_hard_tiles

    model, sources = miner
    tiles = HardTileConfig(per_scan=config.hard_tiles_per_scan, random_per_scan=config.hard_tiles_random_per_scan,
                           seed=config.seed)
    slice_config = config.slice_config()
    mined = {split: mine_hard_tiles(model, [s for s in sources if s.split == split], slice_config, tiles)
             for split in ("train", "val")}
    return (SliceSet.concatenate([train, mined["train"]], slice_config),
            SliceSet.concatenate([val, mined["val"]], slice_config))


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_model(config: TrainConfig) -> torch.nn.Module:
    """A fresh classifier for ``config`` (ImageNet backbone when ``vgg16_weights`` is given; LiteMedSAM's
    encoder for ``backbone="lite_medsam"``)."""
    torch.manual_seed(config.seed)
    if config.vgg16_weights:
        return MultiGapClassifier.from_vgg16_weights(config.vgg16_weights, config.model_config())
    return build_classifier(config.model_config())


def make_optimizer(model: MultiGapClassifier, config: TrainConfig):
    """``config.optimizer`` (SGD with momentum, Adam or AdamW) with two parameter groups (backbone;
    heads + FC at ``new_layer_lr_factor`` x), and ExponentialLR."""
    new_lr = config.backbone_lr * config.new_layer_lr_factor
    groups = [{"params": model.backbone_parameters(), "lr": config.backbone_lr, "name": "backbone"},
              {"params": model.new_parameters(), "lr": new_lr, "name": "new"}]
    if config.optimizer == "sgd":
        optimizer = torch.optim.SGD(groups, lr=config.backbone_lr, momentum=config.momentum,
                                    weight_decay=config.weight_decay)
    else:
        kind = torch.optim.Adam if config.optimizer == "adam" else torch.optim.AdamW
        optimizer = kind(groups, lr=config.backbone_lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=config.lr_decay)
    return optimizer, scheduler


def best_threshold(probabilities: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """The threshold on P(nodule) that maximises balanced accuracy on ``(probabilities, labels)``,
    and that accuracy. Thresholds lie halfway between consecutive distinct probabilities; among equal
    accuracies the one nearest 0.5 wins. (0.5, nan) when a class is missing."""
    p = np.asarray(probabilities, np.float64).ravel()
    y = np.asarray(labels).ravel() > 0
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return 0.5, float("nan")
    order = np.argsort(-p, kind="stable")
    p, y = p[order], y[order]
    tp, fp = np.cumsum(y), np.cumsum(~y)       # predicting the top k+1 positive
    cut = np.flatnonzero(np.r_[p[1:] < p[:-1], True])  # last index of each run of equal values
    bal = np.r_[0.5, 0.5 * (tp[cut] / n_pos + 1.0 - fp[cut] / n_neg)]
    lower = np.r_[p[cut[:-1] + 1], 0.0]        # the next smaller probability below each cut
    thresholds = np.r_[(p[0] + 1.0) / 2.0, (p[cut] + lower) / 2.0]
    best = np.flatnonzero(np.isclose(bal, bal.max()))
    pick = best[np.argmin(np.abs(thresholds[best] - 0.5))]
    return float(thresholds[pick]), float(bal[pick])


def checkpoint_threshold(path: str | os.PathLike) -> float | None:
    """The slice probability threshold a NAM checkpoint recorded from its validation slices (the one
    maximising balanced accuracy at the saved epoch); None for checkpoints without one (older
    versions, or runs without validation slices)."""
    value = load_checkpoint(path).raw.get("probability_threshold")
    return None if value is None else float(value)


@torch.no_grad()
def recalibrate_batch_norm(model: torch.nn.Module, images: torch.Tensor, n_batches: int, batch_size: int,
                           seed: int, device: torch.device, channels_last: bool = False) -> int:
    """Re-estimate every BatchNorm layer's running statistics as the plain average over
    ``n_batches`` random batches of ``images`` (no augmentation), so that evaluation sees the
    statistics of un-augmented slices rather than the last few augmented training batches.
    Returns the number of images used (0 when the model has no BatchNorm)."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms or n_batches < 1 or len(images) == 0:
        return 0
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    was_training = model.training
    model.train()
    order = np.random.default_rng([seed, 29]).permutation(len(images))[:n_batches * batch_size]
    try:
        for start in range(0, len(order), batch_size):
            x = images[torch.as_tensor(order[start:start + batch_size])].to(device).float()[:, None]
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            model(x)
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        model.train(was_training)
    return len(order)


def _aug_seed(seed: int, epoch: int, rank: int) -> int:
    return int(np.random.default_rng([seed, epoch, rank, 17]).integers(2**62))


@torch.no_grad()
def evaluate(model: torch.nn.Module, slices: SliceSet, device: torch.device, *, batch_size: int = 64,
             ctx: ddp.DistContext | None = None, use_amp: bool = False, channels_last: bool = False,
             inputs: torch.Tensor | None = None) -> dict:
    """Loss, accuracy, balanced accuracy (mean of sensitivity and specificity), sensitivity and
    specificity on ``slices`` (sharded over DDP ranks, summed); also ROC ``auc``, the ``threshold``
    on P(nodule) maximising balanced accuracy and that ``tuned_balanced_accuracy``. ``inputs``: what
    ``model`` takes for each slice instead of its image (e.g. cached embeddings)."""
    ctx = ctx or ddp.DistContext()
    was_training = model.training
    model.eval()
    totals = torch.zeros(5, dtype=torch.float64)  # loss sum, n, correct, true pos, true neg
    positives = float(slices.n_positive)
    idx = np.arange(ctx.rank, len(slices), ctx.world_size)
    probabilities = []
    for start in range(0, len(idx), batch_size):
        chunk = idx[start:start + batch_size]
        if inputs is not None:
            x = inputs[torch.as_tensor(chunk)].to(device).float()
        else:
            x = torch.from_numpy(slices.images[chunk]).to(device).float()[:, None]
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = torch.from_numpy(slices.labels[chunk].astype(np.int64)).to(device)
        with autocast(device, use_amp):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y, reduction="sum")
        probabilities.append(torch.softmax(logits.float(), 1)[:, 1].cpu().numpy())
        pred = logits.argmax(1)
        totals += torch.tensor([loss.item(), len(chunk), (pred == y).sum().item(),
                                ((pred == 1) & (y == 1)).sum().item(), ((pred == 0) & (y == 0)).sum().item()],
                               dtype=torch.float64)
    totals = ddp.all_reduce_sum(totals, ctx)
    probs = np.concatenate(probabilities) if probabilities else np.zeros(0)
    labels = slices.labels[idx]
    if ctx.enabled:
        gathered = [None] * ctx.world_size
        torch.distributed.all_gather_object(gathered, (probs, labels))
        probs = np.concatenate([g[0] for g in gathered])
        labels = np.concatenate([g[1] for g in gathered])
    threshold, tuned = best_threshold(probs, labels)
    model.train(was_training)
    n = max(float(totals[1]), 1.0)
    negatives = float(len(slices) - positives)
    sensitivity = float(totals[3]) / positives if positives else float("nan")
    specificity = float(totals[4]) / negatives if negatives else float("nan")
    rates = [r for r in (sensitivity, specificity) if r == r]
    return {"loss": float(totals[0]) / n, "accuracy": float(totals[2]) / n,
            "balanced_accuracy": float(np.mean(rates)) if rates else float("nan"),
            "sensitivity": sensitivity, "specificity": specificity, "auc": roc_auc(probs, labels),
            "threshold": threshold, "tuned_balanced_accuracy": tuned}


def train_classifier(data, out_dir: str | os.PathLike, config: TrainConfig | None = None,
                     callbacks: TrainCallbacks | object | None = None, *, resume: bool = False,
                     overwrite: bool = False, log=None) -> TrainResult:
    """Train the multi-GAP classifier; write ``best.pt`` and ``last.pt`` into ``out_dir``.

    Parameters
    ----------
    data
        A data set folder (or loaded ``Dataset``: its train and val splits are sliced with the
        config's slice settings), a :class:`SliceSet` (training only, no validation), or a
        ``(train, val)`` pair of slice sets.
    config
        The run's settings; with ``resume`` and no config, the checkpoint's own.
    callbacks
        ``on_step(step, total, loss)``, ``on_epoch(epoch, metrics)``, ``should_stop()``.
    resume, overwrite
        A folder that holds checkpoints is refused unless one of these is set: ``resume``
        continues from ``last.pt`` (exactly: same batches, augmentation and optimiser state),
        ``overwrite`` starts again.
    log
        ``log(text)`` for one-line messages (device, epochs); rank 0 only.
    """
    callbacks = as_callbacks(callbacks)

    def configure(checkpoint: Checkpoint | None) -> TrainConfig:
        if checkpoint is None:
            return config or TrainConfig()
        saved = TrainConfig.from_dict(checkpoint.train_config)
        if config is not None and config.model_config() != saved.model_config():
            raise CheckpointError(f"{checkpoint.path}: the run trained the model {saved.model_config()}, the "
                                  f"config asks for {config.model_config()}; resume with the same model.")
        return config or saved

    with start_run(out_dir, kind=KIND, name="NAM", configure=configure, resume=resume, overwrite=overwrite,
                   distributed=True, log=log) as run, deterministic(run.config.deterministic):
        return _train(data, run.out, run.config, callbacks, run.checkpoint, run.ctx, run.device, run.say)


def _train(data, out: Path, config: TrainConfig, callbacks: TrainCallbacks, checkpoint, ctx, device, say
           ) -> TrainResult:
    train_set, val_set = _resolve_data(data, config)
    if len(train_set) == 0:
        raise TrainingDataError("no training slices: the data set's train split yields no labelled slice; "
                                "check its lungs and nodule masks, or lower min_lung_fraction.")
    say(f"training slices: {train_set.n_positive} with nodule, {train_set.n_negative} without; "
        f"validation: {len(val_set) if val_set is not None else 0}")
    use_amp = amp_enabled(device, config.amp)
    _seed_everything(config.seed)
    # a resumed run takes every weight from the checkpoint: the ImageNet file is not needed again
    fresh = checkpoint is None
    model = (build_model(config) if fresh else build_classifier(config.model_config())).to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    head = model
    if config.uses_cached_embeddings:
        from wsnodule_core.nam.lite_medsam_model import EmbeddingHead

        head = EmbeddingHead(model)
    optimizer, scheduler = make_optimizer(model, config)
    scaler = grad_scaler(device, use_amp)
    state = RunState.resumed(restore_training_state(checkpoint, model, optimizer, scheduler, scaler), checkpoint)
    aug_state = None
    if checkpoint is not None:
        aug_state = (checkpoint.raw.get("augment_rng") or {}).get(str(ctx.rank))
        say(f"resuming from {out / LAST} after epoch {state.epoch}, step {state.global_step}")
    net = head
    if ctx.enabled:
        net = torch.nn.parallel.DistributedDataParallel(
            head, device_ids=[device.index] if device.type == "cuda" else None)
    val_inputs = None
    if config.uses_cached_embeddings:
        images, val_inputs = _embeddings(model, train_set, val_set, config, say)
    else:
        images = torch.from_numpy(np.ascontiguousarray(train_set.images))
    labels = torch.from_numpy(train_set.labels.astype(np.int64))
    sampler = BalancedBatchSampler(train_set.labels, config.batch_size, config.seed, ctx.rank, ctx.world_size,
                                   config.epoch_size)
    steps_per_epoch = len(sampler) if config.max_steps_per_epoch is None else min(len(sampler),
                                                                                  config.max_steps_per_epoch)
    augment = config.augment_config()
    data_info = {"train": train_set.describe(), "val": val_set.describe() if val_set is not None else None}

    def batches(epoch: int) -> list:
        sampler.set_epoch(epoch)
        return list(sampler)[:steps_per_epoch]

    def train_step(items, generator: torch.Generator) -> tuple[float, torch.Tensor]:
        x, y = items
        if config.uses_cached_embeddings:  # embeddings: already (B, 256, 64, 64), not augmented
            return classify_step(net, x.float(), y, optimizer, scaler, use_amp=use_amp,
                                 step=state.global_step + 1, lr=config.backbone_lr)
        x = x.float()[:, None]
        if config.augment:
            x = augment_batch(x, generator, augment)
        if config.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return classify_step(net, x, y, optimizer, scaler, use_amp=use_amp, step=state.global_step + 1,
                             lr=config.backbone_lr)

    def end_epoch(epoch: int, sums: torch.Tensor) -> tuple[dict, float]:
        scheduler.step()
        if config.bn_recalibration_batches:
            recalibrate_batch_norm(model, images, config.bn_recalibration_batches, config.batch_size,
                                   _aug_seed(config.seed, epoch, ctx.rank), device, config.channels_last)
        ddp.average_buffers(model, ctx)
        sums = ddp.all_reduce_sum(sums, ctx)
        metrics = classify_metrics(epoch, sums, optimizer)
        if val_set is not None:
            val = evaluate(head, val_set, device, batch_size=config.eval_batch_size, ctx=ctx,
                           use_amp=use_amp, channels_last=config.channels_last, inputs=val_inputs)
            metrics.update({f"val_{k}": v for k, v in val.items()})
        # the paper picks by accuracy on a balanced set; our validation slices are not balanced
        score = metrics.get(f"val_{config.select_metric}", metrics["train_accuracy"])
        if score != score:  # nan: a class missing from the validation slices
            score = metrics["train_accuracy"]
        return metrics, score

    def save(names: tuple[str, ...], run: RunState) -> None:
        ddp.average_buffers(model, ctx)
        aug = {str(ctx.rank): loop.generator.get_state()}
        if ctx.enabled:  # every rank's augmentation stream, so a mid-epoch resume is exact on all ranks
            gathered = [None] * ctx.world_size
            torch.distributed.all_gather_object(gathered, loop.generator.get_state())
            aug = {str(r): s for r, s in enumerate(gathered)}
        document = {"kind": KIND, "model_config": model.config.to_dict(), "train_config": config.to_dict(),
                    **run.fields(), "model_state": model.state_dict(),
                    "optimizer_state": optimizer.state_dict(), "scheduler_state": scheduler.state_dict(),
                    "scaler_state": scaler.state_dict(), "rng": capture_rng_state(), "augment_rng": aug,
                    "data": data_info, "world_size": ctx.world_size,
                    "probability_threshold": run.history[-1].get("val_threshold") if run.history else None}
        if ctx.is_main:
            for name in names:
                save_checkpoint(out / name, document)
        ddp.barrier(ctx)

    def stop_all(flag: bool) -> bool:
        return ddp.all_reduce_sum(torch.tensor([float(flag)], dtype=torch.float64), ctx).item() > 0

    loop = EpochLoop(config.epochs, steps_per_epoch, batches, train_step, end_epoch, save,
                     lambda epoch: _aug_seed(config.seed, epoch, ctx.rank), callbacks, say, out,
                     load=lambda remaining: _batch_stream(images, labels, remaining, config, device),
                     stop_all=stop_all, is_main=ctx.is_main, n_sums=CLASSIFY_SUMS)
    model.train()
    epochs_done, cancelled = loop.run(state, aug_state)
    return state.result(out, epochs_done, cancelled, device, model)


def _embeddings(model, train_set: SliceSet, val_set: SliceSet | None, config: TrainConfig, say
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The frozen encoder's embeddings (float16, CPU) of the training and validation slices, each
    computed once and kept in the embedding cache."""
    from wsnodule_core.foundation import EmbeddingCache

    cache = EmbeddingCache(config.embedding_cache)
    say(f"embedding {len(train_set)} training and {len(val_set) if val_set is not None else 0} validation "
        f"slices with the frozen LiteMedSAM encoder (cache: {cache.folder}; augmentation off)")
    train = model.embed_slices(train_set.images, cache=cache)
    val = model.embed_slices(val_set.images, cache=cache) if val_set is not None else None
    return train, val


def _batch_stream(images: torch.Tensor, labels: torch.Tensor, batches: list, config: TrainConfig,
                  device: torch.device):
    """(images, labels) of each batch on ``device``: direct indexing, or a DataLoader with workers."""
    if config.num_workers > 0:
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, labels),
                                             batch_sampler=batches, num_workers=config.num_workers,
                                             pin_memory=device.type == "cuda")
        for x, y in loader:
            yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        return
    for batch in batches:
        index = torch.as_tensor(batch)
        yield images[index].to(device, non_blocking=True), labels[index].to(device, non_blocking=True)
