"""A training-free nodule baseline: multi-scale Hessian "dot" enhancement inside the lungs.

Li, Sone and Doi (Med. Phys. 2003) showed that the eigenvalues of the Hessian tell blobs
(all three strongly negative for a bright blob) from vessels (two negative, one near zero). The
filter response ``|l3|^2 / |l1|`` (``|l1| >= |l2| >= |l3|``, all negative) is high on nodules and
low on vessels. Thresholding it, keeping components inside the lung and growing them over the
nodule's own intensity gives a mask with no training at all: the floor every learned method here
must beat, and the demo's segmenter until the NAM issue lands.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from scipy import ndimage

from wsnodule_core.errors import GeometryMismatchError
from wsnodule_core.image.filters import BLOB_SEED_RESPONSE, BLOB_SIGMAS_MM, blob_response
from wsnodule_core.io.volume import Volume

ProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class BlobFilterConfig:
    """Parameters of :func:`segment_blobs`; scales are Gaussian sigmas in millimetres."""

    sigmas_mm: Sequence[float] = BLOB_SIGMAS_MM
    response_threshold: float = BLOB_SEED_RESPONSE
    grow_threshold_hu: float = -450.0
    min_diameter_mm: float = 3.0
    max_diameter_mm: float = 35.0


@dataclass(frozen=True, eq=False)
class BlobSegmentation:
    """Result: ``mask`` (uint16 label per detected nodule) and the filter ``response`` map (computed in
    the search region, the lungs grown by two voxels; 0 elsewhere)."""

    mask: np.ndarray
    response: np.ndarray
    n_nodules: int


def segment_blobs(
    volume: Volume,
    lungs: np.ndarray,
    config: BlobFilterConfig = BlobFilterConfig(),
    progress: ProgressCallback | None = None,
) -> BlobSegmentation:
    """Segment nodule-like blobs inside ``lungs`` (a boolean mask on ``volume``'s grid)."""
    lungs = np.asarray(lungs, dtype=bool)
    if lungs.shape != volume.shape:
        raise GeometryMismatchError(
            f"the lung mask has shape {lungs.shape} but the volume has shape {volume.shape}; "
            "segment the lungs of this volume first (wsnodule_core.data.lung.segment_lungs)."
        )
    total = len(config.sigmas_mm) + 1
    # juxtapleural blobs sit on the lung border: accept seeds within a dilated lung
    search = ndimage.binary_dilation(lungs, iterations=2)
    response = blob_response(volume.array, volume.spacing, config.sigmas_mm, region=search,
                             progress=(lambda done, _: progress(done, total)) if progress else None)
    seeds = (response > config.response_threshold) & search
    grown = (volume.array > config.grow_threshold_hu) & search
    labels, n = ndimage.label(grown)
    keep = np.unique(labels[seeds])
    keep = keep[keep > 0]
    mask = np.zeros(volume.shape, dtype=np.uint16)
    voxel_mm3 = volume.voxel_volume_mm3
    next_label = 1
    objects = ndimage.find_objects(labels)
    for label in keep:
        sl = objects[label - 1]
        component = labels[sl] == label
        # a seed region grows along a vessel it touches: keep only the part near the seeds
        component &= ndimage.binary_dilation(seeds[sl], iterations=2)
        diameter = 2.0 * (3.0 * component.sum() * voxel_mm3 / (4.0 * np.pi)) ** (1.0 / 3.0)
        if config.min_diameter_mm <= diameter <= config.max_diameter_mm:
            mask[sl][component] = next_label
            next_label += 1
    if progress:
        progress(total, total)
    return BlobSegmentation(mask=mask, response=response, n_nodules=next_label - 1)
