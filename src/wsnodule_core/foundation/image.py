"""A CT slice (or a crop of one) as LiteMedSAM's input: windowed, square pixels, letterboxed to 256 px.

MedSAM's convention: the image's longer side is resized to 256 px, the image scaled to [0, 1] by its
own minimum and maximum, and padded at the bottom and right to 256 x 256; three equal channels.
Before that, CT values are clipped to ``window`` (HU) and pixels made square at the finer of the two
in-plane spacings, so an anisotropic slice is not squashed. :class:`Letterbox` maps coordinates and
masks between the slice and the 256-px input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from wsnodule_core.errors import InvalidVolumeError
from wsnodule_core.foundation.lite_medsam import IMAGE_SIZE

#: The CT window (HU) of the model's input: a lung window (level -450, width 1400), which shows
#: parenchyma, vessels and solid and ground-glass nodules apart.
MEDSAM_WINDOW = (-1150.0, 250.0)


@dataclass(frozen=True)
class Letterbox:
    """A ``(height, width)`` slice with pixel ``spacing`` (y, x) mm placed in the model's square input:
    resampled to square pixels and scaled by ``scale`` (input px per slice px, per axis), then padded."""

    height: int
    width: int
    scale_yx: tuple[float, float]
    size: int = IMAGE_SIZE

    @property
    def content(self) -> tuple[int, int]:
        """The (rows, columns) of the input the slice fills (the rest is padding)."""
        return (max(1, round(self.height * self.scale_yx[0])), max(1, round(self.width * self.scale_yx[1])))

    def box_to_input(self, box_yx: Sequence[float]) -> np.ndarray:
        """A slice box ``(y0, x0, y1, x1)`` (pixel indices, end exclusive) as the prompt ``(x0, y0, x1, y1)``
        in input pixels."""
        y0, x0, y1, x1 = (float(v) for v in box_yx)
        sy, sx = self.scale_yx
        return np.array([x0 * sx, y0 * sy, x1 * sx, y1 * sy], np.float32)

    def logits_to_slice(self, logits: torch.Tensor) -> np.ndarray:
        """The decoder's logits (any square size, covering the input) on the slice's pixels (float32)."""
        logits = logits.reshape(1, 1, *logits.shape[-2:]).float()
        full = F.interpolate(logits, size=(self.size, self.size), mode="bilinear", align_corners=False)
        rows, cols = self.content
        inside = full[..., :rows, :cols]
        back = F.interpolate(inside, size=(self.height, self.width), mode="bilinear", align_corners=False)
        return back[0, 0].cpu().numpy()

    def mask_from_logits(self, logits: torch.Tensor) -> np.ndarray:
        """The decoder's logits (any square size, covering the input) as a boolean mask of the slice."""
        return self.logits_to_slice(logits) > 0


def to_model_image(slice_hu: np.ndarray, spacing_yx: Sequence[float] = (1.0, 1.0), *,
                   window: Sequence[float] = MEDSAM_WINDOW, size: int = IMAGE_SIZE) -> tuple[torch.Tensor, Letterbox]:
    """``slice_hu`` (rows, columns) HU as a ``(3, size, size)`` float32 input and its letterbox."""
    array = np.asarray(slice_hu, np.float32)
    if array.ndim != 2 or min(array.shape) < 1:
        raise InvalidVolumeError(f"a slice for LiteMedSAM is a 2D array, got shape {array.shape}.")
    sy, sx = (float(s) for s in spacing_yx)
    if not (sy > 0 and sx > 0):
        raise InvalidVolumeError(f"pixel spacing must be positive, got {tuple(spacing_yx)}.")
    lo, hi = (float(w) for w in window)
    height_mm, width_mm = array.shape[0] * sy, array.shape[1] * sx
    factor = size / max(height_mm, width_mm)  # input px per mm: the longer side fills the input
    scale = (sy * factor, sx * factor)
    letterbox = Letterbox(array.shape[0], array.shape[1], scale, size)
    windowed = torch.from_numpy(np.clip((array - lo) / (hi - lo), 0.0, 1.0))[None, None]
    resized = F.interpolate(windowed, size=letterbox.content, mode="bilinear", align_corners=False,
                            antialias=True)[0, 0]
    low, high = resized.min(), resized.max()
    resized = (resized - low) / torch.clamp(high - low, min=1e-8)
    image = torch.zeros((size, size), dtype=torch.float32)
    image[: resized.shape[0], : resized.shape[1]] = resized
    return image.expand(3, size, size).contiguous(), letterbox


def to_model_input(hu: torch.Tensor, *, window: Sequence[float] = MEDSAM_WINDOW,
                   size: int = IMAGE_SIZE) -> torch.Tensor:
    """Square slices ``(N, H, H)`` of HU as the model's ``(N, 3, size, size)``, differentiable end to end
    (for guidance: a gradient on the input reaches every voxel of the slices). The same conversion as
    :func:`to_model_image` for square slices of square pixels, batched on the tensor's device."""
    if hu.ndim != 3 or hu.shape[1] != hu.shape[2]:
        raise InvalidVolumeError(f"to_model_input takes square slices (N, H, H), got {tuple(hu.shape)}.")
    lo, hi = (float(w) for w in window)
    windowed = torch.clamp((hu.float() - lo) / (hi - lo), 0.0, 1.0)[:, None]
    resized = F.interpolate(windowed, size=(size, size), mode="bilinear", align_corners=False,
                            antialias=hu.shape[1] > size)
    low = resized.amin(dim=(2, 3), keepdim=True)
    high = resized.amax(dim=(2, 3), keepdim=True)
    return ((resized - low) / torch.clamp(high - low, min=1e-8)).expand(-1, 3, -1, -1)
