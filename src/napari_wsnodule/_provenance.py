"""Where a Labels layer's mask came from and whether the annotator changed it, for the export table.

A layer the plugin made from a model's result carries the method (``GENERATED_KEY``, e.g.
``"nam:fine"``) and the model's own mask (``MODEL_MASK_KEY``, set by ``add_volume_layer``), so each
nodule is compared with it; other layers count as edited once the annotator painted, filled or
erased while the export panel watched them (``EDITED_KEY``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from napari_wsnodule._layers import GENERATED_KEY, MODEL_MASK_KEY

EDITED_KEY = "wsnodule_edited"                # metadata: True once the annotator edited the layer
SOURCE_METHOD_KEY = "wsnodule_source_method"  # metadata: the method of a restored (recovered) mask
MANUAL = "manual"                             # the method of a layer no model made


def source_method_of(layer: Any) -> str:
    """The method that made the layer's mask (``"manual"`` for a layer no model made)."""
    meta = getattr(layer, "metadata", {})
    return str(meta.get(SOURCE_METHOD_KEY) or meta.get(GENERATED_KEY) or MANUAL)


def model_mask_of(layer: Any) -> np.ndarray | None:
    """The model's unedited mask of a layer the plugin made (same shape as the layer's data), else None."""
    model = getattr(layer, "metadata", {}).get(MODEL_MASK_KEY)
    if isinstance(model, np.ndarray) and model.shape == tuple(np.shape(layer.data)):
        return model
    return None


def mark_edited(layer: Any) -> None:
    layer.metadata[EDITED_KEY] = True


def was_edited(layer: Any) -> bool:
    """True when the annotator edited the layer while the export panel watched it (or it was restored)."""
    return bool(getattr(layer, "metadata", {}).get(EDITED_KEY, False))
