"""LiteMedSAM's soft answer to a box: the sigmoid of its mask logits, on the CT's grid.

:func:`~wsnodule_core.foundation.segment.segment_box` thresholds the logits at 0; a pseudo-label
wants the probability itself. Each slice of the box is cropped, encoded (cached) and decoded as in
``segment_box``, and ``sigmoid(logits)`` is resampled back into the crop's pixels; voxels outside the
box's slices and outside each slice's crop are 0.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from wsnodule_core.errors import SegmentationCancelled
from wsnodule_core.foundation.embeddings import EmbeddingCache, encode_images
from wsnodule_core.foundation.image import MEDSAM_WINDOW, to_model_image
from wsnodule_core.foundation.lite_medsam import LiteMedSam, load_lite_medsam
from wsnodule_core.foundation.segment import _crop, _region, check_box_zyx, decode_box
from wsnodule_core.io.volume import Volume


def box_probability(volume: Volume, box_zyx: Sequence[int], *, model: LiteMedSam | None = None,
                    device: str = "auto", window: Sequence[float] = MEDSAM_WINDOW, context: float = 2.5,
                    min_side_mm: float = 30.0, cache: EmbeddingCache | None = None,
                    cancel: Callable[[], bool] | None = None) -> Volume:
    """``sigmoid`` of LiteMedSAM's logits (float32 in [0, 1], on ``volume``'s grid) for a 3D box.

    ``box_zyx`` is ``(z0, y0, x0, z1, y1, x1)`` voxel indices, end exclusive; every slice of it is
    prompted with its in-plane box. ``probability > 0.5`` is :func:`segment_box`'s mask.
    """
    z0, y0, x0, z1, y1, x1 = check_box_zyx(volume, box_zyx)
    model = model if model is not None else load_lite_medsam(device)
    array = np.asarray(volume.array)
    spacing = np.asarray(volume.spacing[1:], float)
    out = np.zeros(volume.shape, np.float32)
    box = (y0, x0, y1, x1)
    start, size = _region(box, spacing, context, min_side_mm)
    local = np.asarray(box, float) - np.r_[start, start]
    lo, hi = np.maximum(start, 0), np.minimum(start + size, array.shape[1:])
    for z in range(z0, z1):
        if cancel is not None and cancel():
            raise SegmentationCancelled(f"LiteMedSAM box probability was cancelled at slice {z}.")
        image, letterbox = to_model_image(_crop(array[z], start, size), spacing, window=window)
        embedding = encode_images(model, image[None], cache=cache)[0]
        logits = letterbox.logits_to_slice(decode_box(model, embedding, letterbox.box_to_input(local)))
        p = 0.5 * (1.0 + np.tanh(0.5 * logits))  # a sigmoid that does not overflow
        rows, cols = slice(lo[0] - start[0], hi[0] - start[0]), slice(lo[1] - start[1], hi[1] - start[1])
        out[z, lo[0]:hi[0], lo[1]:hi[1]] = p[rows, cols]
    return volume.with_array(out)
