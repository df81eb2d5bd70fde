"""The flow widget's input panel: the CT, the patch centres (a Points layer or the viewer's position), the
lungs."""

from __future__ import annotations

from typing import Any

import numpy as np
from qtpy.QtWidgets import QFormLayout

import napari
from napari_wsnodule.widgets._base import LayerPicker, Panel, WsnoduleWidget
from napari_wsnodule.widgets._view import camera_of
from wsnodule_core.errors import PatchCentreError
from wsnodule_core.flow.on_volume import check_inside
from wsnodule_core.io.volume import Volume


def points_world_xyz(layer: Any) -> np.ndarray:
    """The points of a Points layer as world ``(x, y, z)`` mm (LPS), ``(n, 3)``."""
    data = np.asarray(layer.data, float)
    if data.ndim != 2 or data.shape[1] < 3:
        raise PatchCentreError(
            f"the points layer {layer.name!r} has {data.shape[1] if data.ndim == 2 else '?'} dimensions; "
            "patch centres need 3D points: add a Points layer while the CT is shown (or pick '(none)' to use "
            "the viewer's position).")
    world = np.array([np.asarray(layer.data_to_world(p), float)[-3:] for p in data]).reshape(-1, 3)
    return world[:, ::-1]  # napari world (z, y, x) -> LPS (x, y, z)


def viewer_centre_xyz(viewer: napari.Viewer) -> np.ndarray:
    """The viewer's current position as world ``(x, y, z)`` mm: the sliders' point on the hidden axes,
    the camera centre on the displayed ones (the CT's axes are the viewer's last three)."""
    point = np.asarray(viewer.dims.point, float)
    centre = np.asarray(camera_of(viewer).center, float)
    displayed = list(viewer.dims.displayed)
    for axis, value in zip(displayed, centre[-len(displayed):]):
        point[axis] = value
    if len(point) < 3:
        raise PatchCentreError("the viewer shows fewer than three axes; open a 3D CT first.")
    return point[-3:][::-1]


class InputsPanel(Panel):
    """CT, patch centres and optional lungs."""

    def __init__(self, dock: WsnoduleWidget) -> None:
        super().__init__("Input", dock)
        form = QFormLayout(self)
        self.image_combo = dock.image_picker()
        self.image_combo.setToolTip("The CT in Hounsfield units.")
        self.points_combo = LayerPicker(self.viewer, (napari.layers.Points,), allow_none=True)
        self.points_combo.setToolTip("One patch around each point (batched). '(none)': one patch around the "
                                     "viewer's current position (slice and view centre).")
        self.lungs_combo = dock.labels_picker(allow_none=True)
        self.lungs_combo.setToolTip("Optional lung mask on the CT's grid: the mask is kept inside it. "
                                    "'(none)': the whole patch counts.")
        form.addRow("CT", self.image_combo)
        form.addRow("Patch centres", self.points_combo)
        form.addRow("Lungs", self.lungs_combo)

    def patch_centres(self, volume: Volume, name: str) -> np.ndarray:
        """World ``(x, y, z)`` of the patch centres: the chosen points, else the viewer's position."""
        points = self.points_combo.layer()
        if points is None:
            centres = viewer_centre_xyz(self.viewer)[None]
        else:
            centres = points_world_xyz(points)
            if not len(centres):
                raise PatchCentreError(f"the points layer {points.name!r} has no points: add a point on each "
                                       "nodule to guide, or pick '(none)' to use the viewer's position.")
        check_inside(volume, centres, name)
        return centres
