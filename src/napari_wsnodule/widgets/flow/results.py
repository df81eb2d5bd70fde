"""Showing a flow-guidance run: per patch the counterfactual, difference, trajectory and mask layers, and the
mask pasted onto the CT's grid, all tied to the CT layer picked at Run.

The maps of a patch are refreshed in place on a later run on the same CT and patch grid; masks are
results to correct, so each run adds new ones.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

import napari
from napari_wsnodule._geometry import VOLUME_KEY, layer_geometry
from napari_wsnodule._layers import (GENERATED_KEY, SOURCE_KEY, add_volume_layer, overlay_style, result_name,
                                     unique_layer_name)
from wsnodule_core.flow.on_volume import FlowVolumeResult
from wsnodule_core.io.volume import Volume

PATCH_KEY = "wsnodule_patch"   # metadata of the 4D trajectory layer: the patch Volume of its spatial axes
TIMES_KEY = "wsnodule_times"   # metadata of the trajectory layer: the time of each state
TIME_AXIS_LABEL = "guidance step (t0 → 0)"
CT_MASK = "ct_mask"            # the key of the CT-grid mask among the steps' results


@dataclass(frozen=True, eq=False)
class FlowRun:
    """One guidance run on the CT layer ``source``."""

    source: Any
    result: FlowVolumeResult


def trajectory_geometry(patch: Volume) -> dict[str, Any]:
    """Layer keywords of a (time, z, y, x) image: the patch's geometry on the spatial axes, the time
    axis in steps (world value k = state k)."""
    spatial = layer_geometry(patch)
    if "scale" in spatial:
        return {"scale": (1.0, *spatial["scale"]), "translate": (0.0, *spatial["translate"])}
    affine = np.eye(5)
    affine[1:4, 1:4] = spatial["affine"][:3, :3]
    affine[1:4, 4] = spatial["affine"][:3, 3]
    return {"affine": affine}


def layer_steps(viewer: napari.Viewer, run: FlowRun) -> list[tuple[Any, Callable[[], Any]]]:
    """``((patch, key), make)`` steps adding the run's layers, then ``(CT_MASK, make)`` for the CT-grid
    mask."""
    result, source = run.result, run.source
    n = len(result.patches)
    limits = _limits_of(source)

    def name(what: str) -> str:
        return result_name(source, what)

    steps: list[tuple[Any, Callable[[], Any]]] = []
    for i, patch in enumerate(result.patches):
        tag = f" #{i + 1}" if n > 1 else ""
        cf, diff = patch.with_array(result.counterfactual[i]), patch.with_array(result.difference[i])
        top = float(result.difference[i].max())
        steps += [
            ((i, "counterfactual"), _bind(show_image, viewer, cf, name(f"flow counterfactual{tag}"), source,
                                          "flow:counterfactual", colormap="gray", contrast_limits=limits)),
            ((i, "difference"), _bind(show_image, viewer, diff, name(f"flow difference{tag}"), source,
                                      "flow:difference", **overlay_style("inferno", top))),
            ((i, "trajectory"), _bind(show_trajectory, viewer, run, i, name(f"flow trajectory{tag}"),
                                      limits)),
            # the mask is a result to correct: always a new layer
            # (add_volume_layer makes the int32 copy napari edits; the result's own mask stays the model's)
            ((i, "mask"), _bind(add_volume_layer, viewer, patch.with_array(result.masks[i]),
                                "labels", name(f"flow mask{tag}"), source=source, generated="flow:mask",
                                reveal_later=True)),
        ]
    steps.append((CT_MASK, _bind(add_volume_layer, viewer, result.mask, "labels", name("flow mask (CT grid)"),
                                 source=source, generated="flow:ct_mask", reveal_later=True)))
    return steps


def per_patch(made: dict, n: int) -> list[dict[str, Any]]:
    """``{(patch, key): layer}`` -> one ``{key: layer}`` per patch (the CT-grid mask left out)."""
    layers: list[dict[str, Any]] = [{} for _ in range(n)]
    for key, layer in made.items():
        if key != CT_MASK:
            layers[key[0]][key[1]] = layer
    return layers


def summary_text(run: FlowRun, layers: list[dict[str, Any]], ct_mask: Any) -> str:
    result = run.result
    lines = []
    for i, patch in enumerate(result.patches):
        voxels = int(result.masks[i].sum())
        ml = voxels * patch.voxel_volume_mm3 / 1000.0
        where = ", ".join(f"{v:.1f}" for v in result.centres_xyz[i])
        lines.append(f"Patch {i + 1} at ({where}) mm: P(nodule) {result.p_before[i]:.3f} → "
                     f"{result.p_after[i]:.3f}; mask {voxels} voxels ({ml:.2f} mL) in "
                     f"'{layers[i]['mask'].name}'.")
    voxels = int(np.count_nonzero(result.mask.array))
    ml = voxels * result.mask.voxel_volume_mm3 / 1000.0
    lines.append(f"On the CT's grid: {voxels} voxels ({ml:.2f} mL) in "
                 f"'{ct_mask.name}' (export it like any mask).")
    c = result.config
    lines.append(f"{c.n_steps} steps from t0 = {c.t0:g}, K = {c.guided_steps} guided ({c.rule}), on "
                 f"{result.device}.")
    return "\n".join(lines)


def find_image(viewer: napari.Viewer, generated: str, source: Any, patch: Volume, shape: tuple) -> Any:
    """The image layer made earlier for this source, purpose and patch grid (refreshed in place)."""
    for layer in viewer.layers:
        meta = getattr(layer, "metadata", {})
        shown = meta.get(PATCH_KEY, meta.get(VOLUME_KEY))
        if (isinstance(layer, napari.layers.Image) and meta.get(GENERATED_KEY) == generated
                and meta.get(SOURCE_KEY) is source and isinstance(shown, Volume)
                and shown.same_geometry(patch) and tuple(layer.data.shape) == tuple(shape)):
            return layer
    return None


def show_image(viewer: napari.Viewer, volume: Volume, name: str, source: Any, generated: str,
               **kwargs: Any) -> Any:
    layer = find_image(viewer, generated, source, volume, volume.shape)
    if layer is not None:
        layer.data = volume.array
        layer.metadata[VOLUME_KEY] = volume
    else:
        layer = add_volume_layer(viewer, volume, "image", name, source=source, generated=generated,
                                 reveal_later=True, **kwargs)
    if "contrast_limits" in kwargs:
        low, high = kwargs["contrast_limits"]
        layer.contrast_limits_range = (min(0.0, low), high)  # an overlay's floor can be lowered to 0
        layer.contrast_limits = (low, high)
    return layer


def show_trajectory(viewer: napari.Viewer, run: FlowRun, i: int, name: str,
                    limits: tuple[float, float]) -> Any:
    result = run.result
    patch, data = result.patches[i], result.trajectory[i]
    metadata = {PATCH_KEY: patch, TIMES_KEY: result.times, SOURCE_KEY: run.source,
                GENERATED_KEY: "flow:trajectory"}
    layer = find_image(viewer, "flow:trajectory", run.source, patch, data.shape)
    if layer is not None:
        layer.data = data
        layer.metadata.update(metadata)
        return layer
    n = len(result.times) - 1
    name = f"{name} (steps 0–{n}: t {result.times[0]:g} → 0)"
    layer = viewer.add_image(data, name=unique_layer_name(viewer, name), metadata=metadata, colormap="gray",
                             contrast_limits=limits, visible=False, **trajectory_geometry(patch))
    _label_time_axis(viewer, layer)
    return layer


def _label_time_axis(viewer: napari.Viewer, layer: Any) -> None:
    """Name the viewer axis of the trajectory's leading (time) axis, unless the user named it."""
    dims = viewer.dims
    axis = dims.ndim - layer.ndim
    labels = list(dims.axis_labels)
    if 0 <= axis < len(labels) and re.fullmatch(r"-?\d+", str(labels[axis])):
        labels[axis] = TIME_AXIS_LABEL
        dims.axis_labels = labels


def _limits_of(layer: Any) -> tuple[float, float]:
    limits = tuple(float(v) for v in getattr(layer, "contrast_limits", (-1000.0, 400.0)))
    return limits if limits[1] > limits[0] else (-1000.0, 400.0)


def _bind(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Callable[[], Any]:
    return lambda: fn(*args, **kwargs)
