"""Small view helpers shared by the widgets: moving the viewer to a voxel, read-only tables."""

from __future__ import annotations

from typing import Any, Sequence

import napari
import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (QAbstractItemView, QHBoxLayout, QHeaderView, QTableWidget, QTableWidgetItem,
                            QWidget)


def jump_to(viewer: napari.Viewer, layer: Any, index_zyx: Sequence[float]) -> None:
    """Move the viewer's slider(s) to the voxel ``index_zyx`` of ``layer`` and centre the camera on it."""
    world = np.asarray(layer.data_to_world(tuple(float(v) for v in index_zyx)), float)
    first = viewer.dims.ndim - len(world)  # a layer's axes are the viewer's last ones
    if first < 0:
        return
    viewer.dims.set_point(tuple(range(first, viewer.dims.ndim)), tuple(world))
    shown = [world[axis - first] for axis in viewer.dims.displayed if axis >= first]
    if shown:
        camera_of(viewer).center = tuple(shown)


def camera_of(viewer: napari.Viewer) -> Any:
    """The viewer's camera: ``viewer.scene.camera`` from napari 0.9, ``viewer.camera`` before."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None and hasattr(scene, "camera") else viewer.camera


def read_only_table(columns: Sequence[str]) -> QTableWidget:
    """A table of whole-row selection, not editable, with these column headers."""
    table = QTableWidget(0, len(columns))
    table.setHorizontalHeaderLabels(list(columns))
    table.setEditTriggers(QAbstractItemView.NoEditTriggers)
    table.setSelectionBehavior(QAbstractItemView.SelectRows)
    table.setSelectionMode(QAbstractItemView.SingleSelection)
    table.verticalHeader().setVisible(False)
    table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeToContents)
    table.horizontalHeader().setStretchLastSection(True)
    table.horizontalHeader().setSortIndicator(0, Qt.AscendingOrder)  # Qt's default is descending
    return table


_SORT_ROLE = Qt.UserRole + 1


class _SortedItem(QTableWidgetItem):
    """A cell that shows formatted text but sorts by its value."""

    def __lt__(self, other: QTableWidgetItem) -> bool:
        mine, theirs = self.data(_SORT_ROLE), other.data(_SORT_ROLE)
        if mine is None or theirs is None:
            return super().__lt__(other)
        return mine < theirs


def table_item(text: str, value: Any = None, key: Any = None) -> QTableWidgetItem:
    """A cell showing ``text``, sorted by ``value`` (default the text); ``key`` rides along in
    ``Qt.UserRole`` (e.g. which nodule the row is)."""
    item = _SortedItem(text)
    item.setData(_SORT_ROLE, value if value is not None else text)
    if key is not None:
        item.setData(Qt.UserRole, key)
    return item


def row_of(*widgets: QWidget) -> QWidget:
    """Widgets side by side in one form row."""
    holder = QWidget()
    row = QHBoxLayout(holder)
    row.setContentsMargins(0, 0, 0, 0)
    for widget in widgets:
        row.addWidget(widget)
    return holder
