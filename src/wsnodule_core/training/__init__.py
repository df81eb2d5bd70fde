"""Training infrastructure shared by every method: devices, checkpoints, callbacks, DDP, sampling.

The names below load on first use, so that a light module of this package (``result``'s
``config_from_dict``) can be imported without torch.
"""

from __future__ import annotations

import importlib

_HOMES = {"TrainCallbacks": "callbacks", "Checkpoint": "checkpoint", "load_checkpoint": "checkpoint",
          "save_checkpoint": "checkpoint", "DeviceChoice": "device",
          "choose_device": "device"}
__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(importlib.import_module(f"wsnodule_core.training.{_HOMES[name]}"), name)
    raise AttributeError(f"module 'wsnodule_core.training' has no attribute {name!r}")
