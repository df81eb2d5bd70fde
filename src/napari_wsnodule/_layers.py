"""Putting core results into the viewer: layers with the volume's geometry, never clobbering user edits."""

from __future__ import annotations

from typing import Any

import napari

from wsnodule_core.io.volume import Volume
from napari_wsnodule._geometry import VOLUME_KEY, layer_geometry

SOURCE_KEY = "wsnodule_source"        # metadata: the layer a result was computed from
GENERATED_KEY = "wsnodule_generated"  # metadata: what produced the layer (e.g. "nam:scope")


def unique_layer_name(viewer: napari.Viewer, name: str) -> str:
    taken = {layer.name for layer in viewer.layers}
    candidate, i = name, 2
    while candidate in taken:
        candidate, i = f"{name} ({i})", i + 1
    return candidate


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
