"""The PW4MedSeg widget's annotations panel: the CT, its points, boxes and lungs layers, and marked slices.

Annotations drawn in napari become the core's voxel-index annotations of the CT picked here: nodule
points (a Points layer), boxes (a Shapes layer: a rectangle drawn on an axial slice is a 2D box on
that slice, a shape whose vertices span several slices a 3D box) and marked slices (buttons on the
current slice; the marks live in the CT layer's metadata). Every coordinate goes through world
millimetres (each layer's own transform, then the CT's ``world_to_index``), so the annotation layers
need not share the CT's geometry; the "Add ... layer" buttons give them the CT's geometry anyway, so
a click lands on a voxel centre.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QFormLayout, QListWidget, QListWidgetItem, QPushButton, QVBoxLayout

import napari
from napari_wsnodule._geometry import layer_geometry, mask_volume, volume_of_layer
from napari_wsnodule._layers import result_name, unique_layer_name
from napari_wsnodule.widgets._annotation_layers import (
    MARKS_KEY,
    annotations_from_layers,
    current_slice,
    marks_of,
)
from napari_wsnodule.widgets._base import LayerPicker, Panel, WsnoduleWidget
from napari_wsnodule.widgets._controls import hbox
from napari_wsnodule.widgets._view import row_of
from wsnodule_core.errors import SparseAnnotationError, WsnoduleError
from wsnodule_core.io.volume import Volume
from wsnodule_core.pw4medseg.annotations import SparseAnnotations

ANNOTATES_KEY = "wsnodule_annotates"  # annotation layer metadata: the CT layer it was made for
NO_CT = "Open a CT first (File > Open, or the Load CT widget) and pick it under 'CT'."
NO_ANNOTATIONS = ("There is nothing to learn from: click nodule points in a Points layer, draw rectangles around "
                  "nodules in a Shapes layer (the 'Add points layer' / 'Add boxes layer' buttons make them), "
                  "or mark slices as 'nodule' / 'no nodule', then pick those layers here.")


class AnnotationsPanel(Panel):
    """CT, points, boxes, lungs; slice marks of the picked CT."""

    def __init__(self, dock: WsnoduleWidget) -> None:
        super().__init__("Annotations", dock)
        outer = QVBoxLayout(self)
        form = QFormLayout()
        self.image_combo = dock.image_picker()
        self.image_combo.setToolTip("The CT in Hounsfield units; annotations are read on its grid.")
        self.points_combo = LayerPicker(self.viewer, (napari.layers.Points,), allow_none=True)
        self.points_combo.setToolTip("Clicks on nodules. Points closer than 30 mm count as one nodule; a 'label' "
                                     "feature of 0 marks a background point.")
        self.boxes_combo = LayerPicker(self.viewer, (napari.layers.Shapes,), allow_none=True)
        self.boxes_combo.setToolTip("Rectangles around nodules, drawn on an axial slice (a 2D box on that slice).")
        self.lungs_combo = dock.labels_picker(allow_none=True)
        self.lungs_combo.setToolTip("Optional lung mask: confines the box and slice priors. Without it, marked "
                                    "slices segment the lungs first.")
        self.add_points_button = QPushButton("Add points layer")
        self.add_points_button.clicked.connect(self.add_points_layer)
        self.add_boxes_button = QPushButton("Add boxes layer")
        self.add_boxes_button.clicked.connect(self.add_boxes_layer)
        form.addRow("CT", self.image_combo)
        form.addRow("Points", row_of(self.points_combo, self.add_points_button))
        form.addRow("Boxes", row_of(self.boxes_combo, self.add_boxes_button))
        form.addRow("Lungs", self.lungs_combo)
        outer.addLayout(form)
        self.mark_nodule_button = QPushButton("Slice: nodule")
        self.mark_nodule_button.setToolTip("Mark the slice shown now as showing a nodule.")
        self.mark_nodule_button.clicked.connect(lambda: self.mark_current_slice(True))
        self.mark_empty_button = QPushButton("Slice: no nodule")
        self.mark_empty_button.setToolTip("Mark the slice shown now as showing no nodule.")
        self.mark_empty_button.clicked.connect(lambda: self.mark_current_slice(False))
        self.remove_mark_button = QPushButton("Remove")
        self.remove_mark_button.setToolTip("Remove the selected slice marks.")
        self.remove_mark_button.clicked.connect(self.remove_selected_marks)
        outer.addLayout(hbox(self.mark_nodule_button, self.mark_empty_button, self.remove_mark_button))
        self.marks_list = QListWidget()
        self.marks_list.setSelectionMode(QListWidget.ExtendedSelection)
        self.marks_list.setMaximumHeight(90)
        outer.addWidget(self.marks_list)
        self.image_combo.currentIndexChanged.connect(self.refresh_marks)
        self.refresh_marks()

    # --- the CT and its lungs ---------------------------------------------------------------------------

    def source_volume(self, action: str) -> tuple[Any, Volume] | None:
        """The picked CT layer and its Volume, or None after showing why not (``action``: what for)."""
        source = self.image_combo.layer()
        if source is None:
            self.error(NO_CT)
            return None
        try:
            return source, volume_of_layer(source)
        except WsnoduleError as error:
            self.error(f"Cannot {action} on {source.name!r}: {error}")
            return None

    def lungs(self, volume: Volume) -> np.ndarray | None | bool:
        """The picked lung mask on the CT's grid (None: none picked; False: error shown)."""
        layer = self.lungs_combo.layer()
        if layer is None:
            return None
        try:
            return mask_volume(layer.data, volume).array > 0
        except WsnoduleError as error:
            self.error(f"The lung mask {layer.name!r} cannot be used: {error}")
            return False

    def read(self, source: Any, volume: Volume) -> SparseAnnotations | None:
        """The picked layers' annotations on ``volume``'s grid, or None after showing what is wrong."""
        try:
            annotations = annotations_from_layers(volume, self.points_combo.layer(), self.boxes_combo.layer(),
                                                  marks_of(source))
        except SparseAnnotationError as error:
            self.error(f"The annotations of {source.name!r} cannot be used: {error}")
            return None
        if annotations.is_empty:
            self.error(NO_ANNOTATIONS)
            return None
        return annotations

    # --- annotation layers ------------------------------------------------------------------------------

    def _layer_kwargs(self, source: Any, volume: Volume, name: str) -> dict[str, Any]:
        return {"name": unique_layer_name(self.viewer, result_name(source, name)),
                "metadata": {ANNOTATES_KEY: source}, **layer_geometry(volume)}

    def add_points_layer(self) -> Any:
        """A Points layer on the CT's grid, selected and in 'add' mode, picked under 'Points'."""
        got = self.source_volume("add a points layer")
        if got is None:
            return None
        source, volume = got
        size = 4.0 / float(min(volume.spacing[1:]))  # about 4 mm across, in voxels
        layer = self.viewer.add_points(np.empty((0, 3)), ndim=3, size=size, face_color="#ff4040",
                                       border_color="white", features={"label": np.empty(0, int)},
                                       feature_defaults={"label": 1},
                                       **self._layer_kwargs(source, volume, "nodule points"))
        self.viewer.layers.selection.active = layer
        layer.mode = "add"
        self.points_combo.select(layer)
        return layer

    def add_boxes_layer(self) -> Any:
        """A Shapes layer on the CT's grid, selected and in rectangle mode, picked under 'Boxes'."""
        got = self.source_volume("add a boxes layer")
        if got is None:
            return None
        source, volume = got
        layer = self.viewer.add_shapes(None, ndim=3, shape_type="rectangle", edge_color="yellow",
                                       face_color="transparent", edge_width=1.0,
                                       **self._layer_kwargs(source, volume, "nodule boxes"))
        self.viewer.layers.selection.active = layer
        layer.mode = "add_rectangle"
        self.boxes_combo.select(layer)
        return layer

    # --- marked slices ----------------------------------------------------------------------------------

    def refresh_marks(self, *_: Any) -> None:
        """List the marks of the picked CT."""
        self.marks_list.clear()
        for z, present in sorted(marks_of(self.image_combo.layer()).items()):
            item = QListWidgetItem(f"slice {z}: {'nodule' if present else 'no nodule'}")
            item.setData(Qt.UserRole, z)
            self.marks_list.addItem(item)

    def mark_current_slice(self, present: bool) -> int | None:
        """Mark the slice the viewer shows as showing a nodule (or not) on the picked CT."""
        got = self.source_volume("mark a slice")
        if got is None:
            return None
        source, volume = got
        try:
            z = current_slice(self.viewer, volume)
        except SparseAnnotationError as error:
            self.error(str(error))
            return None
        marks = marks_of(source)
        marks[z] = bool(present)
        source.metadata[MARKS_KEY] = marks
        self.refresh_marks()
        return z

    def remove_selected_marks(self) -> None:
        source = self.image_combo.layer()
        if source is None:
            return
        marks = marks_of(source)
        for item in self.marks_list.selectedItems():
            marks.pop(int(item.data(Qt.UserRole)), None)
        source.metadata[MARKS_KEY] = marks
        self.refresh_marks()
