"""One front door for segmenting a CT with any trained model: :func:`load_segmenter`.

Every checkpoint kind becomes a :class:`Segmenter` whose ``segment(volume, lungs=..., progress=...,
cancel=...)`` returns a :class:`SegmentationResult` on the CT's grid. The command line, the
evaluation, the demo and the plugin all go through here, so a checkpoint segments alike everywhere.
Names load on first use, so that importing this package does not import torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Segmenter": "base",
    "SegmentationResult": "base",
    "LUNGS_AUTO": "base",
    "FunctionSegmenter": "base",
    "load_segmenter": "load",
    "segmenter_for_model": "load",
    "checkpoint_kind": "load",
    "load_model_of_kind": "load",
    "NamSegmenter": "nam",
    "Nam3DSegmenter": "nam",
    "nam_config_for_checkpoint": "nam",
    "PwSegmenter": "pw4medseg",
    "UnetBaselineSegmenter": "unet",
    "BlobSegmenter": "blob",
    "FlowSegmenter": "flow",
    "RefinedSegmenter": "refined",
    "ClassifiedSegmenter": "classified",
    "load_blob_classify_refine": "classified",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"wsnodule_core.segmentation.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'wsnodule_core.segmentation' has no attribute {name!r}")
