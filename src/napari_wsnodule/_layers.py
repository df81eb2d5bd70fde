"""Putting core results into the viewer: layers with the volume's geometry, never clobbering user edits."""

from __future__ import annotations

import contextlib
import functools
import weakref
from collections.abc import Iterator
from typing import Any

import napari
import numpy as np

from wsnodule_core.io.naming import VolumeName, derived_name
from wsnodule_core.io.volume import Volume
from napari_wsnodule._geometry import VOLUME_KEY, layer_geometry
from napari_wsnodule._reader import NAME_KEY

SOURCE_KEY = "wsnodule_source"        # metadata: the layer a result was computed from
GENERATED_KEY = "wsnodule_generated"  # metadata: what produced the layer (e.g. "nam:scope")
MODEL_MASK_KEY = "wsnodule_model_mask"  # metadata of a generated Labels layer: its data before any edit

# How maps (NAM, probabilities, attention) lie over the CT: added to it, faint, and invisible where low,
# so the anatomy under them stays readable. Every widget shows its maps through show_overlay.
OVERLAY_OPACITY = 0.45
OVERLAY_FLOOR = 0.2   # values under this fraction of the map's top are hidden (the lower contrast limit)
OVERLAY_RAMP = 0.35   # the colormap's alpha rises from 0 to 1 over this first part of its range
MASK_OPACITY = 0.5    # labels layers of masks: the CT shows through

# A layer is added hidden and shown this many ms later, in its own event-loop turn: its first draw
# (texture upload, 40-100 ms with software OpenGL) then no longer adds to the 100-200 ms napari takes to
# insert it (docs/plugin.md, Responsiveness). Shorter than StagedSteps' gap, so a staged layer is shown
# before the next one is added.
REVEAL_DELAY_MS = 5


def short_name(layer: Any) -> str:
    """What layers derived from ``layer`` start with: the CT's short name (its patient id) while the
    layer keeps the name the plugin gave it, else the layer's own (the user renamed it)."""
    name = getattr(layer, "name", "") or ""
    given = getattr(layer, "metadata", {}).get(NAME_KEY)
    if isinstance(given, VolumeName) and name.startswith(given.full):
        return given.short
    return name


def result_name(source: Any, what: str) -> str:
    """The name of a layer computed from ``source``: ``"<its short name> · <what>"``."""
    return derived_name(short_name(source), what)


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
                     source: Any = None, generated: str | None = None, reveal_later: bool = False,
                     **kwargs: Any):
    """Add ``volume`` as an ``"image"`` or ``"labels"`` layer in world mm; returns the layer.

    With ``reveal_later`` the layer is added hidden and unselected, and made visible (unless
    ``visible=False`` was asked) and selected ``REVEAL_DELAY_MS`` later by the event loop (see
    :func:`show_later`): napari's first draw of it and its layer controls then come in a turn of
    their own. It is in the layer list, with its name, data, metadata and geometry, when this returns.
    """
    metadata = {VOLUME_KEY: volume, **kwargs.pop("metadata", {})}
    if source is not None:
        metadata[SOURCE_KEY] = source
    if generated is not None:
        metadata[GENERATED_KEY] = generated
    if kind == "labels":
        kwargs.setdefault("opacity", MASK_OPACITY)
    add = {"image": viewer.add_image, "labels": viewer.add_labels}[kind]
    data = volume.array if kind == "image" else volume.array.astype("int32", copy=False)
    if kind == "labels" and generated is not None:
        # the model's own mask, kept to tell which nodules the annotator edited (no copy unless shared)
        metadata[MODEL_MASK_KEY] = _compact_copy(data) if np.may_share_memory(data, volume.array) else volume.array
    visible = kwargs.pop("visible", True)
    name = unique_layer_name(viewer, name)
    geometry = layer_geometry(volume)
    if not reveal_later:
        return add(data, name=name, metadata=metadata, visible=visible, **geometry, **kwargs)
    with _not_selected_on_insert(viewer.layers) as selects_new:
        layer = add(data, name=name, metadata=metadata, visible=False, **geometry, **kwargs)
    show_later(viewer, layer, visible=visible, select=selects_new)
    return layer


@contextlib.contextmanager
def _not_selected_on_insert(layers: Any) -> Iterator[bool]:
    """Keep napari from selecting the layers inserted meanwhile (its layer controls switch, 20-40 ms);
    yields whether it would have. Relies on napari's private ``_activate_on_insert`` flag: without it
    (another napari version) nothing changes and this yields False."""
    flag = getattr(layers, "_activate_on_insert", None)
    if not isinstance(flag, bool):
        yield False
        return
    layers._activate_on_insert = False
    try:
        yield flag
    finally:
        layers._activate_on_insert = flag


def show_later(viewer: napari.Viewer, layer: Any, *, visible: bool = True, select: bool = False,
               delay_ms: int = REVEAL_DELAY_MS) -> None:
    """``delay_ms`` from now, on a later turn of the event loop, make ``layer`` visible (if ``visible``)
    and the selected layer (if ``select``), unless it was removed from ``viewer`` meanwhile (neither
    object is kept alive by the wait)."""
    from qtpy.QtCore import QTimer

    viewer_ref, layer_ref = weakref.ref(viewer), weakref.ref(layer)

    def reveal() -> None:
        shown_in, target = viewer_ref(), layer_ref()
        if shown_in is None or target is None or target not in shown_in.layers:
            return
        if visible:
            target.visible = True
        if select:
            shown_in.layers.selection.active = target

    QTimer.singleShot(delay_ms, reveal)


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


@functools.cache
def overlay_colormap(name: str) -> Any:
    """napari's colormap ``name`` with an alpha ramp: transparent at its low end, opaque above
    ``OVERLAY_RAMP`` of its range."""
    from napari.utils.colormaps import Colormap, ensure_colormap

    controls = np.linspace(0.0, 1.0, 64)
    colors = np.asarray(ensure_colormap(name).map(controls), dtype=np.float32).copy()
    colors[:, 3] = np.clip(controls / OVERLAY_RAMP, 0.0, 1.0)
    return Colormap(colors, controls=controls, name=f"{name} (overlay)")


def overlay_style(colormap: str, top: float) -> dict[str, Any]:
    """Layer keywords of a map over the CT (values in ``[0, top]``): see ``OVERLAY_*``."""
    top = float(top) if np.isfinite(top) and top > 0 else 1.0
    return {"colormap": overlay_colormap(colormap), "blending": "additive", "opacity": OVERLAY_OPACITY,
            "contrast_limits": (OVERLAY_FLOOR * top, top)}


def show_overlay(viewer: napari.Viewer, volume: Volume, name: str, *, source: Any, generated: str,
                 colormap: str, top: float | None = None, **kwargs: Any):
    """Show a map over the CT in the overlay style (refreshed in place like :func:`show_map`).

    ``top`` is the value shown brightest (default the map's maximum); the contrast-limit slider
    still reaches down to 0.
    """
    if top is None:
        top = float(volume.array.max()) if volume.array.size else 1.0
    style = overlay_style(colormap, top)
    layer = show_map(viewer, volume, name, source=source, generated=generated, **style, **kwargs)
    limits = style["contrast_limits"]
    layer.contrast_limits_range = (0.0, limits[1])
    layer.contrast_limits = limits
    return layer
