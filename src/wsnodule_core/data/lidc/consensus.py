"""Merging the readers' masks of one nodule: consensus at a level, or STAPLE, and its size."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np
import SimpleITK as sitk

from wsnodule_core.data.lidc.annotations import LidcNodule
from wsnodule_core.data.lidc.scan import AnnotationMask, common_frame, reader_masks, scan_grid
from wsnodule_core.errors import LidcParameterError

MergeMethod = Literal["consensus", "staple"]


@dataclass(frozen=True, eq=False)
class MergedMask:
    """A merged nodule mask, cropped like :class:`AnnotationMask` (``offset`` in the full grid)."""

    mask: np.ndarray
    offset: tuple[int, int, int]
    annotation_ids: tuple[int, ...]
    method: str

    def in_grid(self, shape: Sequence[int]) -> np.ndarray:
        return AnnotationMask(-1, self.mask, self.offset).in_grid(shape)


def consensus_mask(stack: np.ndarray, level: float = 0.5) -> np.ndarray:
    """Voxels marked by at least a fraction ``level`` of the readers (``stack``: readers first).

    Same rule as ``pylidc.utils.consensus(anns, clevel=level)``.
    """
    if not 0.0 < level <= 1.0:
        raise LidcParameterError(f"consensus level must be in (0, 1], got {level}; e.g. 0.5 (half of the "
                                 "readers), as pylidc's consensus.")
    return np.mean(stack, axis=0) >= level


def staple_mask(stack: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """STAPLE (Warfield et al. 2004, SimpleITK) of the readers' masks, thresholded.

    ``threshold`` applies to STAPLE's per-voxel probability of foreground. A single
    reader's mask is returned as it is (STAPLE needs two raters).
    """
    if len(stack) == 1:
        return stack[0].copy()
    images = [sitk.GetImageFromArray(m.astype(np.uint8)) for m in stack]
    probability = sitk.GetArrayFromImage(sitk.STAPLE(images, 1.0))
    return probability >= threshold


def merge_reader_masks(
    masks: Sequence[AnnotationMask],
    method: MergeMethod = "consensus",
    level: float = 0.5,
) -> MergedMask:
    """Merge one nodule's reader masks on their union bounding box.

    Parameters
    ----------
    masks
        The readers' masks (see :func:`~wsnodule_core.data.lidc.scan.reader_masks`).
    method
        ``'consensus'``: voxels marked by >= ``level`` of the readers (pylidc's consensus);
        ``'staple'``: STAPLE probability >= ``level``, as the NAM paper merges readers.
    """
    stack, offset = common_frame(masks)
    if method == "consensus":
        merged = consensus_mask(stack, level)
    elif method == "staple":
        merged = staple_mask(stack, level)
    else:
        raise LidcParameterError(f"merge method must be 'consensus' or 'staple', got {method!r}.")
    return MergedMask(merged, offset, tuple(m.annotation_id for m in masks), method)


def volume_mm3(mask: np.ndarray, spacing: Sequence[float]) -> float:
    """Voxel count x voxel volume."""
    return float(np.count_nonzero(mask) * np.prod([float(s) for s in spacing]))


def equivalent_diameter_mm(volume: float) -> float:
    """Diameter of the sphere of the given volume (mm^3)."""
    return float((6.0 * volume / np.pi) ** (1.0 / 3.0))


@dataclass(frozen=True)
class NoduleSize:
    """Sizes of one nodule: ``diameter_mm`` is the mean of the readers' pylidc diameters,
    ``volume_mm3`` the merged mask's voxel count x voxel volume, ``equivalent_diameter_mm``
    the diameter of the sphere of that volume, ``reader_volumes_mm3`` pylidc's contour-area
    volumes (``Annotation.volume``) of each reader."""

    diameter_mm: float
    volume_mm3: float
    equivalent_diameter_mm: float
    reader_volumes_mm3: tuple[float, ...]


def nodule_size(nodule: LidcNodule, method: MergeMethod = "consensus", level: float = 0.5) -> NoduleSize:
    """:class:`NoduleSize` of a nodule, merging its readers with :func:`merge_reader_masks`."""
    merged = merge_reader_masks(reader_masks(nodule), method, level)
    volume = volume_mm3(merged.mask, scan_grid(nodule.annotations[0].scan).spacing)
    return NoduleSize(
        diameter_mm=nodule.diameter_mm,
        volume_mm3=volume,
        equivalent_diameter_mm=equivalent_diameter_mm(volume),
        reader_volumes_mm3=tuple(float(a.volume) for a in nodule.annotations),
    )
