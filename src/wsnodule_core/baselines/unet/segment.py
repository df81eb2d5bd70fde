"""Segmenting a CT volume with the U-Net baseline: every axial slice, back on the input grid.

Each slice is cut as in training (the lung-centred crop of the model's :class:`UNetConfig`),
all slices go through the network in batches, the probabilities are put back on the input grid
(bilinear where the crop was resampled, 0 outside the crop) and the thresholded mask is split
into 3D connected components, one label per nodule.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from scipy import ndimage

from wsnodule_core.baselines.unet.model import UNetSegmenter
from wsnodule_core.data.lung import CropResult, lung_crop, uncrop_mask
from wsnodule_core.errors import NamSegmentationError, SegmentationCancelled
from wsnodule_core.io.volume import Volume, check_mask_matches
from wsnodule_core.nodules import label_nodules
from wsnodule_core.training.device import device_of


@dataclass(frozen=True, eq=False)
class UNetSegmentation:
    """``mask``: int32 labels on the input grid (0 background, 1..n one per 3D-connected nodule);
    ``probability``: float32 nodule probability on the input grid (0 outside the crop)."""

    mask: Volume
    probability: Volume
    threshold: float

    @property
    def n_nodules(self) -> int:
        return int(self.mask.array.max()) if self.mask.array.size else 0


def uncrop_float(planes: np.ndarray, crop: CropResult, reference: Volume) -> np.ndarray:
    """Float maps (z, size, size) on a crop's grid put back on ``reference``'s grid (bilinear, 0 outside)."""
    if planes.shape != crop.volume.shape or reference.shape != crop.source_shape:
        raise NamSegmentationError(f"uncrop_float: maps {planes.shape} / reference {reference.shape} do not "
                                   f"match the crop ({crop.volume.shape} from {crop.source_shape}).")
    ny, nx = reference.shape[1:]
    if not crop.resampled:  # an exact window: copy
        out = np.zeros(reference.shape, np.float32)
        oy, ox = crop.offset_yx
        ys, xs = slice(max(0, oy), min(ny, oy + crop.size)), slice(max(0, ox), min(nx, ox + crop.size))
        if ys.start < ys.stop and xs.start < xs.stop:
            out[:, ys, xs] = planes[:, ys.start - oy:ys.stop - oy, xs.start - ox:xs.stop - ox]
        return out
    # source pixel (j, i) lies at crop pixel (j / scale_y - offset_y, i / scale_x - offset_x)
    matrix = np.array([1.0 / crop.scale_yx[0], 1.0 / crop.scale_yx[1]])
    offset = -np.asarray(crop.offset_yx, float)
    return np.stack([ndimage.affine_transform(np.asarray(p, np.float32), matrix, offset=offset,
                                              output_shape=(ny, nx), order=1, mode="constant", cval=0.0,
                                              prefilter=False) for p in planes])




def segment_volume_unet(
    model: UNetSegmenter,
    volume: Volume,
    lungs: np.ndarray | Volume | None = None,
    *,
    threshold: float = 0.5,
    batch_size: int = 8,
    progress: Callable[[int, int], None] | None = None,
    cancel: Callable[[], bool] | None = None,
) -> UNetSegmentation:
    """Segment the nodules of a CT volume (HU) with a trained U-Net.

    Parameters
    ----------
    model
        A :class:`UNetSegmenter` (e.g. from :func:`~wsnodule_core.baselines.unet.train.load_unet`);
        it stays on its device and its training flag is restored afterwards. Its config gives
        the crop (``input_size``, ``pixel_spacing_mm``) and the HU window.
    volume
        The CT.
    lungs
        Lung mask on ``volume``'s grid to centre the crop on; None segments the lungs first
        (:func:`wsnodule_core.data.lung.segment_lungs`).
    threshold
        Probability at or above which a pixel is nodule.
    batch_size
        Slices per forward pass.
    progress
        ``progress(done, total)`` after each batch (total = number of slices).
    cancel
        Polled before each batch; True raises :class:`~wsnodule_core.errors.SegmentationCancelled`.
    """
    from wsnodule_core.image.window import apply_window

    if not 0.0 < threshold < 1.0:
        raise NamSegmentationError(f"segment_volume_unet: threshold must lie in (0, 1), got {threshold}.")
    if batch_size < 1:
        raise NamSegmentationError(f"segment_volume_unet: batch_size must be >= 1, got {batch_size}.")
    config = model.config
    if lungs is None:
        from wsnodule_core.data.lung import segment_lungs

        lungs_array = segment_lungs(volume).lungs
    else:
        lungs_array = check_mask_matches(lungs, volume)
    crop = lung_crop(volume, np.asarray(lungs_array, bool), size=config.input_size,
                     pixel_spacing_mm=config.pixel_spacing_mm)
    source = crop.volume.array
    nz = volume.shape[0]
    device = device_of(model)
    probability = np.zeros(crop.volume.shape, np.float32)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, nz, batch_size):
                if cancel is not None and cancel():
                    raise SegmentationCancelled("the U-Net segmentation was cancelled before it finished; "
                                                "nothing was returned. Run it again to get a result.")
                stop = min(nz, start + batch_size)
                hu = torch.as_tensor(np.asarray(source[start:stop], np.float32)).to(device)[:, None]
                prob = model.probability(apply_window(hu, config.window))
                probability[start:stop] = prob[:, 0].cpu().numpy()
                if progress is not None:
                    progress(stop, nz)
    finally:
        model.train(was_training)
    mask = uncrop_mask(probability >= threshold, crop, volume)
    return UNetSegmentation(mask=volume.with_array(label_nodules(mask)),
                            probability=volume.with_array(uncrop_float(probability, crop, volume)),
                            threshold=float(threshold))
