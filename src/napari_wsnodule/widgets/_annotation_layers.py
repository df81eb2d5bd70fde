"""napari annotation layers -> the core's voxel-index sparse annotations of one CT (no Qt).

Every coordinate goes through world millimetres (the layer's own transform, then the CT's
``world_to_index``), so annotation layers need not share the CT's geometry. Points within
``GROUP_MM`` of each other are one nodule; a rectangle on one axial slice is a 2D box on that slice,
a shape spanning slices a 3D box; marked slices live in the CT layer's metadata under ``MARKS_KEY``.
"""

from __future__ import annotations

from typing import Any, Sequence

import napari
import numpy as np
from napari.utils.transforms import Affine

from wsnodule_core.errors import SparseAnnotationError
from wsnodule_core.io.volume import Volume
from wsnodule_core.pw4medseg.annotations import (BoxAnnotation, PointAnnotation, SliceAnnotation,
                                                 SparseAnnotations)

MARKS_KEY = "wsnodule_slice_marks"   # CT layer metadata: {z index: True (nodule) / False (no nodule)}
GROUP_MM = 30.0   # points closer than this (single linkage) are one nodule: LIDC nodules are 3-30 mm


def data_to_world_matrix(layer: Any) -> np.ndarray:
    """The layer's 4x4 data -> world (napari (z, y, x) mm) transform, as ``volume_of_layer`` reads it."""
    if layer.ndim != 3:
        raise SparseAnnotationError(
            f"layer {layer.name!r} has {layer.ndim} dimensions; annotations need 3D layers (z, y, x): use "
            "'Add points layer' / 'Add boxes layer' to make them with the CT's geometry.")
    inner = Affine(scale=layer.scale, translate=layer.translate, rotate=layer.rotate, shear=layer.shear)
    return np.asarray(layer.affine.affine_matrix, float) @ np.asarray(inner.affine_matrix, float)


def layer_to_indices(layer: Any, coords: np.ndarray, volume: Volume) -> np.ndarray:
    """Continuous voxel indices ``(z, y, x)`` of ``volume`` for ``coords`` in ``layer``'s data space."""
    coords = np.asarray(coords, float).reshape(-1, 3)
    matrix = data_to_world_matrix(layer)
    world_zyx = coords @ matrix[:3, :3].T + matrix[:3, 3]
    return np.asarray(volume.world_to_index(world_zyx[:, ::-1]), float).reshape(-1, 3)


def _point_labels(layer: Any, n: int) -> np.ndarray:
    """1 (nodule) per point, or the layer's ``label`` feature when it has one (0 = background)."""
    features = getattr(layer, "features", None)
    if features is not None and "label" in getattr(features, "columns", ()) and len(features) == n:
        return np.asarray(features["label"], float).round().astype(int)
    return np.ones(n, int)


def group_points(indices: np.ndarray, spacing: Sequence[float], within_mm: float = GROUP_MM) -> list[np.ndarray]:
    """Indices into ``indices`` of the groups of points closer than ``within_mm`` (single linkage)."""
    if len(indices) == 1:
        return [np.array([0])]
    from scipy.cluster.hierarchy import fcluster, linkage

    clusters = fcluster(linkage(np.asarray(indices) * np.asarray(spacing, float), "single"), within_mm,
                        criterion="distance")
    return [np.flatnonzero(clusters == c) for c in np.unique(clusters)]


def points_from_layer(layer: Any, volume: Volume, *, within_mm: float = GROUP_MM) -> tuple[PointAnnotation, ...]:
    """The layer's points as one :class:`PointAnnotation` per nodule (points grouped by distance; a
    ``nodule`` feature, when present, groups them instead). A point outside the CT is an error."""
    data = np.asarray(layer.data, float)
    if len(data) == 0:
        return ()
    indices = layer_to_indices(layer, data, volume)
    shape = np.asarray(volume.shape)
    outside = np.flatnonzero(np.any((np.round(indices) < 0) | (np.round(indices) > shape - 1), axis=1))
    if len(outside):
        i = int(outside[0])
        world = np.asarray(volume.index_to_world(indices[i]), float)
        raise SparseAnnotationError(
            f"point {i} of {layer.name!r} (world x, y, z = {np.round(world, 1).tolist()} mm) lies outside the CT "
            f"({len(outside)} point(s) outside in all): select it in the layer and delete it, or pick the CT it "
            "was clicked on.")
    labels = _point_labels(layer, len(data))
    features = getattr(layer, "features", None)
    if features is not None and "nodule" in getattr(features, "columns", ()) and len(features) == len(data):
        ids = np.asarray(features["nodule"])
        groups = [np.flatnonzero(ids == v) for v in np.unique(ids)]
    else:
        groups = group_points(indices, volume.spacing, within_mm)
    return tuple(PointAnnotation(tuple(map(tuple, indices[g])), tuple(int(v) for v in labels[g]), nodule=k + 1)
                 for k, g in enumerate(groups))


def boxes_from_layer(layer: Any, volume: Volume, *, first_nodule: int = 1) -> tuple[BoxAnnotation, ...]:
    """Each shape's bounding box in voxel indices: a 2D box on its slice when all its vertices lie on one
    axial slice of the CT, else a 3D box. In-plane, the box covers every voxel the shape overlaps
    (voxel i spans i - 0.5 .. i + 0.5); parts outside the CT are clipped, a shape wholly outside is an error."""
    boxes: list[BoxAnnotation] = []
    shape = np.asarray(volume.shape)
    for k, vertices in enumerate(layer.data):
        idx = layer_to_indices(layer, vertices, volume)
        low, high = idx.min(axis=0), idx.max(axis=0)
        lo = np.floor(low + 0.5 + 1e-6).astype(int)   # first voxel the shape overlaps
        hi = np.ceil(high - 0.5 - 1e-6).astype(int)   # last one
        hi = np.maximum(hi, lo)                        # a degenerate (line) shape still covers one voxel
        planar = int(lo[0]) == int(hi[0]) or float(high[0] - low[0]) < 0.5
        if planar:
            z = int(np.round((low[0] + high[0]) / 2))
            lo[0] = hi[0] = z
        if np.any(hi < 0) or np.any(lo > shape - 1):
            raise SparseAnnotationError(
                f"shape {k} of {layer.name!r} lies outside the CT (voxels {lo.tolist()}..{hi.tolist()} of a "
                f"{tuple(shape)} grid): delete it, or pick the CT it was drawn on.")
        lo, hi = np.clip(lo, 0, shape - 1), np.clip(hi, 0, shape - 1)
        boxes.append(BoxAnnotation(tuple(int(v) for v in lo), tuple(int(v) for v in hi),
                                   nodule=first_nodule + k, planar=planar))
    return tuple(boxes)


def marks_of(layer: Any) -> dict[int, bool]:
    """The slice marks stored on a CT layer ({z: nodule?})."""
    marks = getattr(layer, "metadata", {}).get(MARKS_KEY) if layer is not None else None
    return dict(marks) if isinstance(marks, dict) else {}


def annotations_from_layers(volume: Volume, points: Any = None, shapes: Any = None,
                            marks: dict[int, bool] | None = None) -> SparseAnnotations:
    """Every annotation the layers and marks hold, on ``volume``'s grid (validated together)."""
    point_sets = points_from_layer(points, volume) if points is not None else ()
    boxes = boxes_from_layer(shapes, volume, first_nodule=len(point_sets) + 1) if shapes is not None else ()
    marks = marks or {}
    slices = SliceAnnotation(tuple(sorted(marks)), tuple(marks[z] for z in sorted(marks))) if marks else None
    return SparseAnnotations(volume.shape, point_sets, boxes, slices)


def current_slice(viewer: napari.Viewer, volume: Volume) -> int:
    """The CT's axial slice index the viewer shows now (2D view of axial slices only)."""
    dims = viewer.dims
    if dims.ndisplay != 2:
        raise SparseAnnotationError("marking a slice needs the 2D view: switch off 3D (the cube button), then "
                                    "mark again.")
    if tuple(dims.displayed) != (dims.ndim - 2, dims.ndim - 1):
        raise SparseAnnotationError("the viewer does not show axial slices (the axes were rolled or transposed): "
                                    "reset them with the roll / transpose buttons, then mark again.")
    if abs(float(np.asarray(volume.direction)[2, 2])) < 0.999:
        raise SparseAnnotationError("this CT's slices are not axial in the world frame, so the viewer's slice "
                                    "is not one CT slice: mark slices on an axial CT.")
    point_zyx = np.asarray(dims.point, float)[-3:]
    z = float(volume.world_to_index(point_zyx[::-1])[0])
    if not -0.5 <= z < volume.shape[0] - 0.5:
        raise SparseAnnotationError(f"the viewer's slice lies outside the CT (slice {z:.1f} of "
                                    f"0..{volume.shape[0] - 1}): move the slider onto the CT.")
    return int(round(z))
