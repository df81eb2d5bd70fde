"""A 3D multi-GAP classifier of CT patches: the NAM paper's 3D extension (its "future work").

A VGG-like 3D backbone (blocks of ``convs_per_block`` x [Conv3d(3) + norm + ReLU], a 2x max pool
between blocks, none after the last, as VGG16 without pool5), a Conv3d(3)+ReLU+GAP head after the
last 1, 2 or 3 blocks (deepest first), the concatenated GAP vectors -> one linear layer. The NAM of
a branch is ``NAM(z, y, x) = sum_k w_k,nodule a_k(z, y, x)`` (eq. 2 in 3D), so the nodule logit
equals the sum over branches of each NAM's mean plus the FC bias (eq. 3 with GAP as an average).
See ``docs/nam_3d.md``.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from wsnodule_core.errors import ModelConfigError

NODULE_CLASS = 1
NORMS = ("batch", "group", "none")
KIND_3D = "nam-multigap-3d"
#: Channel presets: backbone channels per block and head channels.
WIDTH_PRESETS: dict[str, tuple[tuple[int, ...], int]] = {
    "narrow": ((8, 16, 32, 64), 32),       # CPU: trains in seconds on 16^3-32^3 patches
    "standard": ((32, 64, 128, 256), 256),
    "wide": ((64, 128, 256, 512), 512),    # GPU
}


@dataclass(frozen=True)
class MultiGap3DConfig:
    """Architecture of a :class:`MultiGap3DClassifier`.

    ``channels`` (backbone channels per block) and ``head_channels`` default to the ``width``
    preset (:data:`WIDTH_PRESETS`). A patch side must be a multiple of ``2 ** (len(channels) - 1)``.
    """

    n_gap: int = 1
    width: str = "standard"
    channels: tuple[int, ...] | None = None
    head_channels: int | None = None
    convs_per_block: int = 2
    norm: str = "group"            # "group" (8 groups, no running statistics), "batch" or "none"
    n_classes: int = 2
    in_channels: int = 1

    def __post_init__(self) -> None:
        if self.width not in WIDTH_PRESETS:
            raise ModelConfigError(f"width must be one of {sorted(WIDTH_PRESETS)}, got {self.width!r}.")
        preset_channels, preset_head = WIDTH_PRESETS[self.width]
        channels = tuple(int(c) for c in (self.channels if self.channels is not None else preset_channels))
        object.__setattr__(self, "channels", channels)
        object.__setattr__(self, "head_channels", int(self.head_channels or preset_head))
        if len(channels) < 1 or min(channels) < 1:
            raise ModelConfigError(
                f"channels must be positive channel counts, one per block, got {channels}.")
        if self.n_gap not in (1, 2, 3) or self.n_gap > len(channels):
            raise ModelConfigError(
                f"n_gap must be 1, 2 or 3 and at most the number of blocks ({len(channels)}), "
                f"got {self.n_gap!r}.")
        if self.norm not in NORMS:
            raise ModelConfigError(f"norm must be one of {NORMS}, got {self.norm!r}.")
        if self.head_channels < 1 or self.convs_per_block < 1:
            raise ModelConfigError(f"head_channels and convs_per_block must be >= 1, got "
                                   f"{self.head_channels} and {self.convs_per_block}.")
        if int(self.n_classes) < 2 or int(self.in_channels) < 1:
            raise ModelConfigError(f"n_classes must be >= 2 (class 1 = nodule) and in_channels >= 1, got "
                                   f"{self.n_classes} and {self.in_channels}.")

    @property
    def downsampling(self) -> int:
        """The factor between the input and the deepest map: a patch side must be a multiple of it."""
        return 2 ** (len(self.channels) - 1)  # type: ignore[arg-type]

    def to_dict(self) -> dict:
        data = asdict(self)
        data["channels"] = list(self.channels)  # type: ignore[arg-type]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "MultiGap3DConfig":
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        if known.get("channels") is not None:
            known["channels"] = tuple(known["channels"])
        return cls(**known)


@dataclass(frozen=True)
class MultiGap3DOutput:
    """Logits (B, n_classes); per branch, deepest first: activations (B, K, d, h, w) after the
    head's Conv+ReLU and NAMs (B, d, h, w) (eq. 2, not upsampled)."""

    logits: torch.Tensor
    activations: tuple[torch.Tensor, ...]
    nams: tuple[torch.Tensor, ...]


class MultiGap3DClassifier(nn.Module):
    """3D VGG-like backbone + 1-3 Conv+GAP heads + one linear layer; input (B, 1, D, H, W) in [0, 1]."""

    def __init__(self, config: MultiGap3DConfig | None = None) -> None:
        super().__init__()
        self.config = config or MultiGap3DConfig()
        cfg = self.config
        blocks = []
        previous = cfg.in_channels
        for width in cfg.channels:  # type: ignore[union-attr]
            layers: list[nn.Module] = []
            for _ in range(cfg.convs_per_block):
                layers.append(nn.Conv3d(previous, width, kernel_size=3, padding=1, bias=cfg.norm == "none"))
                if cfg.norm == "batch":
                    layers.append(nn.BatchNorm3d(width))
                elif cfg.norm == "group":
                    layers.append(nn.GroupNorm(_groups(width), width))
                layers.append(nn.ReLU(inplace=True))
                previous = width
            blocks.append(nn.Sequential(*layers))
        self.blocks = nn.ModuleList(blocks)
        n_blocks = len(blocks)
        #: block index of each branch, deepest first
        self.branch_blocks = tuple(n_blocks - 1 - b for b in range(cfg.n_gap))
        self.heads = nn.ModuleList(
            nn.Conv3d(cfg.channels[i], cfg.head_channels, kernel_size=3, padding=1)  # type: ignore[index]
            for i in self.branch_blocks
        )
        self.fc = nn.Linear(cfg.n_gap * cfg.head_channels, cfg.n_classes)  # type: ignore[operator]
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming-normal convolutions, N(0, 0.01) linear layer, zero biases (torchvision's VGG recipe)."""
        for module in self.modules():
            if isinstance(module, nn.Conv3d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, (nn.BatchNorm3d, nn.GroupNorm)):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, 0.01)
                nn.init.zeros_(module.bias)

    def new_parameters(self) -> list[nn.Parameter]:
        """The heads and the FC layer (trained at a higher learning rate, as in the paper)."""
        return [*self.heads.parameters(), *self.fc.parameters()]

    def backbone_parameters(self) -> list[nn.Parameter]:
        return list(self.blocks.parameters())

    def _check_input(self, x: torch.Tensor) -> None:
        step = self.config.downsampling
        if x.ndim != 5 or x.shape[1] != self.config.in_channels:
            raise ModelConfigError(f"the 3D classifier expects input of shape (B, {self.config.in_channels}, "
                                   f"D, H, W), got {tuple(x.shape)}.")
        if any(int(s) % step or int(s) < step for s in x.shape[2:]):
            raise ModelConfigError(
                f"every patch side must be a positive multiple of {step} (the model pools "
                f"{len(self.blocks) - 1} times), got {tuple(x.shape[2:])}; crop or pad the patch.")

    def _branch_activations(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        self._check_input(x)
        taps: dict[int, torch.Tensor] = {}
        for index, block in enumerate(self.blocks):
            if index > 0:
                x = F.max_pool3d(x, kernel_size=2, stride=2)
            x = block(x)
            if index in self.branch_blocks:
                taps[index] = x
        return tuple(F.relu(head(taps[i])) for head, i in zip(self.heads, self.branch_blocks))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activations = self._branch_activations(x)
        return self.fc(torch.cat([a.mean(dim=(2, 3, 4)) for a in activations], dim=1))

    def forward_with_maps(self, x: torch.Tensor) -> MultiGap3DOutput:
        """Logits plus each branch's activations and NAM (eq. 2), deepest branch first."""
        activations = self._branch_activations(x)
        logits = self.fc(torch.cat([a.mean(dim=(2, 3, 4)) for a in activations], dim=1))
        weights = self.fc.weight[NODULE_CLASS].split(self.config.head_channels)  # type: ignore[arg-type]
        nams = tuple(torch.einsum("bkdhw,k->bdhw", a, w.to(a.dtype)) for a, w in zip(activations, weights))
        return MultiGap3DOutput(logits, activations, nams)


def _groups(channels: int, wanted: int = 8) -> int:
    """The largest group count <= ``wanted`` that divides ``channels``."""
    return max(g for g in range(1, min(wanted, channels) + 1) if channels % g == 0)


def nodule_activation_map_3d(output: MultiGap3DOutput, size: Sequence[int],
                             branches: str | Sequence[int] = "all") -> torch.Tensor:
    """The (multi-GAP) 3D NAM at ``size`` (D, H, W): chosen branches' NAMs upsampled (trilinear,
    ``align_corners=False``) and summed, (B, D, H, W). ``branches=(0,)``: the deepest branch alone."""
    if isinstance(branches, str) and branches != "all":
        raise ModelConfigError(f"branches must be 'all' or a sequence of branch indices, got {branches!r}.")
    chosen = range(len(output.nams)) if branches == "all" else tuple(int(b) for b in branches)
    size = tuple(int(s) for s in size)
    if len(size) != 3:
        raise ModelConfigError(f"size must be (D, H, W), got {size}.")
    total = None
    for b in chosen:
        if not 0 <= b < len(output.nams):
            raise ModelConfigError(
                f"branch {b} does not exist: the model has {len(output.nams)} GAP branch(es).")
        nam = F.interpolate(output.nams[b][:, None].float(), size=size, mode="trilinear",
                            align_corners=False)[:, 0]
        total = nam if total is None else total + nam
    if total is None:
        raise ModelConfigError("branches is empty: give at least one branch index.")
    return total


def load_classifier_3d(path: str | os.PathLike, device: str | torch.device | None = None):
    """The 3D classifier of a checkpoint (``best.pt``/``last.pt`` or its run folder), in eval mode.

    Returns ``(model, checkpoint)``; ``checkpoint.train_config`` holds the patch spacing and
    window the model was trained with. ``device`` defaults to the CPU.
    """
    from wsnodule_core.training.checkpoint import load_model

    return load_model(
        path, KIND_3D, lambda c: MultiGap3DClassifier(MultiGap3DConfig.from_dict(c.model_config)),
        "the 3D NAM classifier; give a checkpoint written by train_classifier_3d", device,
    )
