"""Putting core results into the viewer: layers with the volume's geometry, never clobbering user edits."""

from __future__ import annotations

from typing import Any

import napari
import numpy as np

from wsnodule_core.io.volume import Volume
from napari_wsnodule._geometry import VOLUME_KEY, layer_geometry

SOURCE_KEY = "wsnodule_source"        # metadata: the layer a result was computed from
GENERATED_KEY = "wsnodule_generated"  # metadata: what produced the layer (e.g. "nam:scope")
MODEL_MASK_KEY = "wsnodule_model_mask"  # metadata of a generated Labels layer: its data before any edit


def unique_layer_name(viewer: napari.Viewer, name: str) -> str:
    taken = {layer.name for layer in viewer.layers}
    candidate, i = name, 2
    while candidate in taken:
        candidate, i = f"{name} ({i})", i + 1
    return candidate


def _compact_copy(labels: np.ndarray) -> np.ndarray:
    """A copy of an int label array in the smallest unsigned type that holds it."""
    if labels.size and labels.min() >= 0 and labels.max() <= np.iinfo(np.uint16).max:
        return labels.astype(np.uint8 if labels.max() <= 255 else np.uint16)
    return labels.copy()


def add_volume_layer(viewer: napari.Viewer, volume: Volume, kind: str, name: str, *,
                     source: Any = None, generated: str | None = None, **kwargs: Any):
    """Add ``volume`` as an ``"image"`` or ``"labels"`` layer in world mm; returns the layer."""
    metadata = {VOLUME_KEY: volume, **kwargs.pop("metadata", {})}
    if source is not None:
        metadata[SOURCE_KEY] = source
    if generated is not None:
        metadata[GENERATED_KEY] = generated
    add = {"image": viewer.add_image, "labels": viewer.add_labels}[kind]
    data = volume.array if kind == "image" else volume.array.astype("int32", copy=False)
    if kind == "labels" and generated is not None:
        # the model's own mask, kept to tell which nodules the annotator edited (no copy unless shared)
        metadata[MODEL_MASK_KEY] = _compact_copy(data) if np.may_share_memory(data, volume.array) else volume.array
    return add(data, name=unique_layer_name(viewer, name), metadata=metadata, **layer_geometry(volume), **kwargs)


def show_map(viewer: napari.Viewer, volume: Volume, name: str, *, source: Any, generated: str, kind: str = "image",
             **kwargs: Any):
    """Show a computed map: refresh the layer this plugin made earlier for the same source and
    purpose (same name), else add a new one. Only ``image`` maps are refreshed in place; labels
    always go to a new layer because the user may have corrected the old one.
    """
    if kind == "image":
        for layer in viewer.layers:
            meta = getattr(layer, "metadata", {})
            if (layer.name == name and meta.get(GENERATED_KEY) == generated and meta.get(SOURCE_KEY) is source
                    and getattr(layer.data, "shape", None) == volume.shape):
                layer.data = volume.array
                layer.metadata[VOLUME_KEY] = volume
                return layer
    return add_volume_layer(viewer, volume, kind, name, source=source, generated=generated, **kwargs)
