"""A small grid search of the guidance settings on validation patches, scored by mean Dice.

For each combination of start time ``t0``, guided steps ``K``, scale and rule (the other settings
from a base :class:`~wsnodule_core.flow.guidance.GuidanceConfig`), every validation patch is
guided (:func:`~wsnodule_core.flow.guidance.guide`), its difference thresholded
(:func:`~wsnodule_core.flow.guidance.difference_mask`, the same rule as the attribution baselines)
and compared with the patch's nodule mask (:func:`wsnodule_core.metrics.dice_3d`). The start state
``x_t0`` of a batch (the ODE inversion, or the seeded noise) depends on ``t0`` only, so it is
computed once per ``t0`` and batch and shared by the other settings.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
import torch

from wsnodule_core.errors import ModelConfigError, SegmentationCancelled
from wsnodule_core.flow.attribution import ThresholdRule
from wsnodule_core.flow.guidance import GuidanceConfig, difference_mask, guide, start_state
from wsnodule_core.flow.patches import PatchSet
from wsnodule_core.metrics import dice_3d
from wsnodule_core.training.device import device_of

SWEPT = ("t0", "guided_steps", "scale", "rule")


@dataclass(frozen=True)
class SweepGrid:
    """The values tried for each swept setting (every combination is run)."""

    t0: tuple[float, ...] = (0.3, 0.5, 0.7)
    guided_steps: tuple[int, ...] = (2, 5, 10)
    scale: tuple[float, ...] = (0.5, 1.0, 2.0)
    rule: tuple[str, ...] = ("dps", "x0")

    def __post_init__(self) -> None:
        for name in SWEPT:
            values = getattr(self, name)
            values = (values,) if isinstance(values, (int, float, str)) else tuple(values)
            if not values:
                raise ModelConfigError(f"SweepGrid.{name} needs at least one value.")
            object.__setattr__(self, name, values)

    def combinations(self) -> list[dict]:
        """Every setting as a dict of the swept fields, t0 outermost."""
        return [dict(zip(SWEPT, values))
                for values in itertools.product(self.t0, self.guided_steps, self.scale, self.rule)]

    def __len__(self) -> int:
        return len(self.t0) * len(self.guided_steps) * len(self.scale) * len(self.rule)


@dataclass(frozen=True, eq=False)
class SweepResult:
    """``table``: one dict per setting, best first (mean Dice, then lower P(nodule) after guidance);
    ``best``: the base config with the best setting."""

    table: list[dict]
    best: GuidanceConfig


def _validation_arrays(data, positives_only: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    if isinstance(data, PatchSet):
        keep = data.labels == 1 if positives_only else np.ones(len(data), bool)
        images, masks, lungs = data.images[keep], data.nodule_masks[keep], data.lungs[keep]
    elif isinstance(data, (tuple, list)) and len(data) in (2, 3):
        images, masks = data[0], data[1]
        lungs = data[2] if len(data) == 3 else None
    else:
        raise ModelConfigError("sweep data must be a PatchSet or (images, masks[, lungs]) arrays "
                               "of shape (n, D, H, W).")
    images, masks = np.asarray(images, np.float32), np.asarray(masks) > 0
    lungs = None if lungs is None else np.asarray(lungs, bool)
    if images.ndim != 4 or masks.shape != images.shape or (lungs is not None and lungs.shape != images.shape):
        raise ModelConfigError(f"images, masks and lungs must all be (n, D, H, W) of one shape; got "
                               f"{images.shape}, {masks.shape}, {None if lungs is None else lungs.shape}.")
    if not len(images):
        raise ModelConfigError("the sweep has no validation patches (with positives_only, it needs "
                               "nodule patches).")
    return images, masks, lungs


def sweep(velocity_model, predictor, data, grid: SweepGrid = SweepGrid(),
          base: GuidanceConfig = GuidanceConfig(), *, mask_rule: ThresholdRule = ThresholdRule(),
          floor: float = 0.0, batch_size: int = 4, positives_only: bool = True,
          device: torch.device | str | None = None, progress: Callable[[int, int], None] | None = None,
          cancel: Callable[[], bool] | None = None) -> SweepResult:
    """Run every setting of ``grid`` on the validation patches and rank them by mean Dice.

    Parameters
    ----------
    velocity_model, predictor
        As for :func:`~wsnodule_core.flow.guidance.guide`.
    data
        A :class:`~wsnodule_core.flow.patches.PatchSet` (its nodule patches when ``positives_only``;
        ground truth ``nodule_masks``, lungs ``lungs``) or ``(images, masks[, lungs])`` arrays
        ``(n, D, H, W)``, images in the prior's intensity range.
    grid, base
        The swept values and every other setting.
    mask_rule, floor
        How the difference becomes a mask (:func:`~wsnodule_core.flow.guidance.difference_mask`).
    batch_size
        Patches per :func:`guide` call.
    device
        Where guidance runs (default: where the velocity model's parameters are, else the CPU).
    progress, cancel
        ``progress(done, total)`` after each batch of each setting; ``cancel()`` before each and
        inside guidance, True raises :class:`~wsnodule_core.errors.SegmentationCancelled`.

    Returns
    -------
    SweepResult
        Rows ``{"t0", "guided_steps", "scale", "rule", "dice_mean", "dice_std", "dice_median",
        "p_before", "p_after", "mask_voxels", "seconds", "n"}`` best first, and the best config.
    """
    if int(batch_size) < 1:
        raise ModelConfigError(f"batch_size must be at least 1, got {batch_size!r}.")
    images, masks, lungs = _validation_arrays(data, positives_only)
    settings = grid.combinations()
    configs = [replace(base, **s) for s in settings]  # validates every combination up front
    device = torch.device(device) if device is not None else device_of(velocity_model)
    n = len(images)
    starts = list(range(0, n, int(batch_size)))
    total, done = len(settings) * len(starts), 0
    dice = [np.zeros(n) for _ in settings]
    p_before, p_after = [np.zeros(n) for _ in settings], [np.zeros(n) for _ in settings]
    voxels, seconds = [np.zeros(n) for _ in settings], [0.0] * len(settings)
    for t0 in grid.t0:
        chosen = [i for i, s in enumerate(settings) if s["t0"] == t0]
        for first in starts:
            index = np.arange(first, min(first + int(batch_size), n))
            x = torch.as_tensor(images[index], device=device)[:, None]
            seeds = [int(base.seed) + int(i) for i in index]
            begun = time.perf_counter()
            start = start_state(velocity_model, x, configs[chosen[0]], seeds=seeds, cancel=cancel)
            shared = (time.perf_counter() - begun) / len(chosen)
            for i in chosen:
                if cancel is not None and cancel():
                    raise SegmentationCancelled(f"the sweep was cancelled after {done} of {total} runs.")
                begun = time.perf_counter()
                result = guide(velocity_model, predictor, x, configs[i], cancel=cancel, keep_trajectory=False,
                               seeds=seeds, start=start)
                mask = difference_mask(result.difference, None if lungs is None else lungs[index], mask_rule,
                                       floor=floor)
                dice[i][index] = [dice_3d(m, g) for m, g in zip(mask, masks[index])]
                voxels[i][index] = mask.reshape(len(index), -1).sum(axis=1)
                p_before[i][index] = result.p_before.numpy()
                p_after[i][index] = result.p_after.numpy()
                seconds[i] += time.perf_counter() - begun + shared
                done += 1
                if progress is not None:
                    progress(done, total)
    table = [{**s, "dice_mean": float(np.mean(d)), "dice_std": float(np.std(d)),
              "dice_median": float(np.median(d)), "p_before": float(np.mean(pb)),
              "p_after": float(np.mean(pa)),
              "mask_voxels": float(np.mean(v)), "seconds": float(sec), "n": n}
             for s, d, pb, pa, v, sec in zip(settings, dice, p_before, p_after, voxels, seconds)]
    order = sorted(range(len(table)), key=lambda i: (-table[i]["dice_mean"], table[i]["p_after"], i))
    return SweepResult([table[i] for i in order], configs[order[0]])
