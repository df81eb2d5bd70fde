"""Random augmentation of training batches: 2D slices (and their masks) and exact 3D patch flips.

2D (:func:`augment_batch`, :func:`augment_pair`), on the batch's device, one resampling:
flips, a small rotation, scaling and shift are folded into one affine ``grid_sample``
(bilinear, zero padding = the low end of the window); then a random gain and offset of the
intensities, clipped to [0, 1]. Random numbers come from a CPU ``torch.Generator`` so a run
is reproducible on any device and resumable from the generator's saved state.

3D (:func:`augment_patches`): axial rot90 and flips, exact (no interpolation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentConfig:
    flip_lr: bool = True
    flip_ud: bool = False
    rotate_deg: float = 10.0
    scale: float = 0.1            # zoom drawn from [1 - scale, 1 + scale]
    shift_fraction: float = 0.08  # shift drawn from +-shift_fraction of the image side
    intensity_gain: float = 0.1   # intensities times [1 - gain, 1 + gain]
    intensity_shift: float = 0.05  # plus [-shift, +shift]


def augment_batch(x: torch.Tensor, generator: torch.Generator, config: AugmentConfig) -> torch.Tensor:
    """Augment ``x`` (B, C, H, W) in [0, 1]; the same number of random draws whatever the flags."""
    b = x.shape[0]
    u = torch.rand(b, 6, generator=generator, dtype=torch.float64)  # on the CPU
    flip_x = torch.where((u[:, 0] < 0.5) & config.flip_lr, -1.0, 1.0)
    flip_y = torch.where((u[:, 1] < 0.5) & config.flip_ud, -1.0, 1.0)
    angle = (2 * u[:, 2] - 1) * math.radians(config.rotate_deg)
    zoom = 1.0 + (2 * u[:, 3] - 1) * config.scale
    shift = (2 * u[:, 4:6] - 1) * 2 * config.shift_fraction  # grid units: the image spans [-1, 1]
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.zeros(b, 2, 3, dtype=torch.float64)
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 0, 2] = cos * flip_x, -sin * flip_y, shift[:, 0]
    theta[:, 1, 0], theta[:, 1, 1], theta[:, 1, 2] = sin * flip_x, cos * flip_y, shift[:, 1]
    grid = F.affine_grid(theta.to(device=x.device, dtype=x.dtype), list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    v = torch.rand(b, 2, generator=generator, dtype=torch.float64)
    gain = (1.0 + (2 * v[:, 0] - 1) * config.intensity_gain).to(x.device, x.dtype).view(b, 1, 1, 1)
    offset = ((2 * v[:, 1] - 1) * config.intensity_shift).to(x.device, x.dtype).view(b, 1, 1, 1)
    return (out * gain + offset).clamp_(0.0, 1.0)


def augment_pair(x: torch.Tensor, masks: torch.Tensor, generator: torch.Generator,
                 config: AugmentConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """One random affine for each image and its mask (the shared augmentation on two channels);
    the mask channel is binarised again at 0.5 after the resampling and the intensity change."""
    both = augment_batch(torch.cat([x, masks], dim=1), generator, config)
    return both[:, :1], (both[:, 1:] >= 0.5).to(masks.dtype)


def augment_patches(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random rot90 in the axial (y, x) plane and flips along x and z of a batch (B, C, D, H, W).

    Exact (no interpolation); always three draws per patch from ``generator`` (CPU)."""
    draws = torch.randint(0, 4, (x.shape[0], 3), generator=generator)
    out = []
    for patch, (k, flip_x, flip_z) in zip(x, draws.tolist()):
        patch = torch.rot90(patch, k % 4, dims=(-2, -1))
        if flip_x % 2:
            patch = torch.flip(patch, dims=(-1,))
        if flip_z % 2:
            patch = torch.flip(patch, dims=(-3,))
        out.append(patch)
    return torch.stack(out)
