"""Grid and mask helpers for the lung segmentation: block pooling, physical (mm) morphology, hole filling."""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.morphology import convex_hull_image

Spacing = tuple[float, float, float]

# 2D (in-plane) connectivity expressed as a 3D structure: no link between slices.
PLANE_CROSS = np.zeros((3, 3, 3), dtype=bool)
PLANE_CROSS[1] = ndimage.generate_binary_structure(2, 1)


def block_mean(array: np.ndarray, factor: int) -> np.ndarray:
    """Mean of ``factor`` x ``factor`` in-plane blocks (edges padded by repetition)."""
    data = np.asarray(array, dtype=np.float32)
    if factor == 1:
        return data
    nz, ny, nx = data.shape
    py, px = (-ny) % factor, (-nx) % factor
    if py or px:
        data = np.pad(data, ((0, 0), (0, py), (0, px)), mode="edge")
    blocks = data.reshape(nz, data.shape[1] // factor, factor, data.shape[2] // factor, factor)
    return blocks.mean(axis=(2, 4))


def upsample(mask: np.ndarray, factor: int, shape: tuple[int, int, int]) -> np.ndarray:
    """Nearest-neighbour in-plane upsampling of a coarse mask back to ``shape``."""
    if factor == 1:
        return mask.copy()
    full = np.repeat(np.repeat(mask, factor, axis=1), factor, axis=2)
    return np.ascontiguousarray(full[:, : shape[1], : shape[2]])


def ball_footprint(radius_mm: float, spacing: Spacing) -> np.ndarray:
    """Voxels of a ball of ``radius_mm`` on a grid of ``spacing`` (an ellipsoid in voxels)."""
    half = [int(np.floor(radius_mm / s)) for s in spacing]
    grids = np.ogrid[tuple(slice(-h, h + 1) for h in half)]
    return sum((g * s) ** 2 for g, s in zip(grids, spacing)) <= radius_mm**2 + 1e-9


_MAX_FOOTPRINT = 125  # beyond this many voxels the distance transform is faster


def ball_dilate(mask: np.ndarray, radius_mm: float, spacing: Spacing) -> np.ndarray:
    """Dilation by a ball of ``radius_mm`` (anisotropic spacing handled)."""
    if not mask.any():
        return mask.copy()
    footprint = ball_footprint(radius_mm, spacing)
    if footprint.sum() <= _MAX_FOOTPRINT:
        return ndimage.binary_dilation(mask, footprint)
    return ndimage.distance_transform_edt(~mask, sampling=spacing) <= radius_mm


def ball_erode(mask: np.ndarray, radius_mm: float, spacing: Spacing) -> np.ndarray:
    """Erosion by a ball of ``radius_mm``; the array border does not erode."""
    if mask.all():
        return mask.copy()
    footprint = ball_footprint(radius_mm, spacing)
    if footprint.sum() <= _MAX_FOOTPRINT:
        return ndimage.binary_erosion(mask, footprint, border_value=1)
    return ndimage.distance_transform_edt(mask, sampling=spacing) > radius_mm


def ball_open(mask: np.ndarray, radius_mm: float, spacing: Spacing) -> np.ndarray:
    """Opening by a ball of ``radius_mm``: removes bridges thinner than about twice the radius."""
    return ball_dilate(ball_erode(mask, radius_mm, spacing), radius_mm, spacing)


def ball_close(mask: np.ndarray, radius_mm: float, spacing: Spacing) -> np.ndarray:
    """Closing by a ball of ``radius_mm``."""
    return ball_erode(ball_dilate(mask, radius_mm, spacing), radius_mm, spacing)


def padded_box(mask: np.ndarray, spacing: Spacing, margin_mm: float) -> tuple[slice, slice, slice]:
    """Bounding box of ``mask`` grown by ``margin_mm`` on every side (clipped to the array)."""
    box = ndimage.find_objects(mask.astype(np.uint8))[0]
    margin = [int(np.ceil(margin_mm / s)) for s in spacing]
    grown = (slice(max(0, sl.start - m), min(n, sl.stop + m)) for sl, m, n in zip(box, margin, mask.shape))
    return tuple(grown)  # type: ignore[return-value]


def component_sizes(labels: np.ndarray, count: int) -> np.ndarray:
    """Voxel count of labels ``0..count`` (index 0 is the background)."""
    return np.bincount(labels.ravel(), minlength=count + 1)


def z_supported(
    candidates: np.ndarray,
    labels: np.ndarray,
    count: int,
    lung: np.ndarray,
    min_fraction: float,
    inferior_step: int,
) -> np.ndarray:
    """Which 3D components of ``candidates`` rest on lung (have lung just below them).

    For each component, look at the voxels one slice further inferior (``inferior_step`` is the
    index step towards the feet, +1 or -1) that are not in the component. A vessel or a nodule
    inside the lung, even one that reaches the apex or the chest wall above, has lung below it;
    the liver dome or bowel seen as a ring of lung in an axial slice has abdomen below it.
    Returns a boolean array over labels ``0..count`` (True: accept); a component with no
    neighbour below (it reaches the last slice) passes.
    """
    if inferior_step > 0:
        here, there, lab_here, lung_there = candidates[:-1], candidates[1:], labels[:-1], lung[1:]
    else:
        here, there, lab_here, lung_there = candidates[1:], candidates[:-1], labels[1:], lung[:-1]
    edge = here & ~there
    lab = lab_here[edge]
    total = np.bincount(lab, minlength=count + 1)
    in_lung = np.bincount(lab, weights=lung_there[edge], minlength=count + 1)
    fraction = np.where(total > 0, in_lung / np.maximum(total, 1), 1.0)
    accept = fraction >= min_fraction
    accept[0] = False
    return accept


def fill_enclosed_holes(lung: np.ndarray, inferior_step: int, min_fraction: float = 0.5) -> np.ndarray:
    """Per-slice hole filling, keeping only holes that rest on lung (see :func:`z_supported`)."""
    filled = ndimage.binary_fill_holes(lung, structure=PLANE_CROSS)
    holes = filled & ~lung
    if not holes.any():
        return lung.copy()
    labels, count = ndimage.label(holes)
    accept = z_supported(holes, labels, count, lung, min_fraction, inferior_step)
    return lung | accept[labels]


def fill_border_pockets(
    lung: np.ndarray,
    spacing: Spacing,
    *,
    max_area_mm2: float,
    max_depth_mm: float,
    max_length_mm: float,
    forbidden: np.ndarray,
    inferior_step: int,
    min_fraction: float = 0.5,
) -> np.ndarray:
    """Fill small concave pockets of the lung border (juxtapleural nodules), slice by slice.

    A pocket is the part of a slice's convex hull of the lung that is not lung. Pockets are
    grouped in 3D; a group is filled only when, in every slice, it is at most ``max_area_mm2``
    and reaches at most ``max_depth_mm`` inside the hull, it spans at most ``max_length_mm``
    along z (a nodule is short; the gutter beside the spine runs the whole lung), it touches no
    ``forbidden`` voxel (the other lung, the airways) and it rests on lung (:func:`z_supported`).
    The large concavities (heart, hilum, liver dome, the space between lobes in a crescent slice)
    fail these tests, so the border does not bridge into the mediastinum or the abdomen.
    """
    hull = np.zeros_like(lung)
    for z in np.flatnonzero(lung.any(axis=(1, 2))):
        hull[z] = convex_hull_image(lung[z])
    pockets = hull & ~lung
    if not pockets.any():
        return lung.copy()
    labels, count = ndimage.label(pockets)
    nz = lung.shape[0]
    z_index = np.broadcast_to(np.arange(nz)[:, None, None], lung.shape)
    lab = labels[pockets]
    per_slice = np.bincount(lab * nz + z_index[pockets], minlength=(count + 1) * nz).reshape(count + 1, nz)
    area_ok = per_slice.max(axis=1) * spacing[1] * spacing[2] <= max_area_mm2
    length_ok = np.count_nonzero(per_slice, axis=1) * spacing[0] <= max_length_mm
    # Depth: in-plane distance to the outside of the hull (a huge z spacing keeps it 2D).
    depth = ndimage.distance_transform_edt(hull, sampling=(1e6, spacing[1], spacing[2]))
    max_depth = np.zeros(count + 1)
    np.maximum.at(max_depth, lab, depth[pockets])
    depth_ok = max_depth <= max_depth_mm
    touches = np.bincount(labels[forbidden & pockets], minlength=count + 1) > 0
    supported = z_supported(pockets, labels, count, lung, min_fraction, inferior_step)
    accept = area_ok & depth_ok & length_ok & ~touches & supported
    accept[0] = False
    return lung | accept[labels]
