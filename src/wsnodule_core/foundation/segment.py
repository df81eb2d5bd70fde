"""Box prompts -> masks with LiteMedSAM, slice by slice, on the CT's own grid.

Each prompted slice is cropped to a square region around its box (``context`` times the box's
larger side, at least ``min_side_mm``; padding outside the CT is air), so a nodule of a few
millimetres covers many of the model's 256 input pixels. The crop is encoded (cached), the box
decoded, and the mask resampled back into the crop's pixels. Boxes given on a few slices only are
interpolated between them and carried beyond them by the previous slice's mask (its bounding box
plus ``grow_px``) while the mask stands out from its surroundings: the model fills a box even on a
slice the nodule has left (on plain lung), so carrying stops once the mask's mean HU is less than
``min_contrast_hu`` above the median of the rest of its crop.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from wsnodule_core.errors import PromptError, SegmentationCancelled
from wsnodule_core.foundation.embeddings import EmbeddingCache, encode_images
from wsnodule_core.foundation.image import MEDSAM_WINDOW, Letterbox, to_model_image
from wsnodule_core.foundation.lite_medsam import LiteMedSam, load_lite_medsam
from wsnodule_core.image.window import AIR_HU
from wsnodule_core.io.volume import Volume

BoxYx = tuple[float, float, float, float]  # (y0, x0, y1, x1) pixel indices of one slice, end exclusive


@torch.no_grad()
def decode_box(model: LiteMedSam, embedding: torch.Tensor, box_xyxy: np.ndarray) -> torch.Tensor:
    """The decoder's mask logits (256 x 256 over the input) for one box ``(x0, y0, x1, y1)`` input px."""
    boxes = torch.as_tensor(np.asarray(box_xyxy, np.float32), device=model.device).reshape(1, 1, 4)
    sparse, dense = model.prompt_encoder(points=None, boxes=boxes, masks=None)
    logits, _ = model.mask_decoder(image_embeddings=embedding[None].to(model.device),
                                   image_pe=model.prompt_encoder.get_dense_pe(), sparse_prompt_embeddings=sparse,
                                   dense_prompt_embeddings=dense, multimask_output=False)
    return logits[0, 0]


def _region(box: BoxYx, spacing_yx: np.ndarray, context: float, min_side_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """The square crop (start, size in px per axis) centred on ``box``."""
    lo, hi = np.asarray(box[:2], float), np.asarray(box[2:], float)
    side_mm = max(float(np.max((hi - lo) * spacing_yx)) * context, min_side_mm)
    size = np.maximum(np.ceil(side_mm / spacing_yx).astype(int), 1)
    start = np.floor((lo + hi) / 2.0 - size / 2.0).astype(int)
    return start, size


def _crop(slice_hu: np.ndarray, start: np.ndarray, size: np.ndarray) -> np.ndarray:
    out = np.full(tuple(size), AIR_HU, np.float32)
    src_lo = np.maximum(start, 0)
    src_hi = np.minimum(start + size, slice_hu.shape)
    if np.all(src_hi > src_lo):
        dst = src_lo - start
        out[dst[0]:dst[0] + src_hi[0] - src_lo[0], dst[1]:dst[1] + src_hi[1] - src_lo[1]] = \
            slice_hu[src_lo[0]:src_hi[0], src_lo[1]:src_hi[1]]
    return out


class _SliceSegmenter:
    """Segments boxes on the slices of one volume, remembering embeddings within the call."""

    def __init__(self, volume: Volume, model: LiteMedSam, window, context: float, min_side_mm: float,
                 cache: EmbeddingCache | None) -> None:
        self.array = np.asarray(volume.array)
        self.spacing = np.asarray(volume.spacing[1:], float)
        self.model, self.window, self.context, self.min_side_mm, self.cache = model, window, context, min_side_mm, cache

    def __call__(self, z: int, box: BoxYx) -> tuple[np.ndarray, float]:
        """The slice's mask and its contrast: mean HU inside minus the median HU of the rest of the crop."""
        start, size = _region(box, self.spacing, self.context, self.min_side_mm)
        crop = _crop(self.array[z], start, size)
        image, letterbox = to_model_image(crop, self.spacing, window=self.window)
        embedding = encode_images(self.model, image[None], cache=self.cache)[0]
        local = np.asarray(box, float) - np.r_[start, start]
        inside = letterbox.mask_from_logits(decode_box(self.model, embedding, letterbox.box_to_input(local)))
        contrast = float(crop[inside].mean() - np.median(crop[~inside])) if inside.any() and (~inside).any() else 0.0
        return self._paste(inside, start), contrast

    def _paste(self, crop_mask: np.ndarray, start: np.ndarray) -> np.ndarray:
        out = np.zeros(self.array.shape[1:], bool)
        lo = np.maximum(start, 0)
        hi = np.minimum(start + crop_mask.shape, out.shape)
        if np.all(hi > lo):
            out[lo[0]:hi[0], lo[1]:hi[1]] = crop_mask[lo[0] - start[0]:hi[0] - start[0], lo[1] - start[1]:hi[1] - start[1]]
        return out


def check_box_zyx(volume: Volume, box_zyx: Sequence[int]) -> tuple[int, int, int, int, int, int]:
    """``(z0, y0, x0, z1, y1, x1)`` voxel indices, end exclusive, non-empty and inside ``volume``."""
    values = np.asarray(box_zyx, float).reshape(-1)
    if values.size != 6 or not np.all(np.isfinite(values)) or np.any(values != np.round(values)):
        raise PromptError(f"a 3D box is six whole voxel indices (z0, y0, x0, z1, y1, x1), end exclusive; got "
                          f"{tuple(box_zyx)}.")
    lo, hi = values[:3].astype(int), values[3:].astype(int)
    shape = np.asarray(volume.shape)
    if np.any(hi <= lo):
        raise PromptError(f"box {tuple(int(v) for v in values)}: each end must exceed its start (end exclusive).")
    if np.any(lo < 0) or np.any(hi > shape):
        raise PromptError(f"box {tuple(int(v) for v in values)} reaches outside the CT's grid {tuple(volume.shape)} "
                          "(z, y, x): clip it to 0..size on every axis.")
    return (*(int(v) for v in lo), *(int(v) for v in hi))  # type: ignore[return-value]


def segment_box(volume: Volume, box_zyx: Sequence[int], *, model: LiteMedSam | None = None,
                device: str = "auto", window: Sequence[float] = MEDSAM_WINDOW, context: float = 2.5,
                min_side_mm: float = 30.0, cache: EmbeddingCache | None = None,
                progress: Callable[[int, int], None] | None = None,
                cancel: Callable[[], bool] | None = None) -> Volume:
    """The mask (uint8, on ``volume``'s grid) LiteMedSAM draws in a 3D box, its in-plane box on every slice.

    ``box_zyx`` is ``(z0, y0, x0, z1, y1, x1)`` voxel indices, end exclusive. ``cache``: an
    :class:`EmbeddingCache` (None: nothing kept on disk).
    """
    z0, y0, x0, z1, y1, x1 = check_box_zyx(volume, box_zyx)
    return segment_slice_boxes(volume, {z: (y0, x0, y1, x1) for z in range(z0, z1)}, model=model, device=device,
                               window=window, context=context, min_side_mm=min_side_mm, cache=cache,
                               propagate=False, progress=progress, cancel=cancel)


def segment_slice_boxes(volume: Volume, boxes: Mapping[int, Sequence[float]], *, model: LiteMedSam | None = None,
                        device: str = "auto", window: Sequence[float] = MEDSAM_WINDOW, context: float = 2.5,
                        min_side_mm: float = 30.0, cache: EmbeddingCache | None = None, propagate: bool = True,
                        grow_px: int = 1, min_contrast_hu: float = 100.0, progress: Callable[[int, int], None] | None = None,
                        cancel: Callable[[], bool] | None = None) -> Volume:
    """The mask LiteMedSAM draws from 2D boxes ``{z: (y0, x0, y1, x1)}`` (end exclusive) on some slices.

    Slices between two boxed slices take the linear interpolation of their boxes; with ``propagate``
    the slices beyond the first and last boxed ones take the previous slice's mask box (grown by
    ``grow_px``) until a mask comes out empty or less than ``min_contrast_hu`` brighter than its
    surroundings (that slice is left empty).
    """
    prompts = _checked_boxes(volume, boxes)
    model = model if model is not None else load_lite_medsam(device)
    run = _SliceSegmenter(volume, model, window, context, min_side_mm, cache)
    mask = np.zeros(volume.shape, np.uint8)
    planned = _interpolated(prompts)
    for done, (z, box) in enumerate(sorted(planned.items())):
        if cancel is not None and cancel():
            raise SegmentationCancelled(f"LiteMedSAM box segmentation was cancelled after {done} slice(s).")
        mask[z] = run(z, box)[0]
        if progress is not None:
            progress(done + 1, len(planned))
    if propagate:
        for step in (-1, 1):
            _carry(run, mask, min(planned) if step < 0 else max(planned), step, grow_px, min_contrast_hu, cancel)
    return volume.with_array(mask)


def _checked_boxes(volume: Volume, boxes: Mapping[int, Sequence[float]]) -> dict[int, BoxYx]:
    if not boxes:
        raise PromptError("no box given: give at least one slice's box {z: (y0, x0, y1, x1)}.")
    out = {}
    for z, box in boxes.items():
        z0, y0, x0, _, y1, x1 = check_box_zyx(volume, (int(z), *box[:2], int(z) + 1, *box[2:]))
        out[z0] = (y0, x0, y1, x1)
    return out


def _interpolated(prompts: dict[int, BoxYx]) -> dict[int, BoxYx]:
    keys = sorted(prompts)
    out = dict(prompts)
    for a, b in zip(keys, keys[1:]):
        for z in range(a + 1, b):
            t = (z - a) / (b - a)
            out[z] = tuple(round((1 - t) * u + t * v) for u, v in zip(prompts[a], prompts[b]))  # type: ignore
    return out


def _carry(run: _SliceSegmenter, mask: np.ndarray, z: int, step: int, grow_px: int, min_contrast_hu: float,
           cancel: Callable[[], bool] | None) -> None:
    while 0 <= z + step < mask.shape[0] and mask[z].any():
        if cancel is not None and cancel():
            raise SegmentationCancelled("LiteMedSAM box propagation was cancelled.")
        rows, cols = np.nonzero(mask[z])
        box = (max(rows.min() - grow_px, 0), max(cols.min() - grow_px, 0),
               min(rows.max() + 1 + grow_px, mask.shape[1]), min(cols.max() + 1 + grow_px, mask.shape[2]))
        z += step
        carried, contrast = run(z, box)
        if contrast < min_contrast_hu:
            return
        mask[z] = carried
