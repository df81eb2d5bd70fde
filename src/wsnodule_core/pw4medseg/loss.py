"""The probability-informed segmentation loss of PW4MedSeg.

For logits z, a soft target p in [0, 1] (the pseudo-label probability map) and the per-layer KLs
of the probabilistic transformer:

    total = cls_weight * sum(c * l(z, y)) / n  +  dice_weight * soft_dice(sigmoid(z), p; c)
            + kl_weight * sum over layers of KL

- y = (p > threshold) is the binarised target and l the focal BCE (gamma = 0: plain BCE);
- c is the voxel confidence: p where y = 1 and 1 - p where y = 0 (so uncertain voxels near the
  threshold count little), or a confidence map given by the caller; ignored voxels get c = 0;
  n is the number of voxels not ignored;
- the soft Dice compares the probabilities with the *soft* target, weighted by c, in the squared
  form ``1 - 2 sum(c q p) / (sum(c q^2) + sum(c p^2))``, which is 0 exactly when q = p (the plain
  form is not 0 for a soft target). Samples whose weighted target is empty are left out of the
  Dice mean (their false positives are the classification term's job);
- the KL weight is 0.3 (the paper's w).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from wsnodule_core.errors import LossInputError, ModelConfigError

CLASSIFICATION = ("focal", "bce")


@dataclass(frozen=True)
class LossConfig:
    """Weights and options of :class:`ProbabilityInformedLoss`.

    ``classification``: "focal" (``gamma``; ``alpha`` None or the foreground weight in [0, 1]) or
    "bce"; ``threshold`` binarises the soft target; ``confidence_weighted`` False gives every
    voxel weight 1 (ignore masks still apply); ``dice_batch`` pools the Dice over the batch (one
    Dice per batch instead of per sample); ``smooth`` is added to the Dice's numerator and
    denominator.
    """

    classification: str = "focal"
    gamma: float = 2.0
    alpha: float | None = None
    threshold: float = 0.5
    confidence_weighted: bool = True
    cls_weight: float = 1.0
    dice_weight: float = 1.0
    kl_weight: float = 0.3
    dice_batch: bool = False
    smooth: float = 1e-5

    def __post_init__(self) -> None:
        if self.classification not in CLASSIFICATION:
            raise ModelConfigError(f"LossConfig.classification must be one of {CLASSIFICATION}, got "
                                   f"{self.classification!r}.")
        if not self.gamma >= 0:
            raise ModelConfigError(f"LossConfig.gamma must be >= 0, got {self.gamma}.")
        if self.alpha is not None and not 0.0 <= self.alpha <= 1.0:
            raise ModelConfigError(f"LossConfig.alpha must be None or lie in [0, 1], got {self.alpha}.")
        if not 0.0 < self.threshold < 1.0:
            raise ModelConfigError(f"LossConfig.threshold must lie in (0, 1), got {self.threshold}.")
        for name in ("cls_weight", "dice_weight", "kl_weight"):
            if not getattr(self, name) >= 0:
                raise ModelConfigError(f"LossConfig.{name} must be >= 0, got {getattr(self, name)}.")
        if not self.smooth >= 0:
            raise ModelConfigError(f"LossConfig.smooth must be >= 0, got {self.smooth}.")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "LossConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def focal_bce(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0,
              alpha: float | None = None) -> torch.Tensor:
    """Element-wise focal binary cross-entropy of a 0/1 target; ``gamma = 0``, ``alpha = None``: BCE."""
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    loss = bce if gamma == 0 else (1.0 - torch.exp(-bce)) ** gamma * bce  # exp(-bce) = p_t for a 0/1 target
    if alpha is not None:
        loss = loss * (alpha * target + (1.0 - alpha) * (1.0 - target))
    return loss


def soft_dice_loss(probs: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None, *,
                   batch: bool = False, smooth: float = 1e-5) -> torch.Tensor:
    """Weighted squared soft Dice loss ``1 - (2 sum(w q p) + s) / (sum(w q^2) + sum(w p^2) + s)``.

    Per sample (mean over samples whose weighted target is not empty; 0 when all are) or, with
    ``batch``, pooled over the batch. Inputs (B, ...) of one shape.
    """
    w = torch.ones_like(probs) if weight is None else weight
    dims = tuple(range(0 if batch else 1, probs.ndim))
    inter = (w * probs * target).sum(dims)
    denom = (w * probs * probs).sum(dims) + (w * target * target).sum(dims)
    dice = 1.0 - (2.0 * inter + smooth) / (denom + smooth)
    present = (w * target).sum(dims) > 0
    if not present.any():
        return probs.sum() * 0.0  # keeps the graph connected
    return dice[present].mean()


def _validate(logits: torch.Tensor, target: torch.Tensor, confidence: torch.Tensor | None,
              ignore: torch.Tensor | None) -> None:
    where = "ProbabilityInformedLoss"
    if logits.ndim < 2:
        raise LossInputError(f"{where}: logits need a batch axis, got shape {tuple(logits.shape)}.")
    for name, value in (("target", target), ("confidence", confidence), ("ignore", ignore)):
        if value is not None and tuple(value.shape) != tuple(logits.shape):
            raise LossInputError(f"{where}: {name} has shape {tuple(value.shape)} but the logits have "
                                 f"{tuple(logits.shape)}; give one value per voxel (B, 1, D, H, W).")
    if ignore is not None and ignore.dtype != torch.bool:
        raise LossInputError(f"{where}: ignore must be a bool mask (True = ignore), got {ignore.dtype}.")
    for name, value in (("target", target), ("confidence", confidence)):
        if value is None or not value.numel():
            continue
        if value.min() < 0 or value.max() > 1 or value.isnan().any():
            raise LossInputError(f"{where}: {name} values must lie in [0, 1] (a probability map), got "
                                 f"[{float(value.min()):.3g}, {float(value.max()):.3g}].")


class ProbabilityInformedLoss(nn.Module):
    """The PW4MedSeg loss (see the module docstring) with a :class:`LossConfig`.

    ``forward(logits, target, kl=None, *, confidence=None, ignore=None) -> (total, parts)``:
    ``logits`` and ``target`` (soft, in [0, 1]) share one shape (B, 1, D, H, W) or (B, D, H, W);
    ``kl`` is the model's per-layer KL (any shape, summed; None = no KL term); ``confidence``
    replaces the p / 1 - p weights (values in [0, 1]); ``ignore`` (bool, True = ignore) drops voxels.
    ``parts`` holds detached scalars "total", "classification", "dice", "kl" (unweighted, summed
    over layers) for logging. Computed in float32 (also under autocast).
    """

    def __init__(self, config: LossConfig | None = None) -> None:
        super().__init__()
        self.config = config or LossConfig()

    def voxel_weights(self, target: torch.Tensor, confidence: torch.Tensor | None = None,
                      ignore: torch.Tensor | None = None) -> torch.Tensor:
        """The per-voxel weight c (see the module docstring)."""
        cfg = self.config
        if confidence is not None:
            weight = confidence.float()
        elif cfg.confidence_weighted:
            weight = torch.where(target > cfg.threshold, target, 1.0 - target)
        else:
            weight = torch.ones_like(target)
        if ignore is not None:
            weight = weight * (~ignore).to(weight.dtype)
        return weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor, kl: torch.Tensor | None = None, *,
                confidence: torch.Tensor | None = None,
                ignore: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        cfg = self.config
        _validate(logits, target, confidence, ignore)
        target = target.float()
        with torch.autocast(device_type=logits.device.type, enabled=False):
            logits = logits.float()
            weight = self.voxel_weights(target, confidence, ignore)
            binary = (target > cfg.threshold).float()
            gamma = cfg.gamma if cfg.classification == "focal" else 0.0
            alpha = cfg.alpha if cfg.classification == "focal" else None
            count = (torch.ones_like(target) if ignore is None else (~ignore).float()).sum().clamp_min(1.0)
            cls = (weight * focal_bce(logits, binary, gamma, alpha)).sum() / count
            dice = soft_dice_loss(torch.sigmoid(logits), target, weight, batch=cfg.dice_batch,
                                  smooth=cfg.smooth)
            kl_sum = logits.new_zeros(()) if kl is None else kl.float().sum()
            total = cfg.cls_weight * cls + cfg.dice_weight * dice + cfg.kl_weight * kl_sum
        parts = {"total": total.detach(), "classification": cls.detach(), "dice": dice.detach(),
                 "kl": kl_sum.detach()}
        return total, parts
