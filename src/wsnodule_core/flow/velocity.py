"""The velocity network v_theta(x_t, t) of the 3D rectified-flow prior: MONAI's ``DiffusionModelUNet``.

The network sees time as MAISI's does: ``timesteps = t * time_scale`` with ``t`` in [0, 1]
(t = 0 clean, t = 1 noise) and ``time_scale = 1000`` (MAISI's ``num_train_timesteps``), so the
sinusoidal time embedding covers the same range as MAISI's. It predicts ``v = x_0 - eps``
(:mod:`wsnodule_core.flow.rectified_flow` fixes the conventions).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from wsnodule_core.errors import ModelConfigError
from wsnodule_core.training.result import config_from_dict

PRESETS = ("compact", "gpu")


@dataclass(frozen=True)
class VelocityConfig:
    """Architecture of the velocity UNet (saved in every prior checkpoint).

    ``channels`` per resolution level (``len(channels) - 1`` halvings, so a patch edge must be a
    multiple of ``2 ** (len(channels) - 1)``); ``attention`` per level (self-attention blocks);
    ``patch_size`` is the cubic patch edge the model is meant for (the network itself is fully
    convolutional). Presets: :meth:`compact` (CPU) and :meth:`gpu`.
    """

    channels: tuple[int, ...] = (16, 32, 64)
    num_res_blocks: int = 1
    attention: tuple[bool, ...] = (False, False, False)
    norm_num_groups: int = 8
    num_head_channels: int = 32
    in_channels: int = 1
    patch_size: int = 32
    time_scale: float = 1000.0
    flash_attention: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        object.__setattr__(self, "attention", tuple(bool(a) for a in self.attention))
        if not self.channels or any(c < 1 for c in self.channels):
            raise ModelConfigError(f"channels must be positive integers, got {self.channels!r}.")
        if len(self.attention) != len(self.channels):
            raise ModelConfigError(f"attention needs one flag per level ({len(self.channels)}), "
                                   f"got {self.attention!r}.")
        if self.norm_num_groups < 1 or any(c % self.norm_num_groups for c in self.channels):
            raise ModelConfigError(f"every channel count {self.channels} must be a multiple of "
                                   f"norm_num_groups={self.norm_num_groups}.")
        for name in ("num_res_blocks", "num_head_channels", "in_channels", "patch_size"):
            if int(getattr(self, name)) < 1:
                raise ModelConfigError(f"{name} must be at least 1, got {getattr(self, name)!r}.")
        if self.patch_size % self.divisor:
            raise ModelConfigError(f"patch_size {self.patch_size} must be a multiple of {self.divisor} "
                                   f"({len(self.channels) - 1} halvings).")
        if not self.time_scale > 0:
            raise ModelConfigError(f"time_scale must be positive, got {self.time_scale!r}.")

    @property
    def divisor(self) -> int:
        """Patch edges must be multiples of this."""
        return 2 ** (len(self.channels) - 1)

    @classmethod
    def compact(cls) -> "VelocityConfig":
        """CPU-sized: 3 levels (16, 32, 64), one residual block, no attention, 32^3 patches
        (1.75 M weights)."""
        return cls()

    @classmethod
    def gpu(cls) -> "VelocityConfig":
        """GPU-sized: 4 levels (64, 128, 256, 256), two residual blocks, attention on the two coarsest
        levels (16^3 and 8^3 tokens at 64^3 input, flash attention), 64^3 patches."""
        return cls(channels=(64, 128, 256, 256), num_res_blocks=2, attention=(False, False, True, True),
                   norm_num_groups=32, num_head_channels=64, patch_size=64, flash_attention=True)

    @classmethod
    def preset(cls, name: str) -> "VelocityConfig":
        """The named preset (``PRESETS``)."""
        if name not in PRESETS:
            raise ModelConfigError(f"unknown velocity preset {name!r}; choose one of {list(PRESETS)}.")
        return getattr(cls, name)()

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "VelocityConfig":
        return config_from_dict(cls, data)


class VelocityUNet(nn.Module):
    """``forward(x, t) -> v``: x (B, C, D, H, W), t a float or (B,) tensor in [0, 1]; v has x's shape."""

    def __init__(self, config: VelocityConfig) -> None:
        super().__init__()
        from monai.networks.nets import DiffusionModelUNet

        self.config = config
        self.unet = DiffusionModelUNet(
            spatial_dims=3, in_channels=config.in_channels, out_channels=config.in_channels,
            num_res_blocks=config.num_res_blocks, channels=config.channels,
            attention_levels=config.attention, norm_num_groups=config.norm_num_groups,
            num_head_channels=config.num_head_channels, use_flash_attention=config.flash_attention)

    def forward(self, x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        if x.ndim != 5 or x.shape[1] != self.config.in_channels:
            raise ModelConfigError(f"the velocity model takes (batch, {self.config.in_channels}, z, y, x) "
                                   f"patches, got {tuple(x.shape)}.")
        bad = [s for s in x.shape[2:] if s % self.config.divisor]
        if bad:
            raise ModelConfigError(f"patch shape {tuple(x.shape[2:])}: every edge must be a multiple of "
                                   f"{self.config.divisor}; crop or pad the patch.")
        t = torch.as_tensor(t, dtype=torch.float32, device=x.device)
        t = t.expand(x.shape[0]) if t.ndim == 0 else t.reshape(-1)
        return self.unet(x, t * self.config.time_scale)


def build_velocity_model(config: VelocityConfig | str = "compact") -> VelocityUNet:
    """A fresh velocity UNet for ``config`` (a :class:`VelocityConfig` or a preset name). The output
    layer starts at zero (MONAI's choice), so a fresh model predicts v = 0."""
    if isinstance(config, str):
        config = VelocityConfig.preset(config)
    return VelocityUNet(config)
