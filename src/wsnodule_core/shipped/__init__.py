"""Models shipped in the package: ``wsnodule segment`` without a checkpoint, ``--method NAME``.

* :func:`shipped_models`, :func:`shipped_model`, :func:`default_method`: the table (``registry.py``,
  light: no torch) and its default;
* :func:`shipped_checkpoint`: a trained model's file, its presence and SHA-256 checked;
* :func:`load_shipped`: any shipped model as a segmenter (``load.py``).

Each model has a card, ``docs/models/NAME.md`` (docs/models/README.md says what a card holds).
Names load on first use, so that importing this package does not import torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Companion": "registry",
    "Registry": "registry",
    "SHIPPED": "registry",
    "ShippedModel": "registry",
    "default_method": "registry",
    "shipped_checkpoint": "registry",
    "shipped_model": "registry",
    "shipped_models": "registry",
    "check_method_kind": "load",
    "load_shipped": "load",
}
__all__ = ["SHIPPED", "Companion", "Registry", "ShippedModel", "check_method_kind", "default_method",
           "load_shipped", "shipped_checkpoint", "shipped_model", "shipped_models"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"wsnodule_core.shipped.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'wsnodule_core.shipped' has no attribute {name!r}")
