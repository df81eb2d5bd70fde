"""The two lungs: split them where they touch and name them from the world geometry."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from wsnodule_core.data.lung._morphology import component_sizes
from wsnodule_core.io.volume import Volume

Spacing = tuple[float, float, float]

# Depths (mm) tried, shallow first, when looking for the two lungs' cores in a touching pair.
_SPLIT_DEPTHS_MM = (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 12.0, 15.0, 18.0, 22.0, 26.0, 30.0)


def centroid_world(mask: np.ndarray, volume: Volume, factor: int, offset: np.ndarray) -> np.ndarray:
    """World (x, y, z) of the centroid of a coarse mask whose index 0 is at coarse index ``offset``."""
    zyx = np.array(ndimage.center_of_mass(mask)) + offset
    # Coarse pixel k covers fine pixels k*f .. k*f+f-1: its centre is at fine index k*f + (f-1)/2.
    zyx[1:] = zyx[1:] * factor + (factor - 1) / 2.0
    return volume.index_to_world(zyx)


def split_lungs(
    lungs: np.ndarray, spacing: Spacing, volume: Volume
) -> tuple[np.ndarray, np.ndarray | None]:
    """Two masks (one lung each); the second is None when only one lung is found.

    Two large components side by side are the two lungs. Otherwise the lungs touch (anterior or
    posterior junction): the mask is cut at increasing depths of its distance transform until two
    large cores side by side appear; every voxel then joins the nearest core.
    """
    labels, count = ndimage.label(lungs)
    sizes = component_sizes(labels, count)
    sizes[0] = 0
    order = np.argsort(sizes)[::-1]
    markers = None
    if count >= 2 and _two_lungs(labels, sizes, order, spacing, volume):
        markers = np.where(labels == order[0], 1, 0) + np.where(labels == order[1], 2, 0)
    else:
        depth = ndimage.distance_transform_edt(lungs, sampling=spacing)
        for threshold in _SPLIT_DEPTHS_MM:
            deep, n = ndimage.label(depth > threshold)
            if n < 2:
                if n == 0:
                    break
                continue
            deep_sizes = component_sizes(deep, n)
            deep_sizes[0] = 0
            deep_order = np.argsort(deep_sizes)[::-1]
            if _two_lungs(deep, deep_sizes, deep_order, spacing, volume):
                markers = np.where(deep == deep_order[0], 1, 0) + np.where(deep == deep_order[1], 2, 0)
                break
    if markers is None:
        return lungs, None
    # Every lung voxel goes to the nearest marker (within the lungs' bounding box, for memory).
    box = ndimage.find_objects(lungs.astype(np.uint8))[0]
    sub = markers[box]
    _, nearest = ndimage.distance_transform_edt(sub == 0, sampling=spacing, return_indices=True)
    assigned = np.zeros(lungs.shape, dtype=np.uint8)
    assigned[box] = sub[tuple(nearest)]
    assigned[~lungs] = 0
    return assigned == 1, assigned == 2


def _two_lungs(
    labels: np.ndarray, sizes: np.ndarray, order: np.ndarray, spacing: Spacing, volume: Volume
) -> bool:
    """True when the two largest components are both large and lie side by side (left-right)."""
    if sizes[order[1]] < 0.1 * sizes[order[0]]:
        return False
    a, b = (np.array(ndimage.center_of_mass(labels == int(i))) for i in order[:2])
    # Coarse index offset -> fine index offset -> world (x, y, z) mm; world x is right-left.
    world = volume.affine[:3, :3] @ ((a - b) * np.asarray(spacing) / np.asarray(volume.spacing))
    return abs(world[0]) > max(abs(world[1]), abs(world[2]))


def name_sides(
    first: np.ndarray,
    second: np.ndarray | None,
    body: np.ndarray,
    volume: Volume,
    factor: int,
    offset: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """(left, right): the patient's left is +x in the LPS world frame.

    A single lung goes to the side of the body's centre it lies on; the other mask is empty.
    """
    if second is None:
        x_lung = centroid_world(first, volume, factor, offset)[0]
        x_body = centroid_world(body, volume, factor, offset)[0]
        empty = np.zeros_like(first)
        return (first, empty) if x_lung > x_body else (empty, first)
    x_first = centroid_world(first, volume, factor, offset)[0]
    if x_first > centroid_world(second, volume, factor, offset)[0]:
        return first, second
    return second, first
