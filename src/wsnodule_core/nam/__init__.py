"""NAM / R-NAM (Feng et al., MICCAI 2017): the multi-GAP slice classifier and its training.

Only the light classifier API is exported here, and loaded on first use (so that importing a NAM
submodule, e.g. for the command line's options, does not import torch); the segmentation modules
(``scope``, ``icm``, ``rnam``, ``pipeline``) and the training entry point (``wsnodule_core.nam.train``)
are imported from their own modules.
"""

from __future__ import annotations

import importlib

__all__ = ["MultiGapClassifier", "MultiGapConfig", "MultiGapOutput", "nodule_activation_map"]


def __getattr__(name: str):
    if name in __all__:
        return getattr(importlib.import_module("wsnodule_core.nam.model"), name)
    raise AttributeError(f"module 'wsnodule_core.nam' has no attribute {name!r}")
