"""MAISI-v2 (``rflow-ct``) as the rectified-flow prior: its networks, local weights, and an adapter.

NVIDIA's MAISI-v2 CT generator (NV-Generate-CT, weights ``diff_unet_3d_rflow-ct.pt`` and
``autoencoder_v1.pt``) is a latent rectified flow: an ``AutoencoderKlMaisi`` (4x spatial compression
to 4 latent channels) and a ``DiffusionModelUNetMaisi`` that takes the time, the voxel spacing and
a modality class (CT = 1), trained with MONAI's ``RFlowScheduler``. This module builds both networks
with MONAI's classes (:class:`MaisiConfig`, preset ``rflow-ct`` = the published architecture),
loads LOCAL weight files (:func:`load_maisi`; nothing is ever downloaded) and wraps them in
:class:`MaisiPrior`, which has the velocity model's interface (``prior(z, t) -> v``), so
:func:`~wsnodule_core.flow.rectified_flow.integrate`, ``invert`` and the guidance hooks run on
it unchanged, in latent space:

``x`` (B, 1, z, y, x) in [0, 1]  --encode-->  ``z0 = scale_factor * mu(x)`` (B, 4, X/4, Y/4, Z/4)
--invert / guided integrate-->  ``z0'``  --decode-->  ``x' = D(z0' / scale_factor)`` in [0, 1].

Conventions, checked against MONAI (tests): MAISI's timestep is ``T t`` (T = 1000, float: the
``rflow-ct`` scheduler has ``use_discrete_timesteps = false``); its UNet predicts
``v = x0 - eps`` (training target ``images - noise``), the package's own convention, so no sign
change; ``RFlowScheduler.step`` (``x + v (T t - T t') / T``) is our Euler step. The spacing input
is the image voxel size in mm times 100 (``spacing * 1e2``), ordered as MAISI's array axes.
MAISI's arrays are (x, y, z) in RAS orientation (``Orientationd(axcodes="RAS")``); with
``layout="zyx-lps"`` (default) the adapter takes the library's (z, y, x) patches with the identity
LPS direction and reorients them (transpose, flip x and y) on the way in and back on the way out.
Intensities: HU [-1000, 1000] -> [0, 1], clipped (MAISI's ``ScaleIntensityRanged``; the same
mapping as the library's own prior), :meth:`MaisiConfig.to_model` / :meth:`MaisiConfig.to_hu`.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from wsnodule_core.errors import CheckpointError, ModelConfigError
from wsnodule_core.flow.rectified_flow import MAISI_T, time_grid, to_maisi_timesteps
from wsnodule_core.training.device import choose_device
from wsnodule_core.training.result import config_from_dict

PRESETS = ("rflow-ct", "tiny")
LAYOUTS = ("zyx-lps", "maisi")
#: MAISI's modality classes (``configs/modality_mapping.json``): 0 unknown (the unconditional class
#: of classifier-free guidance), 1 CT, 2 CT without contrast, 3 CT with contrast, 8+ MRI.
MODALITY_CT = 1
#: MAISI feeds spacing (mm) and body-region one-hot vectors to the UNet multiplied by 100.
SPACING_SCALE = 100.0
#: The chest as MAISI's body-region one-hot vector (head/neck, chest, abdomen, lower body); only
#: used by UNets built with ``include_body_region`` (MAISI-v1 ``ddpm-ct``; not ``rflow-ct``).
CHEST_REGION = (0.0, 1.0, 0.0, 0.0)
UNET_FILE = "diff_unet_3d_rflow-ct.pt"
AUTOENCODER_FILE = "autoencoder_v1.pt"


@dataclass(frozen=True)
class MaisiConfig:
    """The MAISI networks' architecture and the latent flow's constants.

    Autoencoder (``AutoencoderKlMaisi``): ``vae_channels`` per level (``len - 1`` halvings: the
    spatial compression), ``vae_res_blocks`` per level, ``latent_channels``, GroupNorm groups and
    eps. ``vae_num_splits`` / ``vae_dim_split`` / ``vae_norm_float16`` are MAISI's memory options
    (the published config splits convolutions 4 ways along axis 1 and keeps norms in float16 for
    512^3 volumes on a GPU); they do not change the weights, and the defaults (no split,
    float32; float16 norms fail on the CPU) are exact for patches.

    Diffusion UNet (``DiffusionModelUNetMaisi``): ``unet_channels`` and ``unet_attention`` per
    level, ``unet_head_channels`` per level (0 where there is no attention), ``unet_res_blocks``,
    ``resblock_updown``, ``include_fc``, ``num_class_embeds`` (the modality embedding; None: no
    class input), ``include_spacing_input``, ``include_body_region``. ``use_flash_attention``
    (published: true) needs CUDA; it does not change the weights.

    Flow: ``num_train_timesteps`` (MAISI's T), ``scale_factor`` the latent scale (None: read from
    the UNet checkpoint's ``scale_factor``, as MAISI stores it), ``modality`` the class fed to the
    UNet (1 = CT), ``hu_window`` mapped to [0, 1], ``patch_size`` the cubic image patch the prior
    is meant for (every image edge must be a multiple of :attr:`divisor`).
    """

    latent_channels: int = 4
    vae_channels: tuple[int, ...] = (64, 128, 256)
    vae_res_blocks: tuple[int, ...] = (2, 2, 2)
    vae_norm_groups: int = 32
    vae_norm_eps: float = 1e-6
    vae_num_splits: int = 1
    vae_dim_split: int = 1
    vae_norm_float16: bool = False
    unet_channels: tuple[int, ...] = (64, 128, 256, 512)
    unet_attention: tuple[bool, ...] = (False, False, True, True)
    unet_head_channels: tuple[int, ...] = (0, 0, 32, 32)
    unet_res_blocks: int = 2
    unet_norm_groups: int = 32
    unet_norm_eps: float = 1e-6
    resblock_updown: bool = True
    include_fc: bool = True
    num_class_embeds: int | None = 128
    include_spacing_input: bool = True
    include_body_region: bool = False
    use_flash_attention: bool = False
    num_train_timesteps: int = MAISI_T
    scale_factor: float | None = None
    modality: int = MODALITY_CT
    hu_window: tuple[float, float] = (-1000.0, 1000.0)
    patch_size: int = 64

    def __post_init__(self) -> None:
        for name in ("vae_channels", "vae_res_blocks", "unet_channels", "unet_head_channels"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        object.__setattr__(self, "unet_attention", tuple(bool(a) for a in self.unet_attention))
        object.__setattr__(self, "hu_window", tuple(float(v) for v in self.hu_window))
        if len(self.vae_channels) < 2 or len(self.vae_res_blocks) != len(self.vae_channels):
            raise ModelConfigError(f"vae_channels needs at least two levels and vae_res_blocks one value per "
                                   f"level, got {self.vae_channels} and {self.vae_res_blocks}.")
        levels = len(self.unet_channels)
        if levels < 1 or len(self.unet_attention) != levels or len(self.unet_head_channels) != levels:
            raise ModelConfigError(f"unet_attention and unet_head_channels need one value per UNet level "
                                   f"({levels}), got {self.unet_attention} and {self.unet_head_channels}.")
        for groups, channels, what in ((self.vae_norm_groups, self.vae_channels, "vae"),
                                       (self.unet_norm_groups, self.unet_channels, "unet")):
            if groups < 1 or any(c < 1 or c % groups for c in channels):
                raise ModelConfigError(f"every {what}_channels value {channels} must be a positive "
                                       f"multiple of {what}_norm_groups={groups}.")
        for attention, heads in zip(self.unet_attention, self.unet_head_channels):
            if attention and heads < 1:
                raise ModelConfigError(f"a level with attention needs unet_head_channels >= 1, got "
                                       f"{self.unet_head_channels} for attention {self.unet_attention}.")
        for name in ("latent_channels", "unet_res_blocks", "vae_num_splits", "num_train_timesteps",
                     "patch_size"):
            if int(getattr(self, name)) < 1:
                raise ModelConfigError(f"{name} must be at least 1, got {getattr(self, name)!r}.")
        if any(b < 1 for b in self.vae_res_blocks):
            raise ModelConfigError(f"vae_res_blocks must be at least 1, got {self.vae_res_blocks}.")
        if self.vae_dim_split not in (0, 1, 2):
            raise ModelConfigError(f"vae_dim_split must be 0, 1 or 2, got {self.vae_dim_split!r}.")
        if self.num_class_embeds is not None and not 0 <= self.modality < self.num_class_embeds:
            raise ModelConfigError(f"modality must lie in [0, num_class_embeds={self.num_class_embeds}), "
                                   f"got {self.modality!r}.")
        if self.scale_factor is not None and not self.scale_factor > 0:
            raise ModelConfigError(f"scale_factor must be positive (or None: from the checkpoint), "
                                   f"got {self.scale_factor!r}.")
        if len(self.hu_window) != 2 or not self.hu_window[0] < self.hu_window[1]:
            raise ModelConfigError(f"hu_window must be (low, high) with low < high, got {self.hu_window!r}.")
        if self.patch_size % self.divisor:
            raise ModelConfigError(f"patch_size {self.patch_size} must be a multiple of {self.divisor} "
                                   f"(compression {self.compression} x {self.latent_divisor} UNet halvings).")

    @property
    def compression(self) -> int:
        """The autoencoder's spatial compression (image edge / latent edge): 4 for ``rflow-ct``."""
        return 2 ** (len(self.vae_channels) - 1)

    @property
    def latent_divisor(self) -> int:
        """Latent edges must be multiples of this (the UNet's halvings)."""
        return 2 ** (len(self.unet_channels) - 1)

    @property
    def divisor(self) -> int:
        """Image patch edges must be multiples of this (32 for ``rflow-ct``)."""
        return self.compression * self.latent_divisor

    @classmethod
    def rflow_ct(cls, **changes) -> "MaisiConfig":
        """The published MAISI-v2 ``rflow-ct`` architecture (NV-Generate-CTMR
        ``configs/config_network_rflow.json``): UNet 180.5 M weights, autoencoder 20.9 M."""
        return cls(**changes)

    @classmethod
    def tiny(cls, **changes) -> "MaisiConfig":
        """The same structure at toy size, for tests: autoencoder (8, 16, 16) (4x), UNet
        (8, 16, 16, 32) with attention on the two coarsest levels; 32^3 patches."""
        base = dict(vae_channels=(8, 16, 16), vae_res_blocks=(1, 1, 1), vae_norm_groups=8,
                    unet_channels=(8, 16, 16, 32), unet_head_channels=(0, 0, 8, 8), unet_res_blocks=1,
                    unet_norm_groups=8, patch_size=32)
        return cls(**{**base, **changes})

    @classmethod
    def preset(cls, name: str, **changes) -> "MaisiConfig":
        """The named preset (``PRESETS``: "rflow-ct", "tiny")."""
        if name not in PRESETS:
            raise ModelConfigError(f"unknown MAISI preset {name!r}; choose one of {list(PRESETS)}.")
        return (cls.rflow_ct if name == "rflow-ct" else cls.tiny)(**changes)

    def to_model(self, hu):
        """HU (numpy or torch) -> MAISI's intensities: ``hu_window`` onto [0, 1], clipped."""
        low, high = self.hu_window
        return ((hu - low) / (high - low)).clip(0.0, 1.0)

    def to_hu(self, x):
        """MAISI's intensities -> HU (inverse of :meth:`to_model` inside the window)."""
        low, high = self.hu_window
        return x * (high - low) + low

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "MaisiConfig":
        return config_from_dict(cls, data)


# --- the networks ----------------------------------------------------------------------------------


def build_maisi_unet(config: MaisiConfig) -> nn.Module:
    """MONAI's ``DiffusionModelUNetMaisi`` for ``config`` (fresh weights; MONAI zeroes the output
    convolution, so an untrained UNet predicts v = 0)."""
    from monai.apps.generation.maisi.networks.diffusion_model_unet_maisi import DiffusionModelUNetMaisi

    if config.use_flash_attention and not torch.cuda.is_available():
        raise ModelConfigError("use_flash_attention needs CUDA; build with use_flash_attention=False on "
                               "this machine (the weights are the same).")
    return DiffusionModelUNetMaisi(
        spatial_dims=3, in_channels=config.latent_channels, out_channels=config.latent_channels,
        num_res_blocks=config.unet_res_blocks, num_channels=config.unet_channels,
        attention_levels=config.unet_attention, norm_num_groups=config.unet_norm_groups,
        norm_eps=config.unet_norm_eps, resblock_updown=config.resblock_updown,
        num_head_channels=config.unet_head_channels, num_class_embeds=config.num_class_embeds,
        include_fc=config.include_fc, use_flash_attention=config.use_flash_attention,
        include_top_region_index_input=config.include_body_region,
        include_bottom_region_index_input=config.include_body_region,
        include_spacing_input=config.include_spacing_input)


def build_maisi_autoencoder(config: MaisiConfig) -> nn.Module:
    """MONAI's ``AutoencoderKlMaisi`` for ``config`` (fresh weights; no attention, no non-local
    attention, interpolation upsampling, as published)."""
    from monai.apps.generation.maisi.networks.autoencoderkl_maisi import AutoencoderKlMaisi

    return AutoencoderKlMaisi(
        spatial_dims=3, in_channels=1, out_channels=1, latent_channels=config.latent_channels,
        num_channels=config.vae_channels, num_res_blocks=config.vae_res_blocks,
        norm_num_groups=config.vae_norm_groups, norm_eps=config.vae_norm_eps,
        attention_levels=(False,) * len(config.vae_channels), with_encoder_nonlocal_attn=False,
        with_decoder_nonlocal_attn=False, use_checkpointing=False, use_convtranspose=False,
        num_splits=config.vae_num_splits, dim_split=config.vae_dim_split,
        norm_float16=config.vae_norm_float16, save_mem=False)


# --- layout ---------------------------------------------------------------------------------------


def to_maisi_layout(x: torch.Tensor) -> torch.Tensor:
    """(B, C, z, y, x) with LPS axes -> MAISI's (B, C, x, y, z) in RAS: transpose, flip x and y."""
    return x.permute(0, 1, 4, 3, 2).flip(2, 3)


def from_maisi_layout(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`to_maisi_layout`."""
    return x.flip(2, 3).permute(0, 1, 4, 3, 2)


def maisi_time_grid(t_start: float = 1.0, t_end: float = 0.0, n_steps: int = 30,
                    latent_shape: Sequence[int] = (16, 16, 16), *,
                    base_numel: int = 32 ** 3) -> tuple[float, ...]:
    """MAISI's sampling times for ``integrate(..., times=...)``: an even grid from ``t_start`` to
    ``t_end``, each time moved by ``RFlowScheduler``'s resolution shift
    ``t' = r t / (1 + (r - 1) t)`` with ``r = (prod(latent_shape) / base_numel) ** (1/3)``
    (``use_timestep_transform``; ``r`` < 1 for latents under 32^3, e.g. 0.5 for a 64^3 patch's
    16^3 latent, which spends more steps near the clean end). ``t_start = 1``, ``t_end = 0``
    gives MAISI's ``set_timesteps`` grid divided by T, followed by 0 (without its float16 rounding)."""
    numel = 1
    for edge in latent_shape:
        numel *= int(edge)
    ratio = (numel / base_numel) ** (1.0 / len(latent_shape))
    return tuple(ratio * t / (1 + (ratio - 1) * t) for t in time_grid(t_start, t_end, n_steps))


# --- the adapter ----------------------------------------------------------------------------------


class MaisiPrior(nn.Module):
    """MAISI's autoencoder and UNet as a latent velocity field with the velocity model's interface.

    ``prior(z, t)`` / :meth:`velocity` -> ``v = z0 - eps`` for latents ``z`` (B, C, X, Y, Z) and
    times ``t`` in [0, 1] (a float or (B,)); :meth:`encode` / :meth:`decode` go between images
    in [0, 1] and scaled latents. The UNet's spacing input is held on the adapter
    (:meth:`set_spacing`: the image voxel size in mm, one triple or one per batch item, in the
    order of ``layout``'s axes); the modality class is ``modality`` (default the config's, CT);
    ``cfg_scale`` > 0 applies MAISI's classifier-free guidance ``v_u + s (v_c - v_u)`` with the
    unconditional class 0 (0: off, MAISI's ``rflow-ct`` default). Weights are frozen
    (``requires_grad`` False) but gradients flow to the inputs, for guidance.
    """

    def __init__(self, unet: nn.Module, autoencoder: nn.Module, config: MaisiConfig, scale_factor: float,
                 *, spacing: Sequence[float] | torch.Tensor = (1.0, 1.0, 1.0), layout: str = "zyx-lps",
                 modality: int | None = None, cfg_scale: float = 0.0) -> None:
        super().__init__()
        if layout not in LAYOUTS:
            raise ModelConfigError(f"layout must be one of {LAYOUTS}, got {layout!r}.")
        if not float(scale_factor) > 0:
            raise ModelConfigError(f"scale_factor must be positive, got {scale_factor!r}.")
        if cfg_scale < 0:
            raise ModelConfigError(f"cfg_scale must be >= 0 (0: off), got {cfg_scale!r}.")
        if cfg_scale > 0 and config.num_class_embeds is None:
            raise ModelConfigError("cfg_scale needs a UNet with a class input (num_class_embeds).")
        if modality is not None and config.num_class_embeds is not None \
                and not 0 <= int(modality) < config.num_class_embeds:
            raise ModelConfigError(f"modality must lie in [0, {config.num_class_embeds}) (1 = CT), "
                                   f"got {modality!r}.")
        self.unet = unet
        self.autoencoder = autoencoder
        self.config = config
        self.scale_factor = float(scale_factor)
        self.layout = layout
        self.modality = config.modality if modality is None else int(modality)
        self.cfg_scale = float(cfg_scale)
        self.region = CHEST_REGION
        self.spacing = torch.ones(3)
        self.set_spacing(spacing)

    # -- conditioning --

    def set_spacing(self, spacing: Sequence[float] | torch.Tensor) -> None:
        """The image voxel size in mm: (3,) for every patch or (B, 3) one per patch, ordered as the
        images given to :meth:`encode` ((z, y, x) with ``layout="zyx-lps"``, MAISI's (x, y, z)
        with ``layout="maisi"``)."""
        value = torch.as_tensor(spacing, dtype=torch.float32).detach().cpu()
        if value.ndim not in (1, 2) or value.shape[-1] != 3 or not bool(torch.all(value > 0)):
            raise ModelConfigError(f"spacing must be three positive sizes in mm, or (batch, 3) of them; "
                                   f"got {tuple(value.shape)}: {value.tolist()}.")
        self.spacing = value

    def spacing_input(self, batch: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """The UNet's spacing tensor (batch, 3): MAISI's (x, y, z) order, mm x 100."""
        value = self.spacing.flip(-1) if self.layout == "zyx-lps" else self.spacing
        if value.ndim == 1:
            value = value.expand(batch, 3)
        elif value.shape[0] != batch:
            raise ModelConfigError(f"the adapter holds {value.shape[0]} spacings but the batch has {batch} "
                                   "patches; call set_spacing with one triple or one per patch.")
        return (value * SPACING_SCALE).to(device=device, dtype=dtype)

    def unet_inputs(self, z: torch.Tensor, t: torch.Tensor | float) -> dict:
        """The keyword arguments of MAISI's UNet for latents ``z`` at times ``t`` in [0, 1]."""
        batch = z.shape[0]
        t = torch.as_tensor(t, dtype=torch.float32, device=z.device)
        t = t.expand(batch) if t.ndim == 0 else t.reshape(-1)
        inputs = {"x": z, "timesteps": to_maisi_timesteps(t, self.config.num_train_timesteps).to(z.device)}
        if self.config.include_spacing_input:
            inputs["spacing_tensor"] = self.spacing_input(batch, z.device, z.dtype)
        if self.config.num_class_embeds is not None:
            inputs["class_labels"] = torch.full((batch,), self.modality, dtype=torch.long, device=z.device)
        if self.config.include_body_region:
            region = torch.tensor(self.region, dtype=z.dtype, device=z.device) * SPACING_SCALE
            inputs["top_region_index_tensor"] = region.expand(batch, 4)
            inputs["bottom_region_index_tensor"] = region.expand(batch, 4)
        return inputs

    # -- the three maps --

    def velocity(self, z: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """``v = z0 - eps`` at latents ``z`` (B, C, X, Y, Z) and times ``t`` in [0, 1]."""
        self._check_latent(z)
        inputs = self.unet_inputs(z, t)
        if self.cfg_scale == 0:
            return self.unet(**inputs)
        doubled = {k: torch.cat([v, torch.zeros_like(v) if k == "class_labels" else v])
                   for k, v in inputs.items()}
        conditional, unconditional = self.unet(**doubled).chunk(2)
        return unconditional + self.cfg_scale * (conditional - unconditional)

    def forward(self, z: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        return self.velocity(z, t)

    def encode(self, x: torch.Tensor, *, sample: bool = False,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Images ``x`` (B, 1, ...) in [0, 1] (in ``layout``) -> scaled latents
        ``scale_factor * mu`` (B, latent_channels, edges / compression), in MAISI's layout.
        ``sample`` draws ``mu + sigma eps`` instead (MAISI's ``encode_stage_2_inputs``, which its
        training used); the mean is deterministic, which inversion wants."""
        if x.ndim != 5 or x.shape[1] != 1:
            raise ModelConfigError(f"encode takes (batch, 1, z, y, x) images in [0, 1], "
                                   f"got {tuple(x.shape)}.")
        bad = [s for s in x.shape[2:] if s % self.config.divisor]
        if bad:
            raise ModelConfigError(f"image shape {tuple(x.shape[2:])}: every edge must be a multiple of "
                                   f"{self.config.divisor} (autoencoder x{self.config.compression}, UNet "
                                   f"{self.config.latent_divisor}); crop or pad the patch.")
        if self.layout == "zyx-lps":
            x = to_maisi_layout(x)
        mu, sigma = self.autoencoder.encode(x)
        if sample:
            device = generator.device if generator is not None else mu.device
            eps = torch.randn(mu.shape, generator=generator, device=device, dtype=torch.float32)
            mu = mu + sigma * eps.to(device=mu.device, dtype=mu.dtype)
        return mu * self.scale_factor

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> images (B, 1, ...) in [0, 1] (not clipped), in ``layout``."""
        self._check_latent(z, divisible=False)
        x = self.autoencoder.decode(z / self.scale_factor)
        return from_maisi_layout(x) if self.layout == "zyx-lps" else x

    def _check_latent(self, z: torch.Tensor, divisible: bool = True) -> None:
        if z.ndim != 5 or z.shape[1] != self.config.latent_channels:
            raise ModelConfigError(f"MAISI latents are (batch, {self.config.latent_channels}, X, Y, Z), "
                                   f"got {tuple(z.shape)}; encode the images first.")
        if divisible and any(s % self.config.latent_divisor for s in z.shape[2:]):
            raise ModelConfigError(f"latent shape {tuple(z.shape[2:])}: every edge must be a multiple of "
                                   f"{self.config.latent_divisor} (images: of {self.config.divisor}).")


# --- loading local weights ------------------------------------------------------------------------


def _read(path, what: str, argument: str, default_name: str, weights_only: bool) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"the MAISI {what} weights file {str(path)!r} does not exist. Pass "
                              f"{argument}= the path of your local copy of MAISI-v2's {default_name} "
                              "(NVIDIA NV-Generate-CT, downloaded by you; wsnodule never downloads it).")
    try:
        data = torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as error:  # pickle, zip and torch errors alike
        from wsnodule_core.training.checkpoint import load_error_text

        raise CheckpointError(f"{path}: cannot read it as a PyTorch weights file ({load_error_text(error)}).") \
            from error
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: holds a {type(data).__name__}, not a state dict; give the {what} "
                              f"weights ({default_name}).")
    return data


def _state_dict(data: dict, path) -> dict:
    for key in ("unet_state_dict", "state_dict", "model"):
        if isinstance(data.get(key), dict):
            data = data[key]
            break
    state = {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}
    if state and all(k.startswith("module.") for k in state):  # saved from DDP
        state = {k[len("module."):]: v for k, v in state.items()}
    if not state:
        raise CheckpointError(f"{path}: no weights found (keys {sorted(data)[:8]}); expected a state dict, "
                              "or a dict with 'unet_state_dict' as MAISI writes it.")
    return state


def _load_into(model: nn.Module, state: dict, path, what: str, name: str, strict: bool = True) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected] if strict else []
    wrong = [f"{k} {tuple(state[k].shape)} (model: {tuple(v.shape)})" for k, v in expected.items()
             if k in state and state[k].shape != v.shape]
    if missing or unexpected or wrong:
        parts = [f"{len(missing)} missing (e.g. {missing[:3]})" if missing else "",
                 f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})" if unexpected else "",
                 f"{len(wrong)} of another shape (e.g. {wrong[:2]})" if wrong else ""]
        raise CheckpointError(
            f"{path}: its weights do not fit the {what} ({name}) of this MaisiConfig: "
            + "; ".join(p for p in parts if p) + f". Expected {len(expected)} tensors named like "
            f"{list(expected)[:4]}. Give the matching file, or the MaisiConfig of the architecture the "
            "weights were trained with (preset 'rflow-ct' for MAISI-v2).")
    model.load_state_dict({k: v for k, v in state.items() if k in expected})


def load_maisi(unet_weights: str | os.PathLike, autoencoder_weights: str | os.PathLike,
               config: MaisiConfig | str | None = None, device: str | torch.device | None = None, *,
               layout: str = "zyx-lps", spacing: Sequence[float] = (1.0, 1.0, 1.0),
               weights_only: bool = True, strict: bool = True) -> MaisiPrior:
    """A :class:`MaisiPrior` from LOCAL weight files (never downloads).

    Parameters
    ----------
    unet_weights
        MAISI-v2's diffusion UNet file (``diff_unet_3d_rflow-ct.pt``): a dict with
        ``unet_state_dict`` (and ``scale_factor``, ``num_train_timesteps``) as MAISI saves it, or
        a plain state dict of ``DiffusionModelUNetMaisi``.
    autoencoder_weights
        The autoencoder file (``autoencoder_v1.pt``): a plain state dict of
        ``AutoencoderKlMaisi`` (or one under ``unet_state_dict``, which MAISI also accepts).
    config
        The architecture (default the ``rflow-ct`` preset; a preset name is accepted). Its
        ``scale_factor``, when set, replaces the checkpoint's.
    device
        Where the networks go ("auto", "cpu", "cuda", ... or a ``torch.device``; default CPU).
    layout, spacing
        As :class:`MaisiPrior`.
    weights_only
        ``torch.load``'s safe mode (tensors and plain containers only); set False only for a
        file you trust that holds other objects.
    strict
        False ignores tensors the networks do not have (MAISI's own loader reads the UNet with
        ``strict=False``); missing or reshaped tensors are refused either way, since a missing
        weight would stay at its random start.

    Raises
    ------
    CheckpointError
        A file is missing or unreadable, its keys or shapes do not fit ``config``, there is no
        scale factor, or its ``num_train_timesteps`` differs from the config's.
    """
    if config is None:
        config = MaisiConfig.rflow_ct()
    elif isinstance(config, str):
        config = MaisiConfig.preset(config)
    unet_data = _read(unet_weights, "diffusion UNet", "unet_weights", UNET_FILE, weights_only)
    vae_data = _read(autoencoder_weights, "autoencoder", "autoencoder_weights", AUTOENCODER_FILE,
                     weights_only)

    steps = unet_data.get("num_train_timesteps")
    if steps is not None and int(steps) != config.num_train_timesteps:
        raise CheckpointError(f"{unet_weights}: trained with num_train_timesteps={int(steps)}, the config "
                              f"says {config.num_train_timesteps}; set "
                              f"MaisiConfig(num_train_timesteps={int(steps)}).")
    unet = build_maisi_unet(config)
    autoencoder = build_maisi_autoencoder(config)
    _load_into(unet, _state_dict(unet_data, unet_weights), unet_weights, "diffusion UNet",
               "DiffusionModelUNetMaisi", strict)
    _load_into(autoencoder, _state_dict(vae_data, autoencoder_weights), autoencoder_weights, "autoencoder",
               "AutoencoderKlMaisi", strict)
    scale = config.scale_factor
    if scale is None:
        stored = unet_data.get("scale_factor")
        if stored is None:
            raise CheckpointError(f"{unet_weights}: holds no 'scale_factor' (MAISI stores it with the UNet "
                                  "weights); give it as MaisiConfig(scale_factor=...).")
        scale = float(torch.as_tensor(stored).float().reshape(-1)[0])

    prior = MaisiPrior(unet, autoencoder, config, scale, spacing=spacing, layout=layout)
    prior.requires_grad_(False)
    target = torch.device("cpu") if device is None else (
        device if isinstance(device, torch.device) else choose_device(str(device)).device)
    return prior.to(target).eval()
