"""The fully supervised baseline of the NAM paper (section 3.2): a 2D U-Net on lung-centred slices.

The network is MONAI's :class:`monai.networks.nets.UNet` (1 input channel = a CT slice in
[0, 1], 1 output channel = the nodule logit; sigmoid gives the probability). The config also
fixes how a slice is cut and normalised (crop side, pixel spacing, HU window), so training and
segmentation always see the same input.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

import torch
from monai.networks.nets import UNet

from wsnodule_core.errors import ModelConfigError
from wsnodule_core.image.window import NAM_WINDOW

NORMS = ("batch", "instance", "none")


@dataclass(frozen=True)
class UNetConfig:
    """The U-Net and its input.

    ``channels``/``strides`` are MONAI's (one stride-2 down step per stride: the input side must
    be a multiple of ``2 ** len(strides)``); ``num_res_units`` residual units per level (0 = one
    plain convolution per level). ``input_size``, ``pixel_spacing_mm`` and ``window`` define the
    slice: a lung-centred ``input_size`` square crop (at ``pixel_spacing_mm``, None = the scan's
    own spacing as in the paper), HU clipped to ``window`` and scaled to [0, 1].
    Use :meth:`paper` (64..1024 channels, as Ronneberger et al.) or :meth:`compact` (CPU).
    """

    channels: tuple[int, ...] = (64, 128, 256, 512, 1024)
    strides: tuple[int, ...] = (2, 2, 2, 2)
    num_res_units: int = 2
    norm: str = "batch"
    dropout: float = 0.0
    input_size: int = 384
    pixel_spacing_mm: float | None = None
    window: tuple[float, float] = NAM_WINDOW

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        object.__setattr__(self, "strides", tuple(int(s) for s in self.strides))
        object.__setattr__(self, "window", tuple(float(w) for w in self.window))
        if len(self.channels) < 2 or any(c < 1 for c in self.channels):
            raise ModelConfigError(f"UNetConfig.channels needs at least 2 positive values, "
                                   f"got {self.channels}.")
        if len(self.strides) != len(self.channels) - 1 or any(s < 1 for s in self.strides):
            raise ModelConfigError(f"UNetConfig.strides needs len(channels) - 1 = {len(self.channels) - 1} "
                                   f"positive values, got {self.strides}.")
        if self.norm not in NORMS:
            raise ModelConfigError(f"UNetConfig.norm must be one of {NORMS}, got {self.norm!r}.")
        if not 0.0 <= self.dropout < 1.0:
            raise ModelConfigError(f"UNetConfig.dropout must lie in [0, 1), got {self.dropout}.")
        if self.num_res_units < 0:
            raise ModelConfigError(f"UNetConfig.num_res_units must be >= 0, got {self.num_res_units}.")
        if self.input_size < 1 or self.input_size % self.downsampling:
            raise ModelConfigError(f"UNetConfig.input_size must be a positive multiple of "
                                   f"{self.downsampling} (the product of the strides {self.strides}), "
                                   f"got {self.input_size}.")
        if self.pixel_spacing_mm is not None and not self.pixel_spacing_mm > 0:
            raise ModelConfigError(f"UNetConfig.pixel_spacing_mm must be positive or None, got "
                                   f"{self.pixel_spacing_mm}.")
        if not self.window[0] < self.window[1]:
            raise ModelConfigError(f"UNetConfig.window must be (low, high) HU with low < high, "
                                   f"got {self.window}.")

    @property
    def downsampling(self) -> int:
        factor = 1
        for s in self.strides:
            factor *= s
        return factor

    @classmethod
    def paper(cls, **overrides) -> "UNetConfig":
        """Paper size: 5 levels of 64..1024 channels, 384 px crops at the scan's spacing (GPU)."""
        return replace(cls(), **overrides)

    @classmethod
    def compact(cls, **overrides) -> "UNetConfig":
        """A small U-Net for the CPU: 4 levels of 8..64 channels, one residual unit per level."""
        return replace(cls(channels=(8, 16, 32, 64), strides=(2, 2, 2), num_res_units=1), **overrides)

    def to_dict(self) -> dict:
        data = asdict(self)
        return {**data, "channels": list(self.channels), "strides": list(self.strides),
                "window": list(self.window)}

    @classmethod
    def from_dict(cls, data: dict) -> "UNetConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def slice_config(self, **extra):
        """The :class:`~wsnodule_core.data.slices.SliceConfig` that cuts this model's slices."""
        from wsnodule_core.data.slices import SliceConfig

        return SliceConfig(size=self.input_size, pixel_spacing_mm=self.pixel_spacing_mm, window=self.window,
                           **extra)


class UNetSegmenter(torch.nn.Module):
    """MONAI's 2D U-Net with its :class:`UNetConfig`; ``forward`` gives logits (B, 1, H, W)."""

    def __init__(self, config: UNetConfig | None = None) -> None:
        super().__init__()
        self.config = config or UNetConfig()
        self.net = UNet(spatial_dims=2, in_channels=1, out_channels=1, channels=self.config.channels,
                        strides=self.config.strides, num_res_units=self.config.num_res_units,
                        norm=None if self.config.norm == "none" else self.config.norm,
                        dropout=self.config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 1:
            raise ModelConfigError(f"UNetSegmenter expects slices (B, 1, H, W), got shape {tuple(x.shape)}.")
        if x.shape[-1] % self.config.downsampling or x.shape[-2] % self.config.downsampling:
            raise ModelConfigError(f"UNetSegmenter: slice side {tuple(x.shape[-2:])} is not a multiple of "
                                   f"{self.config.downsampling}; crop slices to the config's input_size.")
        return self.net(x)

    def probability(self, x: torch.Tensor) -> torch.Tensor:
        """Nodule probability (B, 1, H, W) = sigmoid of the logits."""
        return torch.sigmoid(self.forward(x).float())
