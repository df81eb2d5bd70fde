"""Forward passes that give class probabilities and upsampled NAMs, on the model's own device.

Works with any model that has ``forward_with_maps(x) -> MultiGapOutput`` (see
:mod:`wsnodule_core.nam.model`); NAMs are upsampled by its ``nodule_activation_map``.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import numpy as np
import torch

from wsnodule_core.nam.model import nodule_activation_map

Branches = str | Sequence[int]


@contextmanager
def evaluating(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode and no autograd for the duration; the model's training flag is restored after."""
    was_training = bool(getattr(model, "training", False))
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


def forward_maps(
    model: torch.nn.Module, images01: torch.Tensor, branches: Branches = "all", nodule_class: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Nodule probability (B,) and NAM (B, H, W) of images ``(B, 1, H, W)`` in [0, 1].

    Call inside :func:`evaluating`; the tensors stay on the model's device.
    """
    output = model.forward_with_maps(images01)
    prob = torch.softmax(output.logits.float(), dim=1)[:, nodule_class]
    nam = nodule_activation_map(output, tuple(images01.shape[-2:]), branches)
    return prob, nam


def to_numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().to("cpu", torch.float32).numpy()
