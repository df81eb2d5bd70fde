"""The paper's GAP heads and the classifier's configuration, shared by every NAM backbone.

A Conv(3x3)+ReLU+GAP head per branch, the GAP vectors concatenated into one linear layer; the NAM of
a branch is ``sum_k w_k,nodule a_k(x, y)`` (eq. 2), so the nodule logit minus the bias is the sum of
the NAMs' means (eq. 3). :class:`MultiGapConfig` describes a classifier of either backbone.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import torch
from torch import nn

from wsnodule_core.errors import ModelConfigError

WIDTHS = {"vgg16": 1, "narrow": 8}
#: Feature extractors of the classifier: VGG16 (the paper) or LiteMedSAM's TinyViT image encoder.
BACKBONES = ("vgg16", "lite_medsam")
NODULE_CLASS = 1


@dataclass(frozen=True)
class MultiGapConfig:
    """Architecture of a :class:`MultiGapClassifier`.

    ``width="narrow"`` divides every backbone channel count by 8 (for CPUs); its default head
    is 128 channels (a ``head_channels`` left at the default 1024 becomes 128).
    ``backbone="lite_medsam"``: the head sits on LiteMedSAM's 256 x 64 x 64 embedding (2-/3-GAP add
    heads on two earlier TinyViT stages; ``width`` and ``batch_norm`` do not apply; a ``head_channels``
    left at 1024 becomes 256); the
    encoder is frozen unless ``fine_tune_encoder``. Old checkpoints without the field are VGG16.
    """

    n_gap: int = 1
    width: str = "vgg16"
    head_channels: int = 1024
    n_classes: int = 2
    in_channels: int = 1
    batch_norm: bool = False  # extension, not in the paper: BN after each backbone conv (trains from scratch)
    backbone: str = "vgg16"
    fine_tune_encoder: bool = False  # lite_medsam: train the encoder too (then saved in checkpoints)

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise ModelConfigError(f"backbone must be one of {list(BACKBONES)}, got {self.backbone!r}.")
        if self.backbone == "lite_medsam":
            if self.batch_norm:
                raise ModelConfigError("batch_norm applies to the VGG16 backbone only; use batch_norm=False "
                                       "with backbone='lite_medsam'.")
            if self.head_channels == 1024:
                object.__setattr__(self, "head_channels", 256)
        elif self.fine_tune_encoder:
            raise ModelConfigError("fine_tune_encoder applies to backbone='lite_medsam' only (the VGG16 "
                                   "backbone is always trained).")
        if self.n_gap not in (1, 2, 3):
            raise ModelConfigError(f"n_gap must be 1, 2 or 3 (GAP branches after conv5_3/conv4_3/conv3_3), "
                                   f"got {self.n_gap!r}.")
        if self.width not in WIDTHS:
            raise ModelConfigError(f"width must be one of {sorted(WIDTHS)}, got {self.width!r}.")
        if self.width == "narrow" and self.head_channels == 1024:
            object.__setattr__(self, "head_channels", 128)
        if int(self.head_channels) < 1:
            raise ModelConfigError(f"head_channels must be a positive number, got {self.head_channels!r}.")
        if int(self.n_classes) < 2:
            raise ModelConfigError(f"n_classes must be at least 2 (class 1 = nodule), got {self.n_classes!r}.")
        if self.in_channels not in (1, 3):
            raise ModelConfigError(f"in_channels must be 1 (CT slice) or 3, got {self.in_channels!r}.")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "MultiGapConfig":
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)


@dataclass(frozen=True)
class MultiGapOutput:
    """Logits, per-branch head activations and per-branch NAMs (deepest branch first)."""

    logits: torch.Tensor
    activations: tuple[torch.Tensor, ...]
    nams: tuple[torch.Tensor, ...]


def pooled_logits(activations: Sequence[torch.Tensor], fc: nn.Linear) -> torch.Tensor:
    """The logits of the GAP heads: each branch's activations averaged, concatenated, one linear layer."""
    return fc(torch.cat([a.mean(dim=(2, 3)) for a in activations], dim=1))


def gap_output(activations: Sequence[torch.Tensor], fc: nn.Linear, head_channels: int) -> MultiGapOutput:
    """Logits, activations and each branch's NAM (eq. 2: the nodule row of ``fc`` over its channels)."""
    logits = pooled_logits(activations, fc)
    weights = fc.weight[NODULE_CLASS].split(head_channels)
    nams = tuple(torch.einsum("bkhw,k->bhw", a, w.to(a.dtype)) for a, w in zip(activations, weights))
    return MultiGapOutput(logits, tuple(activations), nams)
