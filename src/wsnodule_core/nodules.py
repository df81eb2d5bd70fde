"""Per-nodule measurements of a label mask: volume, equivalent and longest axial diameter, slices.

A nodule is either a 3D connected component of the non-zero voxels (26-connectivity, as
:func:`wsnodule_core.metrics.match_nodules_3d`) or one label value (``by="labels"``: a value
drawn in two places is one nodule). The longest axial diameter follows pylidc's
``Annotation.diameter``: the greatest distance between two pixel centres of the nodule on one
axial slice (a nodule one pixel wide measures 0 across), the largest over its slices.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage
from scipy.spatial.distance import pdist

from wsnodule_core.errors import InvalidVolumeError
from wsnodule_core.io.volume import Volume
from wsnodule_core.metrics import equivalent_diameter_3d

GROUPINGS = ("components", "labels")
_CONNECTIVITY_26 = np.ones((3, 3, 3), bool)
_HULL_ABOVE = 256  # boundary points on a slice above which the convex hull is taken first


def label_nodules(mask: np.ndarray) -> np.ndarray:
    """int32 labels 1..n of the 26-connected 3D components of a (z, y, x) mask."""
    labels, _ = ndimage.label(np.asarray(mask, bool), structure=_CONNECTIVITY_26)
    return labels.astype(np.int32)


@dataclass(frozen=True)
class NoduleMeasurement:
    """One nodule of a mask (voxel indices are ``(z, y, x)`` of the mask's grid).

    ``index`` numbers the nodules 1.. in :func:`measure_nodules` order (by first slice);
    ``labels`` are the label values inside it; ``bbox`` is ``((z0, z1), (y0, y1), (x0, x1))``
    with exclusive ends; ``slice_range`` the first and last slice (inclusive).
    """

    index: int
    labels: tuple[int, ...]
    n_voxels: int
    volume_mm3: float
    equivalent_diameter_mm: float
    longest_axial_diameter_mm: float
    longest_axial_slice: int
    slice_range: tuple[int, int]
    centroid_zyx: tuple[float, float, float]
    bbox: tuple[tuple[int, int], tuple[int, int], tuple[int, int]]

    @property
    def centre_slice(self) -> int:
        """The slice of the centroid, kept inside the nodule's slice range."""
        return int(np.clip(round(self.centroid_zyx[0]), *self.slice_range))


def _check_labels(array: np.ndarray) -> np.ndarray:
    if array.ndim != 3:
        raise InvalidVolumeError(f"expected a 3D (z, y, x) mask, got shape {array.shape}.")
    if array.dtype.kind not in "biu":
        raise InvalidVolumeError(
            f"a mask holds integer labels, got {array.dtype}; threshold or round it first.")
    if array.dtype.kind == "i" and array.size and array.min() < 0:
        raise InvalidVolumeError("the mask holds negative labels; labels are 0 (background) or positive.")
    return array


def _mask_and_spacing(mask: np.ndarray | Volume, spacing: Sequence[float] | None) -> tuple[np.ndarray, tuple]:
    if isinstance(mask, Volume):
        array, spacing = np.asarray(mask.array), mask.spacing if spacing is None else spacing
    else:
        array = np.asarray(mask)
        if spacing is None:
            raise InvalidVolumeError(
                "measure_nodules: give the voxel spacing (z, y, x) in mm, or a mask Volume.")
    _check_labels(array)
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != 3 or not all(np.isfinite(spacing)) or min(spacing) <= 0:
        raise InvalidVolumeError(
            f"measure_nodules: spacing must be three positive numbers (mm), got {spacing}.")
    return array, spacing


def _groups(array: np.ndarray, by: str) -> tuple[np.ndarray, list[int], list]:
    """An integer map of group ids, the ids in first-slice order, and ``find_objects`` boxes by id."""
    if by not in GROUPINGS:
        raise InvalidVolumeError(f"nodules are grouped by one of {GROUPINGS}, got {by!r}.")
    if by == "components":
        ids_map, n = ndimage.label(array != 0, structure=_CONNECTIVITY_26)
        # ndimage.label numbers in raster order: by first slice already
        return ids_map, list(range(1, n + 1)), ndimage.find_objects(ids_map)
    ids_map = array if array.dtype.kind in "iu" else array.astype(np.uint8)
    boxes = ndimage.find_objects(ids_map)
    ids = sorted((v for v in range(1, len(boxes) + 1) if boxes[v - 1] is not None),
                 key=lambda v: (boxes[v - 1][0].start, v))
    return ids_map, ids, boxes


def components_reaching(labels: np.ndarray, spacing: Sequence[float], min_diameter_mm: float) -> np.ndarray:
    """Per label value 0..max of ``labels``: True where that component's equivalent sphere diameter is
    at least ``min_diameter_mm`` (its volume at least the sphere's); index 0, the background, is False."""
    voxels = np.bincount(np.asarray(labels).ravel())
    keep = voxels * float(np.prod(spacing)) >= np.pi / 6.0 * float(min_diameter_mm) ** 3
    keep[0] = False
    return keep


def drop_small_components(mask: np.ndarray, spacing: Sequence[float], min_diameter_mm: float) -> np.ndarray:
    """``mask`` (bool) without its 26-connected components whose equivalent sphere diameter is below
    ``min_diameter_mm`` (LIDC's readers outline nodules of 3 mm and more)."""
    labels = label_nodules(mask)
    if min_diameter_mm <= 0 or not labels.any():
        return labels > 0
    return components_reaching(labels, spacing, min_diameter_mm)[labels]


def nodule_label_map(mask: np.ndarray | Volume, by: str = "components") -> tuple[np.ndarray, int]:
    """``(map, n)``: every voxel of nodule ``k`` (1..n, as :func:`measure_nodules` numbers them) set
    to ``k``, 0 elsewhere (uint16)."""
    array = _check_labels(np.asarray(mask.array if isinstance(mask, Volume) else mask))
    ids_map, ids, boxes = _groups(array, by)
    if len(ids) > np.iinfo(np.uint16).max:
        raise InvalidVolumeError(
            f"the mask holds {len(ids)} nodules; at most 65535 can be stored in a label map.")
    lookup = np.zeros(len(boxes) + 1, np.uint16)
    lookup[ids] = np.arange(1, len(ids) + 1)
    return lookup[ids_map], len(ids)


def longest_axial_diameter_mm(plane: np.ndarray, spacing_yx: Sequence[float]) -> float:
    """Greatest distance (mm) between two pixel centres of a 2D mask (0 for fewer than two pixels)."""
    plane = np.asarray(plane, bool)
    boundary = plane & ~ndimage.binary_erosion(plane)
    points = np.argwhere(boundary) * np.asarray(spacing_yx, float)
    if len(points) < 2:
        return 0.0
    if len(points) > _HULL_ABOVE:
        from scipy.spatial import ConvexHull, QhullError

        try:
            points = points[ConvexHull(points).vertices]
        except QhullError:  # collinear points: keep them all
            pass
    return float(pdist(points).max())


def measure_nodules(mask: np.ndarray | Volume, spacing: Sequence[float] | None = None, *,
                    by: str = "components") -> list[NoduleMeasurement]:
    """Measure every nodule of ``mask`` (a label array with ``spacing`` (z, y, x) mm, or a Volume)."""
    array, spacing = _mask_and_spacing(mask, spacing)
    ids_map, ids, boxes = _groups(array, by)
    voxel_mm3 = float(np.prod(spacing))
    out: list[NoduleMeasurement] = []
    for k, group in enumerate(ids, start=1):
        box = boxes[group - 1]
        inside = ids_map[box] == group
        n_voxels = int(np.count_nonzero(inside))
        zz, yy, xx = np.nonzero(inside)
        centroid = (zz.mean() + box[0].start, yy.mean() + box[1].start, xx.mean() + box[2].start)
        diameters = [longest_axial_diameter_mm(inside[i], spacing[1:]) for i in range(inside.shape[0])]
        widest = int(np.argmax(diameters))
        volume = n_voxels * voxel_mm3
        out.append(NoduleMeasurement(
            index=k,
            labels=tuple(int(v) for v in np.unique(array[box][inside])),
            n_voxels=n_voxels,
            volume_mm3=volume,
            equivalent_diameter_mm=equivalent_diameter_3d(volume),
            longest_axial_diameter_mm=float(diameters[widest]),
            longest_axial_slice=box[0].start + widest,
            slice_range=(box[0].start, box[0].stop - 1),
            centroid_zyx=tuple(float(c) for c in centroid),
            bbox=tuple((s.start, s.stop) for s in box),
        ))
    return out
