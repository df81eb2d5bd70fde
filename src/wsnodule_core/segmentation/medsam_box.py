"""LiteMedSAM inside boxes a person gives, as a :class:`~wsnodule_core.segmentation.base.Segmenter`.

Boxes are voxel boxes ``(z0, y0, x0, z1, y1, x1)``, end exclusive, as
:func:`~wsnodule_core.foundation.segment_box` takes them (refused when they reach outside the CT), or
world boxes ``(x0, y0, z0, x1, y1, z1)`` in patient LPS mm (any two opposite corners), which take every
voxel they overlap, clipped to the CT (refused when they miss it). Label ``i`` of the mask is what
LiteMedSAM drew in box ``i`` (voxel boxes first, then world boxes); a voxel two boxes claim keeps the
lower label, and a box drawn empty leaves its label unused.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from wsnodule_core.errors import PromptError, SegmentationCancelled
from wsnodule_core.io.volume import Volume
from wsnodule_core.segmentation.base import LUNGS_AUTO, Cancel, Lungs, Progress, SegmentationResult

MEDSAM_BOX_KIND = "medsam-box"
VoxelBox = tuple[int, int, int, int, int, int]


def world_box_voxels(volume: Volume, box_xyz: Sequence[float]) -> VoxelBox:
    """The voxel box (end exclusive) of the voxels the world box ``(x0, y0, z0, x1, y1, z1)`` mm overlaps."""
    from wsnodule_core.data.tumour_boxes import WorldBox
    from wsnodule_core.pw4medseg.world_boxes import world_box_on_grid

    values = np.asarray(box_xyz, float).reshape(-1)
    if values.size != 6 or not np.all(np.isfinite(values)):
        raise PromptError(f"a world box is six finite numbers (x0, y0, z0, x1, y1, z1) mm; got {tuple(box_xyz)}.")
    corners = values.reshape(2, 3)
    on_grid = world_box_on_grid(volume, WorldBox(tuple(corners.min(axis=0)), tuple(corners.max(axis=0))))
    return (*(int(v) for v in on_grid.lo), *(int(v) + 1 for v in on_grid.hi))  # type: ignore[return-value]


def prompt_boxes(volume: Volume, boxes_zyx: Sequence[Sequence[int]] = (),
                 boxes_world: Sequence[Sequence[float]] = ()) -> tuple[VoxelBox, ...]:
    """Every box as a checked voxel box of ``volume`` (voxel boxes first); at least one is needed."""
    from wsnodule_core.foundation.segment import check_box_zyx

    if not len(boxes_zyx) and not len(boxes_world):
        raise PromptError("medsam-box segments inside boxes and none was given: give at least one voxel box "
                          "(z0, y0, x0, z1, y1, x1), end exclusive (--box), or world box (x0, y0, z0, x1, y1, z1) "
                          "mm (--box-world).")
    return (tuple(check_box_zyx(volume, box) for box in boxes_zyx)
            + tuple(world_box_voxels(volume, box) for box in boxes_world))


@dataclass(frozen=True, eq=False)
class BoxPromptSegmenter:
    """LiteMedSAM (``model``, loaded) in each box (:func:`prompt_boxes`); ``options``: keyword arguments
    of :func:`~wsnodule_core.foundation.segment_box` (``cache``, ``context``, ``min_side_mm``, ``window``).
    """

    model: Any
    boxes_zyx: tuple[tuple[int, ...], ...] = ()
    boxes_world: tuple[tuple[float, ...], ...] = ()
    options: tuple[tuple[str, Any], ...] = ()
    name: str = "LiteMedSAM in given boxes"
    kind: str = MEDSAM_BOX_KIND
    needs_lungs = False

    def segment(self, volume: Volume, *, lungs: Lungs = LUNGS_AUTO, progress: Progress | None = None,
                cancel: Cancel | None = None) -> SegmentationResult:
        from wsnodule_core.foundation.segment import segment_box

        boxes = prompt_boxes(volume, self.boxes_zyx, self.boxes_world)
        labels = np.zeros(volume.shape, np.int32)
        for done, box in enumerate(boxes):
            if cancel is not None and cancel():
                raise SegmentationCancelled(f"box segmentation was cancelled after {done} box(es).")
            drawn = np.asarray(segment_box(volume, box, model=self.model, cancel=cancel,
                                           **dict(self.options)).array) > 0
            labels[drawn & (labels == 0)] = done + 1
            if progress is not None:
                progress(done + 1, len(boxes))
        mask = volume.with_array(labels)
        return SegmentationResult(mask, {"mask": mask}, self.name, {}, None, boxes)
