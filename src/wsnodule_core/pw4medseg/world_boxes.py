"""World boxes (e.g. Lung-PET-CT-Dx tumour boxes) as PW4MedSeg box annotations on any volume grid.

A world box (:class:`~wsnodule_core.data.tumour_boxes.WorldBox`, LPS ``(x, y, z)`` mm) becomes a
:class:`~wsnodule_core.pw4medseg.annotations.BoxAnnotation` of a grid: every voxel the box overlaps (rounded
outward, so the box still holds its tumour on a coarser grid; on the series' own grid it gives back exactly
the boxed voxels), clipped to the grid. A box entirely outside the grid is refused. The result feeds
:func:`~wsnodule_core.pw4medseg.pseudo_labels.pseudo_label` and so
:func:`~wsnodule_core.pw4medseg.volume_training.train_on_volume`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from wsnodule_core.data.tumour_boxes import SeriesBoxes, WorldBox
from wsnodule_core.errors import BoxOutsideGridError, GeometryMismatchError
from wsnodule_core.image.resample import Grid
from wsnodule_core.io.volume import Volume
from wsnodule_core.pw4medseg.annotations import BoxAnnotation, SparseAnnotations

#: A box must overlap a voxel by more than this fraction of it to take the voxel (rounding noise is not overlap).
_EPS = 1e-3


def _as_volume(grid: Volume | Grid) -> Volume:
    if isinstance(grid, Volume):
        return grid
    # a zero-stride array: the grid's geometry through Volume's own conversions, no memory
    return Volume(np.broadcast_to(np.zeros((), np.uint8), grid.shape), grid.spacing, grid.origin, grid.direction)


def world_box_on_grid(grid: Volume | Grid, box: WorldBox, nodule: int | None = None) -> BoxAnnotation:
    """The voxels of ``grid`` that ``box`` overlaps, clipped to the grid, as a 3D box annotation.

    Raises
    ------
    BoxOutsideGridError
        The box does not overlap the grid at all.
    """
    volume = _as_volume(grid)
    idx = volume.world_to_index(box.corners())
    lo = np.floor(idx.min(axis=0) + 0.5 + _EPS).astype(int)
    hi = np.ceil(idx.max(axis=0) - 0.5 - _EPS).astype(int)
    hi = np.maximum(hi, lo)  # a box thinner than a voxel takes the voxel it lies in
    shape = np.asarray(volume.shape)
    if np.any(hi < 0) or np.any(lo > shape - 1):
        raise BoxOutsideGridError(
            f"the world box {box.lo}..{box.hi} (x, y, z) mm{f' ({box.name})' if box.name else ''} lies outside "
            f"the volume grid (shape {volume.shape}, origin {volume.origin}); it belongs to another scan or "
            "another crop. Use the volume the boxes were read from, or a grid that covers them.")
    return BoxAnnotation(tuple(np.clip(lo, 0, shape - 1)), tuple(np.clip(hi, 0, shape - 1)), nodule=nodule)


def boxes_on_grid(grid: Volume | Grid, boxes: Sequence[WorldBox], *, first_nodule: int = 1) -> SparseAnnotations:
    """World boxes as the 3D box annotations of ``grid`` (nodules numbered from ``first_nodule``).

    Parameters
    ----------
    grid
        The volume the annotations are for (the series itself or a resampled copy), or its
        :class:`~wsnodule_core.image.resample.Grid`.
    boxes
        World boxes, e.g. ``SeriesBoxes.tumours`` of :func:`~wsnodule_core.data.tumour_boxes.read_tumour_boxes`.

    Examples
    --------
    >>> from wsnodule_core.data.tumour_boxes import read_tumour_boxes
    >>> series = read_tumour_boxes(subjects=["A0001"])[0]            # doctest: +SKIP
    >>> ct = read_volume(series.folder)                              # doctest: +SKIP
    >>> label = pseudo_label(ct, boxes_on_grid(ct, series.tumours))  # doctest: +SKIP
    """
    volume = _as_volume(grid)
    return SparseAnnotations(volume.shape, boxes=tuple(
        world_box_on_grid(volume, box, first_nodule + k) for k, box in enumerate(boxes)))


def slice_boxes_on_series(volume: Volume, series: SeriesBoxes) -> SparseAnnotations:
    """The 2D (planar) slice boxes of ``series`` on ``volume``, which must be that series as read from
    DICOM: each box goes on the slice holding its SOPInstanceUID, numbered by the tumour box holding it."""
    uids = tuple(volume.metadata.extra.get("sop_instance_uids", ()))
    if volume.metadata.series_uid != series.series_uid or volume.shape != tuple(series.shape) or not uids:
        raise GeometryMismatchError(
            f"slice boxes belong to series {series.series_uid} {tuple(series.shape)}, but the volume is "
            f"{volume.metadata.series_uid or 'not a DICOM series'} {volume.shape}; read the series' own DICOM "
            f"folder ({series.folder}), or use boxes_on_grid for another grid.")
    z_of = {uid: z for z, uid in enumerate(uids)}
    nodule_of = {z: k + 1 for k, t in enumerate(series.tumours) for z in t.slices}
    boxes = []
    for b in series.slice_boxes:
        z = z_of.get(b.sop_uid)
        if z is None:
            raise GeometryMismatchError(f"slice {b.sop_uid} of {b.source or 'a slice box'} is not in the volume "
                                        f"read from {volume.metadata.source_path}; read the whole series.")
        boxes.append(BoxAnnotation.on_slice(z, b.lo_yx, b.hi_yx, nodule=nodule_of.get(b.z)))
    return SparseAnnotations(volume.shape, boxes=tuple(boxes))
