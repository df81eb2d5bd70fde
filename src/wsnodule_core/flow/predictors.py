"""Patch-level "nodule present" predictors for guidance and the attribution baselines, and their training.

A predictor is any torch module mapping a batch ``[B, 1, D, H, W]`` in [0, 1] (HU window
[-1000, 1000], :mod:`wsnodule_core.flow.patches`) to logits ``[B]``, ``[B, 1]`` or ``[B, 2]``;
:class:`PredictorModule` wraps one and always gives two-class logits ``[B, 2]`` (a single logit
``z`` becomes ``(0, z)``, so the softmax of class 1 is ``sigmoid(z)``), plus the names of the
layers the CAM methods need (:attr:`PredictorModule.cam_layer`, :attr:`PredictorModule.fc_layer`).

Two architectures (:class:`PredictorConfig`):

* ``"cnn3d"`` (:class:`CompactCNN3D`): blocks of two 3x3x3 convolutions (GroupNorm, ReLU), max
  pooling between blocks, global average pooling and one linear layer, so CAM is exact.
* ``"ortho25d"`` (:class:`Orthogonal25D`): the three orthogonal central slices (axial, coronal,
  sagittal; or slabs of ``slab`` slices as channels) through one shared 2D CNN; each plane's
  feature map is broadcast along the axis it lacks and the three are stacked as channels of a 3D
  feature volume (:class:`LiftPlanes`), which is globally pooled and classified. Pooling the
  lifted volume equals concatenating the pooled plane features, so the model is a plain 2.5D
  classifier, while CAM on the lifted layer gives a 3D map on the patch grid: a voxel scores what
  its three projections onto the central planes score.
* ``"tinyvit25d"`` (:class:`TinyVitSlices`, the rectified-flow paper's choice): the ``slab`` central
  axial slices of the patch, each through LiteMedSAM's TinyViT encoder (:mod:`wsnodule_core.foundation`;
  frozen unless ``fine_tune_encoder``), a 1x1 convolution of each 64 x 64 embedding, the slices'
  maps stacked into a 3D feature volume (the CAM layer), global average pooling and a linear layer.
  The input conversion is differentiable, so guidance's gradient reaches every voxel of those
  slices (``slab`` = the patch depth: the whole patch). A frozen encoder stays out of checkpoints.

Training (:func:`train_predictor`) follows the NAM 3D trainer: class-balanced batches, exact
flips/axial rot90 augmentation, AdamW with exponential decay, ``best.pt`` (validation accuracy,
else training accuracy) and ``last.pt`` of kind ``"flow-predictor"``, exact resume, callbacks.
Pretrained weights come only from a local file (``pretrained_path``); nothing is downloaded.
"""

from __future__ import annotations

import math
import os
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from wsnodule_core.errors import CheckpointError, ModelConfigError, TrainingDataError
from wsnodule_core.flow.patches import PatchConfig, PatchSet, patches_from_dataset
from wsnodule_core.image.window import FLOW_WINDOW
from wsnodule_core.training.augment import augment_patches
from wsnodule_core.training.callbacks import TrainCallbacks, as_callbacks
from wsnodule_core.training.checkpoint import (
    LAST,
    Checkpoint,
    capture_rng_state,
    load_error_text,
    load_model,
    restore_training_state,
    save_checkpoint,
)
from wsnodule_core.training.device import amp_enabled, autocast, grad_scaler
from wsnodule_core.training.loop import CLASSIFY_SUMS, EpochLoop, RunState, classify_metrics, classify_step
from wsnodule_core.training.result import RunResult, config_from_dict
from wsnodule_core.training.sampler import BalancedBatchSampler
from wsnodule_core.training.setup import start_run

KIND = "flow-predictor"
ARCHITECTURES = ("cnn3d", "ortho25d", "tinyvit25d")
NORMS = ("group", "batch", "none")


@runtime_checkable
class Predictor(Protocol):
    """Anything callable on ``[B, 1, D, H, W]`` in [0, 1] that returns "nodule present" logits
    ``[B]``, ``[B, 1]`` or ``[B, 2]`` (class 1 = nodule)."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...


def two_class_logits(out: torch.Tensor) -> torch.Tensor:
    """``[B]``/``[B, 1]`` -> ``[B, 2]`` as ``(0, z)``; ``[B, 2]`` unchanged; anything else is an error."""
    if out.ndim == 1 or (out.ndim == 2 and out.shape[1] == 1):
        z = out.reshape(-1)
        return torch.stack([torch.zeros_like(z), z], dim=1)
    if out.ndim == 2 and out.shape[1] == 2:
        return out
    raise ModelConfigError(f"a predictor must return logits [B], [B, 1] or [B, 2]; this one returned "
                           f"{tuple(out.shape)}.")


@dataclass(frozen=True)
class PredictorConfig:
    """Architecture of a predictor: ``channels`` per block (each block halves the 3D grid, or the 2D
    slices for ``ortho25d``, except the first), ``convs_per_block``, ``norm``, ``dropout`` before the
    linear layer, an optional local ``pretrained_path`` (a state dict or a wsnodule checkpoint), and for
    ``ortho25d`` the ``slab``: how many adjacent slices around each central plane the 2D CNN sees as
    input channels (1: the three central slices only); for ``tinyvit25d`` how many central axial slices
    go through the encoder (``channels[-1]``: the head's width; ``fine_tune_encoder``: train it too).
    ``z_smooth``: a fixed Gaussian along z of this sigma (voxels) applied to every input, in training and
    in use, so that thin- and thick-slice scans look alike to the network (0: none)."""

    architecture: str = "cnn3d"
    channels: tuple[int, ...] = (16, 32, 64)
    convs_per_block: int = 2
    norm: str = "group"
    dropout: float = 0.0
    pretrained_path: str | None = None
    slab: int = 1
    fine_tune_encoder: bool = False
    z_smooth: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        if not float(self.z_smooth) >= 0:
            raise ModelConfigError(f"z_smooth must be a sigma >= 0 (voxels), got {self.z_smooth}.")
        if int(self.slab) < 1 or int(self.slab) % 2 == 0:
            raise ModelConfigError(f"slab must be an odd number of slices >= 1, got {self.slab}.")
        if self.architecture not in ARCHITECTURES:
            raise ModelConfigError(f"architecture must be one of {ARCHITECTURES}, got {self.architecture!r}.")
        if not self.channels or min(self.channels) < 1 or self.convs_per_block < 1:
            raise ModelConfigError(f"channels must be positive (one per block) and convs_per_block >= 1, got "
                                   f"{self.channels} and {self.convs_per_block}.")
        if self.norm not in NORMS:
            raise ModelConfigError(f"norm must be one of {NORMS}, got {self.norm!r}.")
        if not 0 <= self.dropout < 1:
            raise ModelConfigError(f"dropout must be in [0, 1), got {self.dropout}.")

    @property
    def downsampling(self) -> int:
        return 2 ** (len(self.channels) - 1)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["channels"] = list(self.channels)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "PredictorConfig":
        return config_from_dict(cls, data)


def _norm(kind: str, channels: int, dims: int) -> nn.Module:
    if kind == "group":
        return nn.GroupNorm(math.gcd(8, channels), channels)
    if kind == "batch":
        return (nn.BatchNorm3d if dims == 3 else nn.BatchNorm2d)(channels)
    return nn.Identity()


def _encoder(config: PredictorConfig, dims: int, in_channels: int = 1) -> nn.Sequential:
    conv = nn.Conv3d if dims == 3 else nn.Conv2d
    pool = nn.MaxPool3d if dims == 3 else nn.MaxPool2d
    layers: list[nn.Module] = []
    previous = in_channels
    for i, width in enumerate(config.channels):
        if i:
            layers.append(pool(2))
        for _ in range(config.convs_per_block):
            layers += [conv(previous, width, 3, padding=1, bias=config.norm == "none"),
                       _norm(config.norm, width, dims), nn.ReLU()]
            previous = width
    return nn.Sequential(*layers)


class CompactCNN3D(nn.Module):
    """3D CNN: ``features`` (conv blocks) -> global average pooling -> ``fc`` (two logits)."""

    cam_layer = "features"
    fc_layer = "fc"

    def __init__(self, config: PredictorConfig) -> None:
        super().__init__()
        self.config = config
        self.features = _encoder(config, 3)
        self.dropout = nn.Dropout(config.dropout)
        self.fc = nn.Linear(config.channels[-1], 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.features(x)
        return self.fc(self.dropout(features.mean(dim=(2, 3, 4))))


class LiftPlanes(nn.Module):
    """Axial ``[B, C, h, w]``, coronal ``[B, C, d, w]``, sagittal ``[B, C, d, h]`` feature maps ->
    ``[B, 3C, d, h, w]``: each broadcast along the axis it lacks (no parameters)."""

    def forward(self, axial: torch.Tensor, coronal: torch.Tensor, sagittal: torch.Tensor) -> torch.Tensor:
        d, h, w = coronal.shape[2], axial.shape[2], axial.shape[3]
        return torch.cat([axial[:, :, None].expand(-1, -1, d, -1, -1),
                          coronal[:, :, :, None].expand(-1, -1, -1, h, -1),
                          sagittal[:, :, :, :, None].expand(-1, -1, -1, -1, w)], dim=1)


class Orthogonal25D(nn.Module):
    """2.5D CNN: three orthogonal central slices through one shared 2D ``encoder``, ``lift`` to a 3D
    feature volume, global average pooling, ``fc`` (two logits). See the module docstring."""

    cam_layer = "lift"
    fc_layer = "fc"

    def __init__(self, config: PredictorConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = _encoder(config, 2, int(config.slab))
        self.lift = LiftPlanes()
        self.dropout = nn.Dropout(config.dropout)
        self.fc = nn.Linear(3 * config.channels[-1], 2)

    def planes(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The central axial (y, x), coronal (z, x) and sagittal (z, y) slabs, ``[B, slab, ., .]`` each
        (the slab's slices as channels)."""
        d, h, w = x.shape[2:]
        r = int(self.config.slab) // 2
        if min(d, h, w) < 2 * r + 1:
            raise ModelConfigError(f"a slab of {self.config.slab} slices does not fit a patch of "
                                   f"{(d, h, w)}.")
        v = x[:, 0]
        return (v[:, d // 2 - r:d // 2 + r + 1],
                v[:, :, h // 2 - r:h // 2 + r + 1].permute(0, 2, 1, 3),
                v[:, :, :, w // 2 - r:w // 2 + r + 1].permute(0, 3, 1, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        planes = self.planes(x)
        if planes[0].shape == planes[1].shape == planes[2].shape:  # cubes: one encoder pass
            maps = self.encoder(torch.cat(planes, dim=0)).chunk(3, dim=0)
        else:
            maps = tuple(self.encoder(p) for p in planes)
        volume = self.lift(*maps)
        return self.fc(self.dropout(volume.mean(dim=(2, 3, 4))))


class StackSlices(nn.Module):
    """``[B * S, C, h, w]`` slice maps -> ``[B, C, S, h, w]`` (no parameters; the CAM layer)."""

    def forward(self, maps: torch.Tensor, slices: int) -> torch.Tensor:
        return maps.reshape(-1, slices, *maps.shape[1:]).transpose(1, 2)


class TinyVitSlices(nn.Module):
    """The central ``slab`` axial slices through LiteMedSAM's encoder, a 1x1 head, stacked, pooled, ``fc``."""

    cam_layer = "lift"
    fc_layer = "fc"

    def __init__(self, config: PredictorConfig, encoder: nn.Module | None = None) -> None:
        from wsnodule_core.foundation import load_lite_medsam
        from wsnodule_core.foundation.frozen import keep_frozen_encoder_out
        from wsnodule_core.foundation.lite_medsam import EMBEDDING_SHAPE

        super().__init__()
        self.config = config
        self.encoder = encoder if encoder is not None else load_lite_medsam("cpu").image_encoder
        self.frozen = not config.fine_tune_encoder
        self.encoder.requires_grad_(not self.frozen)
        self.head = nn.Sequential(nn.Conv2d(EMBEDDING_SHAPE[0], config.channels[-1], 1), nn.ReLU())
        self.lift = StackSlices()
        self.dropout = nn.Dropout(config.dropout)
        self.fc = nn.Linear(config.channels[-1], 2)
        keep_frozen_encoder_out(self)

    def train(self, mode: bool = True) -> "TinyVitSlices":
        super().train(mode)
        if self.frozen:
            self.encoder.eval()  # its batch norms keep the wheel's statistics
        return self

    def model_input(self, x: torch.Tensor) -> torch.Tensor:
        """The slab's slices of patches ``[B, 1, D, H, H]`` as the encoder's ``[B * slab, 3, 256, 256]``
        (differentiable: guidance's gradient goes through it)."""
        from wsnodule_core.foundation.image import to_model_input

        d, h, w = x.shape[2:]
        slab = int(self.config.slab)
        if slab > d or h != w:
            raise ModelConfigError(f"tinyvit25d takes cubes with at least {slab} slices, got a patch of {(d, h, w)}.")
        lo, hi = FLOW_WINDOW
        hu = x[:, 0, d // 2 - slab // 2:d // 2 + slab // 2 + 1] * (hi - lo) + lo
        return to_model_input(hu.reshape(-1, h, w))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_embedding(self.encoder(self.model_input(x)))

    def forward_embedding(self, embedding: torch.Tensor) -> torch.Tensor:
        """Logits from the slab's embeddings ``[B * slab, 256, 64, 64]`` (or ``[B, slab, 256, 64, 64]``)."""
        embedding = embedding.reshape(-1, *embedding.shape[-3:]).to(self.fc.weight.dtype)  # cached: float16
        volume = self.lift(self.head(embedding), int(self.config.slab))
        return self.fc(self.dropout(volume.mean(dim=(2, 3, 4))))

    def embed_patches(self, images: np.ndarray, *, cache=None, chunk: int = 8,
                      progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
        """The frozen encoder's embeddings (float16, CPU) ``[n, slab, 256, 64, 64]`` of patches ``(n, D, H, H)``
        in [0, 1], read from / written to ``cache`` (a :class:`~wsnodule_core.foundation.EmbeddingCache`)."""
        from wsnodule_core.foundation.embeddings import embed_arrays

        embedded = embed_arrays(self.encoder, images, lambda x: self.model_input(x[:, None]), cache=cache,
                                chunk=chunk, progress=progress)
        return embedded if len(images) else embedded.expand(0, int(self.config.slab), *embedded.shape[2:])


class EmbeddingPredictor(nn.Module):
    """A :class:`TinyVitSlices` whose input is the slab's cached embeddings (training a frozen-encoder head)."""

    def __init__(self, net: TinyVitSlices) -> None:
        super().__init__()
        self.net = net

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.net.forward_embedding(embedding)


class PredictorModule(nn.Module):
    """Any predictor ``net`` with two-class logits ``[B, 2]`` and the CAM layer names prefixed "net.".

    ``cam_layer``/``fc_layer`` default to the net's own attributes of those names (the built-in
    architectures define them); give them for another net (``fc_layer`` may be None: no plain CAM).
    """

    def __init__(self, net: nn.Module, cam_layer: str | None = None, fc_layer: str | None = None,
                 config: PredictorConfig | None = None) -> None:
        super().__init__()
        self.net = net
        self.config = config
        cam_layer = cam_layer if cam_layer is not None else getattr(net, "cam_layer", None)
        fc_layer = fc_layer if fc_layer is not None else getattr(net, "fc_layer", None)
        names = dict(net.named_modules())
        for name in (cam_layer, fc_layer):
            if name is not None and name not in names:
                raise ModelConfigError(f"the predictor has no layer {name!r}; pick one of its "
                                       "named_modules().")
        self._cam = None if cam_layer is None else f"net.{cam_layer}"
        self._fc = None if fc_layer is None else f"net.{fc_layer}"

    @property
    def cam_layer(self) -> str | None:
        """Name (in this module) of the spatial feature layer CAM/Grad-CAM use."""
        return self._cam

    @property
    def fc_layer(self) -> str | None:
        """Name (in this module) of the linear layer after global pooling (plain CAM)."""
        return self._fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sigma = float(getattr(self.config, "z_smooth", 0.0) or 0.0)
        return two_class_logits(self.net(smooth_along_z(x, sigma) if sigma > 0 else x))

    def nodule_logit(self, x: torch.Tensor) -> torch.Tensor:
        """``[B]``: logit of "nodule present" (class 1 minus class 0), what guidance differentiates."""
        logits = self(x)
        return logits[:, 1] - logits[:, 0]

    def probability(self, x: torch.Tensor) -> torch.Tensor:
        """``[B]``: P(nodule present)."""
        return torch.sigmoid(self.nodule_logit(x))


def smooth_along_z(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Patches ``[B, C, D, H, W]`` smoothed along z (D) by a Gaussian of ``sigma`` voxels (edges replicated;
    linear, so a gradient passes through). A scan resampled from thick slices is smooth in z and one from
    thin slices is not: a network that sees both through this filter cannot tell them apart by that."""
    radius = max(1, int(3.0 * sigma + 0.5))
    offsets = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = (kernel / kernel.sum()).view(1, 1, -1)
    b, c, d, h, w = x.shape
    lines = x.permute(0, 1, 3, 4, 2).reshape(-1, 1, d)
    smooth = nn.functional.conv1d(nn.functional.pad(lines, (radius, radius), mode="replicate"), kernel)
    return smooth.reshape(b, c, h, w, d).permute(0, 1, 4, 2, 3)


def as_predictor(model: nn.Module, cam_layer: str | None = None,
                 fc_layer: str | None = None) -> PredictorModule:
    """``model`` itself when it is a :class:`PredictorModule`, else wrapped in one."""
    if isinstance(model, PredictorModule) and cam_layer is None and fc_layer is None:
        return model
    return PredictorModule(model, cam_layer, fc_layer)


def build_predictor(config: PredictorConfig = PredictorConfig(), seed: int | None = None) -> PredictorModule:
    """A fresh predictor of ``config`` (weights from ``torch.manual_seed(seed)`` when given), with the
    local pretrained weights of ``config.pretrained_path`` loaded when set."""
    if seed is not None:
        torch.manual_seed(seed)
    nets = {"cnn3d": CompactCNN3D, "ortho25d": Orthogonal25D, "tinyvit25d": TinyVitSlices}
    net = nets[config.architecture](config)
    module = PredictorModule(net, config=config)
    if config.pretrained_path:
        load_pretrained(module, config.pretrained_path)
    return module


def load_pretrained(module: nn.Module, path: str | os.PathLike) -> list[str]:
    """Copy the weights of a local file into ``module`` where names and shapes match; returns their names.

    ``path``: a state dict saved with ``torch.save`` or a wsnodule checkpoint (its ``model_state``).
    Keys may carry or lack the "net." prefix; at least one convolution or linear weight must fit.
    Nothing is downloaded.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such weights file; give a local state dict or checkpoint "
                              "(pretrained weights are never downloaded).")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - every unreadable file gets the same advice
        raise CheckpointError(f"{path}: cannot read it as torch weights ({load_error_text(error)}).") from error
    state = raw.get("model_state", raw.get("state_dict", raw)) if isinstance(raw, dict) else None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: holds no state dict.")
    own = module.state_dict()
    matched = {}
    for key, value in state.items():
        for name in (key, f"net.{key}", key.removeprefix("net.")):
            if name in own and torch.is_tensor(value) and own[name].shape == value.shape:
                matched[name] = value
                break
    if not any(value.ndim >= 2 for value in matched.values()):  # a bias or a norm alone is no pretraining
        raise CheckpointError(f"{path}: no weight of its {len(state)} tensors fits this predictor by name "
                              "and shape; give weights of the same architecture.")
    module.load_state_dict(matched, strict=False)
    return sorted(matched)


def load_predictor(path: str | os.PathLike, device: str | torch.device | None = None
                   ) -> tuple[PredictorModule, Checkpoint]:
    """The predictor of a ``"flow-predictor"`` checkpoint (``best.pt``/``last.pt`` or its folder), eval mode.

    Returns ``(model, checkpoint)``; ``checkpoint.raw["patch_config"]`` is the patch protocol it
    was trained on. ``device`` defaults to the CPU.
    """
    def build(checkpoint: Checkpoint) -> nn.Module:
        config = PredictorConfig.from_dict({**checkpoint.model_config, "pretrained_path": None})
        return build_predictor(config)

    model, checkpoint = load_model(path, KIND, build,
                                   "a flow predictor; give a checkpoint of train_predictor", device)
    return model, checkpoint  # type: ignore[return-value]


def trained_patch_config(checkpoint: Checkpoint) -> PatchConfig | None:
    """The patch protocol a predictor checkpoint recorded (None when it recorded none)."""
    raw = (getattr(checkpoint, "raw", None) or {}).get("patch_config")
    return config_from_dict(PatchConfig, raw) if isinstance(raw, dict) else None


# --- training ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PredictorTrainConfig:
    """Everything that defines a predictor training run (saved in every checkpoint)."""

    architecture: str = "cnn3d"
    channels: tuple[int, ...] = (16, 32, 64)
    convs_per_block: int = 2
    norm: str = "group"
    dropout: float = 0.0
    pretrained_path: str | None = None
    slab: int = 1
    fine_tune_encoder: bool = False
    z_smooth: float = 0.0
    lr: float = 1e-3
    weight_decay: float = 1e-4
    lr_decay: float = 0.98
    batch_size: int = 16
    epochs: int = 10
    max_steps_per_epoch: int | None = None
    epoch_size: str = "balanced"
    augment: bool = True
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    eval_batch_size: int = 32
    embedding_cache: str | None = None  # tinyvit25d, frozen: its folder; None: foundation.default_cache_dir()

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        for name in ("batch_size", "epochs", "eval_batch_size"):
            if int(getattr(self, name)) < 1:
                raise ModelConfigError(f"{name} must be at least 1, got {getattr(self, name)!r}.")
        if not self.lr > 0 or not 0 < self.lr_decay <= 1:
            raise ModelConfigError(f"lr must be positive and lr_decay in (0, 1], got {self.lr} and "
                                   f"{self.lr_decay}.")
        if self.epoch_size not in ("balanced", "all"):
            raise ModelConfigError(f"epoch_size must be 'balanced' or 'all', got {self.epoch_size!r}.")
        self.model_config()

    @property
    def uses_cached_embeddings(self) -> bool:
        """A frozen LiteMedSAM encoder: its slab embeddings are computed once (cached on disk) and the
        head trains on them, without augmentation (an augmented slice would need a new encoder pass)."""
        return self.architecture == "tinyvit25d" and not self.fine_tune_encoder

    def model_config(self) -> PredictorConfig:
        return PredictorConfig(self.architecture, self.channels, self.convs_per_block, self.norm,
                               self.dropout, self.pretrained_path, self.slab, self.fine_tune_encoder,
                               self.z_smooth)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["channels"] = list(self.channels)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "PredictorTrainConfig":
        return config_from_dict(cls, data)


@torch.no_grad()
def predict_patches(model: nn.Module, images: np.ndarray, device: torch.device | str = "cpu", *,
                    batch_size: int = 32, use_amp: bool = False) -> np.ndarray:
    """P(nodule present) of each patch ``images`` (n, s, s, s) in [0, 1]; eval mode, float32 out."""
    device = torch.device(device)
    model = as_predictor(model)
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        x = torch.as_tensor(np.asarray(images[start:start + batch_size]), device=device).float()[:, None]
        with autocast(device, use_amp):
            logits = model(x)
        out.append(torch.softmax(logits.float(), dim=1)[:, 1].cpu())
    model.train(was_training)
    return torch.cat(out).numpy() if out else np.zeros(0, np.float32)


def evaluate_predictor(model: nn.Module, patches: PatchSet, device: torch.device | str = "cpu", *,
                       batch_size: int = 32, use_amp: bool = False) -> dict:
    """Cross-entropy, accuracy, sensitivity and specificity (threshold 0.5) and ROC AUC on ``patches``."""
    p = predict_patches(model, patches.images, device, batch_size=batch_size, use_amp=use_amp)
    return probability_metrics(p, patches)


def probability_metrics(p: np.ndarray, patches: PatchSet) -> dict:
    """:func:`evaluate_predictor`'s figures from the probabilities ``p`` of ``patches``."""
    from wsnodule_core.metrics.classification import roc_auc

    p = np.clip(p, 1e-7, 1 - 1e-7)
    y = patches.labels.astype(int)
    pred = (p >= 0.5).astype(int)
    n = max(len(y), 1)
    loss = float(-np.sum(y * np.log(p) + (1 - y) * np.log(1 - p)) / n)
    return {"loss": loss, "accuracy": float(np.sum(pred == y) / n),
            "sensitivity": float(np.sum((pred == 1) & (y == 1)) / patches.n_positive) if patches.n_positive
            else float("nan"),
            "specificity": float(np.sum((pred == 0) & (y == 0)) / patches.n_negative) if patches.n_negative
            else float("nan"),
            "auc": roc_auc(p, y)}


def _resolve(data, patch_config: PatchConfig | None) -> tuple[PatchSet, PatchSet | None]:
    if isinstance(data, PatchSet):
        return data, None
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], PatchSet):
        val = data[1]
        return data[0], (val if val is not None and len(val) and val.n_positive and val.n_negative else None)
    config = patch_config or PatchConfig()
    train = patches_from_dataset(data, "train", config)
    val = patches_from_dataset(data, "val", config)
    return train, (val if len(val) and val.n_positive and val.n_negative else None)


def _aug_seed(seed: int, epoch: int) -> int:
    return int(np.random.default_rng([seed, epoch, 47]).integers(2**62))


def train_predictor(patches, out_dir: str | os.PathLike, config: PredictorTrainConfig | None = None,
                    callbacks: TrainCallbacks | object | None = None, *, resume: bool = False,
                    overwrite: bool = False, patch_config: PatchConfig | None = None,
                    log: Callable[[str], None] | None = None) -> RunResult:
    """Train a patch predictor from patch labels; write ``best.pt`` and ``last.pt`` into ``out_dir``.

    Parameters
    ----------
    patches
        A :class:`PatchSet` (no validation), a ``(train, val)`` pair, or a data-set folder / loaded
        ``Dataset`` whose train and val splits are cut with ``patch_config`` (default :class:`PatchConfig`).
    config
        The run's settings; with ``resume`` and no config, the checkpoint's own.
    callbacks
        ``on_step(step, total, loss)``, ``on_epoch(epoch, metrics)``, ``should_stop()`` (True saves
        ``last.pt`` and returns a result with ``cancelled=True``).
    resume, overwrite
        A folder with checkpoints is refused unless ``resume`` (continue from ``last.pt`` exactly:
        same batches, augmentation and optimiser state) or ``overwrite`` (start again).

    Returns
    -------
    RunResult
        Its ``model`` is the :class:`PredictorModule` after the last step, in eval mode.
    """
    callbacks = as_callbacks(callbacks)

    def configure(checkpoint: Checkpoint | None) -> PredictorTrainConfig:
        if checkpoint is None:
            return config or PredictorTrainConfig()
        saved = PredictorTrainConfig.from_dict(checkpoint.train_config)
        if config is not None and config.model_config().to_dict() | {"pretrained_path": None} != \
                saved.model_config().to_dict() | {"pretrained_path": None}:
            raise CheckpointError(f"{checkpoint.path}: the run trained {saved.model_config()}, the config asks "
                                  f"for {config.model_config()}; resume with the same model settings.")
        return config or saved

    run = start_run(out_dir, kind=KIND, name="flow predictor", configure=configure, resume=resume,
                    overwrite=overwrite, log=log)
    out, checkpoint, config, device, say = run.out, run.checkpoint, run.config, run.device, run.say
    train_set, val_set = _resolve(patches, patch_config)
    if len(train_set) == 0:
        raise TrainingDataError("no training patches: the train split yields no labelled patch; check its "
                                "lungs and nodules, or the patch settings.")
    if val_set is not None and val_set.config.size != train_set.config.size:
        raise ModelConfigError(f"training patches are {train_set.config.size} voxels wide, validation "
                               f"patches {val_set.config.size}; cut both with one PatchConfig.")
    if train_set.config.size < 2 * config.model_config().downsampling:
        raise ModelConfigError(f"patches of {train_set.config.size} voxels are too small for "
                               f"{len(config.channels)} blocks; use fewer channels entries or larger "
                               "patches.")
    say(f"training patches: {train_set.n_positive} with nodule, {train_set.n_negative} without; "
        f"validation: {len(val_set) if val_set is not None else 0}")
    use_amp = amp_enabled(device, config.amp)
    random.seed(config.seed)
    np.random.seed(config.seed % 2**32)
    model_config = config.model_config()
    if checkpoint is not None:  # the checkpoint holds the weights; do not reload pretrained ones
        model_config = PredictorConfig.from_dict({**model_config.to_dict(), "pretrained_path": None})
    model = build_predictor(model_config, seed=config.seed).to(device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=config.lr_decay)
    scaler = grad_scaler(device, use_amp)
    state = RunState.resumed(restore_training_state(checkpoint, model, optimizer, scheduler, scaler), checkpoint)
    aug_state = checkpoint.raw.get("augment_rng") if checkpoint is not None else None
    if checkpoint is not None:
        say(f"resuming from {out / LAST} after epoch {state.epoch}, step {state.global_step}")
    net, val_inputs = model, None
    if config.uses_cached_embeddings:
        net = EmbeddingPredictor(model.net)
        images, val_inputs = _embeddings(model.net, train_set, val_set, config, say)
    else:
        images = torch.from_numpy(np.ascontiguousarray(train_set.images))
    labels = torch.from_numpy(train_set.labels.astype(np.int64))
    sampler = BalancedBatchSampler(train_set.labels, config.batch_size, config.seed,
                                   epoch_size=config.epoch_size)
    steps = len(sampler)
    if config.max_steps_per_epoch is not None:
        steps = min(steps, config.max_steps_per_epoch)
    data_info = {"train": train_set.describe(), "val": val_set.describe() if val_set is not None else None}

    def batches(epoch: int) -> list:
        sampler.set_epoch(epoch)
        return list(sampler)[:steps]

    def train_step(batch, generator: torch.Generator) -> tuple[float, torch.Tensor]:
        index = torch.as_tensor(batch)
        y = labels[index].to(device)
        if config.uses_cached_embeddings:  # the slab's embeddings, not augmented
            return classify_step(net, images[index].to(device).float(), y, optimizer, scaler, use_amp=use_amp,
                                 step=state.global_step + 1, lr=config.lr)
        x = images[index].to(device).float()[:, None]
        if config.augment:
            x = augment_patches(x, generator)
        return classify_step(model, x, y, optimizer, scaler, use_amp=use_amp, step=state.global_step + 1,
                             lr=config.lr)

    def end_epoch(epoch: int, sums: torch.Tensor) -> tuple[dict, float]:
        scheduler.step()
        metrics = classify_metrics(epoch, sums, optimizer)
        if val_set is not None:
            if val_inputs is not None:
                val = probability_metrics(_embedding_probabilities(net, val_inputs, device,
                                                                   config.eval_batch_size), val_set)
            else:
                val = evaluate_predictor(model, val_set, device, batch_size=config.eval_batch_size,
                                         use_amp=use_amp)
            metrics.update({f"val_{k}": v for k, v in val.items()})
            model.train()
        return metrics, metrics.get("val_accuracy", metrics["train_accuracy"])

    def save(names: tuple[str, ...], run: RunState) -> None:
        document = {"kind": KIND, "model_config": model_config.to_dict(), "train_config": config.to_dict(),
                    "patch_config": train_set.config.to_dict(), **run.fields(),
                    "model_state": model.state_dict(), "optimizer_state": optimizer.state_dict(),
                    "scheduler_state": scheduler.state_dict(), "scaler_state": scaler.state_dict(),
                    "rng": capture_rng_state(), "augment_rng": loop.generator.get_state(), "data": data_info}
        for name in names:
            save_checkpoint(out / name, document)

    loop = EpochLoop(config.epochs, steps, batches, train_step, end_epoch, save,
                     lambda epoch: _aug_seed(config.seed, epoch), callbacks, say, out, n_sums=CLASSIFY_SUMS)
    model.train()
    epochs_done, cancelled = loop.run(state, aug_state)
    return state.result(out, epochs_done, cancelled, device, model)


def _embeddings(net: TinyVitSlices, train_set: PatchSet, val_set: PatchSet | None, config: PredictorTrainConfig,
                say) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The frozen encoder's slab embeddings (float16, CPU) of the training and validation patches, each
    computed once and kept in the embedding cache."""
    from wsnodule_core.foundation import EmbeddingCache

    cache = EmbeddingCache(config.embedding_cache)
    say(f"embedding the {config.slab}-slice slabs of {len(train_set)} training and "
        f"{len(val_set) if val_set is not None else 0} validation patches with the frozen LiteMedSAM encoder "
        f"(cache: {cache.folder}; augmentation off)")
    train = net.embed_patches(train_set.images, cache=cache)
    val = net.embed_patches(val_set.images, cache=cache) if val_set is not None else None
    return train, val


@torch.no_grad()
def _embedding_probabilities(net: nn.Module, embeddings: torch.Tensor, device: torch.device,
                             batch_size: int) -> np.ndarray:
    was_training = net.training
    net.eval()
    out = [torch.softmax(net(embeddings[i:i + batch_size].to(device).float()).float(), dim=1)[:, 1].cpu()
           for i in range(0, len(embeddings), batch_size)]
    net.train(was_training)
    return torch.cat(out).numpy() if out else np.zeros(0, np.float32)
