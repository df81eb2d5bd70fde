"""Training slices of one volume in memory (e.g. the CT open in napari and the mask drawn on it).

The mask gives the slice labels (positives hold at least ``min_nodule_area_mm2`` of nodule);
lungs are segmented when not given. With a single volume there is no subject-level split, so a
random fraction of each class is held out for validation (neighbouring slices make it optimistic).
"""

from __future__ import annotations

import numpy as np

from wsnodule_core.errors import GeometryMismatchError, TrainingDataError
from wsnodule_core.io.volume import Volume
from wsnodule_core.data.slices import SliceConfig, SliceSet, slices_from_arrays


def volume_training_slices(volume: Volume, mask: np.ndarray | Volume, config: SliceConfig, *,
                           lungs: np.ndarray | None = None, val_fraction: float = 0.2, seed: int = 0,
                           name: str = "volume") -> tuple[SliceSet, SliceSet | None]:
    """``(train, val)`` slices of ``volume`` labelled by the nodule ``mask`` (any label > 0).

    ``val`` is None when either class has fewer than two slices (nothing can be held out).
    Raises :class:`TrainingDataError` when the mask is empty or the slices lack a class.
    """
    array = np.asarray(mask.array if isinstance(mask, Volume) else mask)
    if array.shape != volume.shape:
        raise GeometryMismatchError(f"the mask has shape {array.shape} but the image has {volume.shape}; "
                                    "use the mask drawn on this image.")
    if not np.any(array > 0):
        raise TrainingDataError("the mask has no labelled voxel: paint the nodules (any label above 0) "
                                "before training on this volume.")
    if lungs is None:
        from wsnodule_core.data.lung import segment_lungs

        lungs = segment_lungs(volume).lungs
    slices = slices_from_arrays(name, volume, np.asarray(lungs, bool), config=config, nodule_mask=array)
    if slices.n_positive == 0:
        raise TrainingDataError(
            f"no slice holds {config.min_nodule_area_mm2:g} mm2 of nodule, so there is no positive slice; "
            "paint the nodules fully or lower the minimum nodule area.")
    if slices.n_negative == 0:
        raise TrainingDataError("every lung slice holds a nodule, so there is no negative slice; the volume "
                                "needs slices through the lungs without nodules.")
    if min(slices.n_positive, slices.n_negative) < 2:
        return slices, None
    train, val = slices.split(val_fraction, seed)
    return train, (val if len(val) else None)
