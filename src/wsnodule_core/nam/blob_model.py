"""An analytic stand-in for the NAM classifier: it "activates" on bright round blobs of a given size.

Used by the tests of the segmentation (and usable for demos without a trained checkpoint): its NAM
is known in closed form, so which candidate drives the activation is known. Activation = ReLU of
(the local mean, over a disk of ``radius_px``, of a soft "dense" indicator) minus ``fill_level``:
a round blob at least ``radius_px`` in radius reaches 1 at its centre, a vessel cross-section or
a thin vessel fills a small part of the disk and stays under ``fill_level``. The map is average
pooled by ``stride`` like a CNN's coarse map; logits are ``(0, gain * (max activation - bias))``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from wsnodule_core.nam.model import MultiGapOutput


class BlobDetectorModel(torch.nn.Module):
    """Stand-in with ``forward_with_maps`` (one or more identical "branches" at strides ``strides``)."""

    def __init__(
        self,
        radius_px: int = 6,
        *,
        dense_level: float = 0.5,
        softness: float = 0.02,
        fill_level: float = 0.6,
        strides: tuple[int, ...] = (4,),
        gain: float = 40.0,
        bias: float = 0.1,
    ) -> None:
        super().__init__()
        r = int(radius_px)
        yy, xx = torch.meshgrid(torch.arange(-r, r + 1), torch.arange(-r, r + 1), indexing="ij")
        disk = ((yy**2 + xx**2) <= r * r).float()
        self.register_buffer("kernel", (disk / disk.sum())[None, None])
        self.radius, self.dense_level, self.softness = r, dense_level, softness
        self.fill_level, self.strides, self.gain, self.bias = fill_level, tuple(strides), gain, bias

    def _activation(self, x: torch.Tensor) -> torch.Tensor:
        dense = torch.sigmoid((x - self.dense_level) / self.softness)
        mean = F.conv2d(dense, self.kernel, padding=self.radius)
        return torch.relu(mean - self.fill_level) / (1.0 - self.fill_level)

    def forward_with_maps(self, x: torch.Tensor) -> MultiGapOutput:
        act = self._activation(x.float())
        maps = tuple(F.avg_pool2d(act, s, s) if s > 1 else act for s in self.strides)
        score = act.amax(dim=(1, 2, 3))
        logits = torch.stack([torch.zeros_like(score), self.gain * (score - self.bias)], dim=1)
        return MultiGapOutput(logits, maps, tuple(m[:, 0] for m in maps))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_maps(x).logits
