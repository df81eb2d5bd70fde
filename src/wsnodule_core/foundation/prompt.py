"""Interactive correction with LiteMedSAM over one CT: box and click prompts on a slice, propagation.

A :class:`PromptSession` keeps, per slice, the crops it has encoded and their embeddings in memory
(and in the on-disk :class:`EmbeddingCache` when given), so the first prompt on a slice costs one
encoder pass and every later prompt there only the prompt encoder and mask decoder. A new box reuses
a crop already encoded on its slice when the box sits inside it with room around it and the crop is
about the size the box's own would be (:data:`REUSE_SIZE`): dragging a box a little, or a click near
the nodule, costs no encoder pass.

Clicks: LiteMedSAM was trained with boxes, and on real nodules SAM-style points (label 1 positive,
0 negative, decoded with the box) made its masks worse (``benchmarks/prompt_points.py``, docs/plugin.md),
so by default a click acts through boxes. A first positive click on a slice makes a box around it:
the bright (above ``click_hu``) connected region under the click (vessels opened off), within ``click_max_mm``, at least
``click_min_mm`` (a small square when the click is on dark lung, or when the bright piece reaches
the edge of the search window: then it belongs to a wall or vessel tree), grown by ``click_margin``
of its side on each side (faint rims fall under ``click_hu``). A later positive click adds the
mask of its own click box (a part the first mask missed; earlier negative clicks inside that box are
dropped); a negative click removes the mask's pixels nearer to it than to the mask's core (its pixel
deepest inside), so a click on a leak into a vessel cuts the leak off. With
``click_points=True`` clicks are passed to the decoder as points with the box instead.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Literal, Sequence

import numpy as np
import torch
from scipy import ndimage

from wsnodule_core.errors import PromptError, SegmentationCancelled
from wsnodule_core.foundation.embeddings import EmbeddingCache, encode_images
from wsnodule_core.foundation.image import MEDSAM_WINDOW, Letterbox, to_model_image
from wsnodule_core.foundation.lite_medsam import LiteMedSam, load_lite_medsam
from wsnodule_core.foundation.segment import BoxYx, _crop, _region
from wsnodule_core.io.volume import Volume

Direction = Literal["up", "down", "both"]
#: Encoded crops kept in memory (2 MB each as float16 on a CPU).
MEMORY_CROPS = 64
#: A box reuses a crop of its slice 0.75-1.5 times the side its own crop would have (context 1.9-3.75
#: instead of 2.5) that holds it with a quarter of its side to spare around it.
REUSE_SIZE = (0.75, 1.5)


@dataclass(frozen=True, eq=False)
class SliceMask:
    """A prompt's result on slice ``z``: ``mask`` (bool, the CT slice's rows x columns), the ``box``
    ``(y0, x0, y1, x1)`` it was decoded with, its ``contrast`` (mean HU inside minus the median of the
    rest of the crop) and whether it needed an encoder pass (``encoded``)."""

    z: int
    mask: np.ndarray
    box: BoxYx
    contrast: float
    encoded: bool

    @property
    def empty(self) -> bool:
        return not bool(self.mask.any())


@dataclass(frozen=True, eq=False)
class _Crop:
    start: np.ndarray
    size: np.ndarray
    letterbox: Letterbox
    embedding: torch.Tensor
    hu: np.ndarray


@dataclass
class _SlicePrompt:
    """The prompt being refined on one slice: its box and clicks ``(y, x, label)``."""

    box: BoxYx | None
    points: list[tuple[float, float, int]] = field(default_factory=list)
    extras: list[BoxYx] = field(default_factory=list)
    negatives: list[tuple[float, float]] = field(default_factory=list)


class PromptSession:
    """Box and click prompts, and propagation, on one CT with LiteMedSAM (embeddings cached per crop).

    Thread-safe: prompts run one at a time; a worker may :meth:`prewarm` slices meanwhile (its encoder
    passes do not hold up prompts on cached slices). ``encoder_passes`` counts the passes made.
    """

    def __init__(self, volume: Volume, *, model: LiteMedSam | None = None, device: str = "auto",
                 window: Sequence[float] = MEDSAM_WINDOW, context: float = 2.5, min_side_mm: float = 30.0,
                 cache: EmbeddingCache | None = None, min_contrast_hu: float = 100.0, grow_px: int = 1,
                 click_hu: float = -500.0, click_min_mm: float = 5.0, click_max_mm: float = 30.0,
                 click_open_mm: float = 1.5, click_margin: float = 0.15, click_points: bool = False) -> None:
        if len(volume.shape) != 3:
            raise PromptError(f"prompts work on a 3D CT (z, y, x), got shape {volume.shape}.")
        self.volume = volume
        self.array = np.asarray(volume.array)
        self.spacing = np.asarray(volume.spacing[1:], float)
        self.model = model if model is not None else load_lite_medsam(device)
        self.window, self.context, self.min_side_mm, self.cache = tuple(window), context, min_side_mm, cache
        self.min_contrast_hu, self.grow_px = min_contrast_hu, grow_px
        self.click_hu, self.click_min_mm, self.click_max_mm = click_hu, click_min_mm, click_max_mm
        self.click_points, self.click_open_mm, self.click_margin = click_points, click_open_mm, click_margin
        self._crops: OrderedDict[tuple[int, tuple[int, ...]], _Crop] = OrderedDict()
        self._prompts: dict[int, _SlicePrompt] = {}
        self._lock = threading.RLock()
        self.encoder_passes = 0

    # --- prompts ---------------------------------------------------------------------------

    def box(self, z: int, box: Sequence[float]) -> SliceMask:
        """The mask of box ``(y0, x0, y1, x1)`` (pixel indices, end exclusive) on slice ``z``; clicks
        given earlier on that slice are forgotten."""
        checked = self._checked_box(z, box)
        with self._lock:
            self._prompts[z] = _SlicePrompt(checked)
            return self._decode(z, self._prompts[z])

    def click(self, z: int, y: float, x: float, positive: bool = True, *,
              current: np.ndarray | None = None) -> SliceMask:
        """The mask after a click at pixel ``(y, x)`` of slice ``z`` (positive adds, negative removes).

        ``current``: the slice's present mask of the nodule clicked on (bool, rows x columns), used as
        the box when the slice has no prompt yet (a click that corrects an existing mask).
        """
        z = self._checked_z(z)
        if not (0 <= y < self.array.shape[1] and 0 <= x < self.array.shape[2]):
            raise PromptError(f"click ({y:.1f}, {x:.1f}) is outside slice {z} ({self.array.shape[1]} x "
                              f"{self.array.shape[2]} pixels).")
        with self._lock:
            prompt = self._prompts.get(z)
            if prompt is None:
                if current is not None and np.asarray(current, bool).any():
                    prompt = _SlicePrompt(_mask_box(np.asarray(current, bool), self.grow_px))
                elif positive:
                    prompt = _SlicePrompt(self.click_box(z, y, x))
                    prompt.points += [(float(y), float(x), 1)] if self.click_points else []
                    self._prompts[z] = prompt
                    return self._decode(z, prompt)
                else:
                    raise PromptError("a negative click removes part of a mask: draw a box or click positive on "
                                      "the nodule first.")
                self._prompts[z] = prompt
            if self.click_points:
                if positive and prompt.box is not None and not _inside(prompt.box, y, x):
                    y0, x0, y1, x1 = prompt.box
                    prompt.box = (min(y0, int(y)), min(x0, int(x)), max(y1, int(y) + 1), max(x1, int(x) + 1))
                prompt.points.append((float(y), float(x), 1 if positive else 0))
            elif positive:
                extra = self.click_box(z, y, x)
                prompt.extras.append(extra)
                prompt.negatives = [p for p in prompt.negatives if not _inside(extra, *p)]
            else:
                prompt.negatives.append((float(y), float(x)))
            return self._decode(z, prompt)

    def forget(self, z: int | None = None) -> None:
        """Drop the prompt being refined on slice ``z`` (all slices: None); embeddings stay cached."""
        with self._lock:
            if z is None:
                self._prompts.clear()
            else:
                self._prompts.pop(int(z), None)

    def click_box(self, z: int, y: float, x: float) -> BoxYx:
        """The box a first positive click makes: the bright connected region under it (HU above
        ``click_hu``, opened by ``click_open_mm`` when the click survives the opening) within
        ``click_max_mm``, grown by ``click_margin`` of its side, at least ``click_min_mm`` on each side."""
        half_max = np.maximum(np.round(self.click_max_mm / 2 / self.spacing).astype(int), 1)
        half_min = np.maximum(np.round(self.click_min_mm / 2 / self.spacing).astype(int), 1)
        centre = np.array([int(y), int(x)])
        lo = np.maximum(centre - half_max, 0)
        hi = np.minimum(centre + half_max + 1, self.array.shape[1:])
        window = self.array[z, lo[0]:hi[0], lo[1]:hi[1]] > self.click_hu
        # an opening first detaches vessels and thin pleural contacts from the clicked nodule
        radius = np.maximum(np.round(self.click_open_mm / self.spacing).astype(int), 0)
        grid = np.indices(tuple(2 * radius + 1)) - radius[:, None, None]
        disk = ((grid / np.maximum(radius, 1)[:, None, None]) ** 2).sum(axis=0) <= 1.0
        opened = ndimage.binary_opening(window, disk)
        seed_yx = (centre[0] - lo[0], centre[1] - lo[1])
        region, _ = ndimage.label(opened if opened[seed_yx] else window)
        seed = region[seed_yx]
        piece = region == seed if seed else np.zeros_like(window)
        if seed and opened[seed_yx]:  # the opened piece grown back inside the bright pixels: its rim, no vessel
            piece = ndimage.binary_dilation(piece, disk) & window
        # a piece reaching the search window's edge is part of something larger (chest wall, vessel tree)
        edge = piece[0].any() or piece[-1].any() or piece[:, 0].any() or piece[:, -1].any()
        if seed and not edge:
            rows, cols = np.nonzero(piece)
            b_lo, b_hi = np.array([rows.min(), cols.min()]) + lo, np.array([rows.max(), cols.max()]) + lo + 1
            grow = np.ceil((b_hi - b_lo) * self.click_margin).astype(int)  # faint rims fall under click_hu
            b_lo, b_hi = b_lo - grow, b_hi + grow
        else:
            b_lo, b_hi = centre, centre + 1
        b_lo = np.maximum(np.minimum(b_lo, centre - half_min), 0)
        b_hi = np.minimum(np.maximum(b_hi, centre + half_min + 1), self.array.shape[1:])
        return (int(b_lo[0]), int(b_lo[1]), int(b_hi[0]), int(b_hi[1]))

    # --- propagation -----------------------------------------------------------------------

    def propagate(self, z: int, mask: np.ndarray, direction: Direction = "both", n: int | None = None, *,
                  cancel: Callable[[], bool] | None = None,
                  progress: Callable[[int, int], None] | None = None) -> list[SliceMask]:
        """Masks on the slices next to ``z`` (``direction``: "up" = increasing z, "down", "both"), each
        from the previous slice's mask box grown by ``grow_px``, for ``n`` slices per direction or until a
        mask comes out empty or less than ``min_contrast_hu`` above its surroundings (not returned)."""
        z = self._checked_z(z)
        mask = np.asarray(mask, bool)
        if mask.shape != self.array.shape[1:] or not mask.any():
            raise PromptError(f"propagation starts from a non-empty mask of slice {z} "
                              f"({self.array.shape[1]} x {self.array.shape[2]}); make one with a box or a click.")
        if direction not in ("up", "down", "both"):
            raise PromptError(f"direction is 'up', 'down' or 'both', got {direction!r}.")
        if n is not None and n < 1:
            raise PromptError(f"propagate at least one slice (n >= 1), got n={n}.")
        steps = {"up": (1,), "down": (-1,), "both": (1, -1)}[direction]
        limit = n if n is not None else self.array.shape[0]
        out: list[SliceMask] = []
        for step in steps:
            previous, here = mask, z
            for _ in range(limit):
                if not 0 <= here + step < self.array.shape[0]:
                    break
                if cancel is not None and cancel():
                    raise SegmentationCancelled(f"propagation was cancelled after {len(out)} slice(s).")
                here += step
                with self._lock:
                    result = self._decode(here, _SlicePrompt(_mask_box(previous, self.grow_px)))
                if result.empty or result.contrast < self.min_contrast_hu:
                    break
                out.append(result)
                previous = result.mask
                if progress is not None:
                    progress(len(out), len(out) + 1)
        return sorted(out, key=lambda r: r.z)

    def prewarm(self, z: int, box: Sequence[float]) -> bool:
        """Encode the crop a prompt of ``box`` on slice ``z`` would use (in a worker, ahead of the
        prompt); True when that took an encoder pass, False when it was cached."""
        checked = self._checked_box(z, box)
        with self._lock:
            if self._find_crop(z, checked) is not None:
                return False
        crop, fresh = self._encode_crop(z, checked)  # unlocked: prompts on cached slices go on meanwhile
        with self._lock:
            if self._find_crop(z, checked) is None:
                self._store(z, crop)
                self.encoder_passes += int(fresh)
        return fresh

    def prewarm_neighbours(self, result: SliceMask, depth: int = 1) -> int:
        """Encode the crops propagation from ``result`` would use first (``depth`` slices each way);
        returns the encoder passes made."""
        if result.empty:
            return 0
        box = _mask_box(result.mask, self.grow_px)
        made = 0
        for dz in range(1, depth + 1):
            for z in (result.z - dz, result.z + dz):
                if 0 <= z < self.array.shape[0]:
                    made += int(self.prewarm(z, box))
        return made

    # --- inside ----------------------------------------------------------------------------

    def _checked_z(self, z: int) -> int:
        if int(z) != z or not 0 <= int(z) < self.array.shape[0]:
            raise PromptError(f"slice {z} is not in the CT (slices 0..{self.array.shape[0] - 1}).")
        return int(z)

    def _checked_box(self, z: int, box: Sequence[float]) -> BoxYx:
        z = self._checked_z(z)
        values = np.asarray(box, float).reshape(-1)
        if values.size != 4 or not np.all(np.isfinite(values)):
            raise PromptError(f"a slice box is (y0, x0, y1, x1) pixel indices, end exclusive; got {tuple(box)}.")
        lo = np.maximum(np.floor(values[:2]), 0).astype(int)
        hi = np.minimum(np.ceil(values[2:]), self.array.shape[1:]).astype(int)
        if np.any(hi <= lo):
            raise PromptError(f"box {tuple(float(v) for v in values)} on slice {z} is empty or outside the slice "
                              f"({self.array.shape[1]} x {self.array.shape[2]} pixels): draw it over the nodule.")
        return (int(lo[0]), int(lo[1]), int(hi[0]), int(hi[1]))

    def _crop_for(self, z: int, box: BoxYx) -> tuple[_Crop, bool]:
        """An encoded crop around ``box`` on slice ``z`` (one already made when it fits) and whether it
        took an encoder pass (the caller holds the lock)."""
        found = self._find_crop(z, box)
        if found is not None:
            return found, False
        crop, fresh = self._encode_crop(z, box)
        self._store(z, crop)
        self.encoder_passes += int(fresh)
        return crop, fresh

    def _find_crop(self, z: int, box: BoxYx) -> _Crop | None:
        start, size = _region(box, self.spacing, self.context, self.min_side_mm)
        lo, hi = np.asarray(box[:2]), np.asarray(box[2:])
        margin = np.ceil((hi - lo) / 4).astype(int)
        for key, crop in reversed(self._crops.items()):
            if key[0] == z and np.all(crop.size >= REUSE_SIZE[0] * size) \
                    and np.all(crop.size <= REUSE_SIZE[1] * size) \
                    and np.all(lo - margin >= crop.start) and np.all(hi + margin <= crop.start + crop.size):
                self._crops.move_to_end(key)
                return crop
        return None

    def _encode_crop(self, z: int, box: BoxYx) -> tuple[_Crop, bool]:
        """The crop ``box`` would have, encoded (or read from the disk cache); touches no session state."""
        start, size = _region(box, self.spacing, self.context, self.min_side_mm)
        hu = _crop(self.array[z], start, size)
        image, letterbox = to_model_image(hu, self.spacing, window=self.window)
        cached = self.cache is not None and self.cache.get(EmbeddingCache.key(image)) is not None
        embedding = encode_images(self.model, image[None], cache=self.cache)[0]
        stored = embedding.to(torch.float16) if embedding.device.type == "cpu" else embedding
        return _Crop(start, size, letterbox, stored, hu), not cached

    def _store(self, z: int, crop: _Crop) -> None:
        self._crops[(z, (*crop.start.tolist(), *crop.size.tolist()))] = crop
        while len(self._crops) > MEMORY_CROPS:
            self._crops.popitem(last=False)

    def _decode(self, z: int, prompt: _SlicePrompt) -> SliceMask:
        """The union of the masks of the prompt's box (with its points) and of its extra boxes."""
        mask = np.zeros(self.array.shape[1:], bool)
        encoded, main = False, None
        for i, box in enumerate([prompt.box, *prompt.extras]):
            if box is None:
                continue
            crop, fresh = self._crop_for(z, box)
            main, encoded = (main if main is not None else crop), encoded or fresh
            offset = np.r_[crop.start, crop.start].astype(float)
            local_box = crop.letterbox.box_to_input(np.asarray(box, float) - offset)
            points = None
            if i == 0 and prompt.points:
                sy, sx = crop.letterbox.scale_yx
                coords = [((x - crop.start[1] + 0.5) * sx, (y - crop.start[0] + 0.5) * sy)
                          for y, x, _ in prompt.points]
                points = (np.asarray(coords, np.float32), np.asarray([p[2] for p in prompt.points], np.int64))
            logits = decode_prompt(self.model, crop.embedding.float(), local_box, points)
            mask |= _paste(crop.letterbox.mask_from_logits(logits), crop.start, mask.shape)
        for y, x in prompt.negatives:
            mask &= ~_nearer_than_core(mask, y, x)
        contrast = 0.0
        if main is not None:
            inside = _crop(mask.astype(np.float32), main.start, main.size) > 0.5
            if inside.any() and (~inside).any():
                contrast = float(main.hu[inside].mean() - np.median(main.hu[~inside]))
        box = prompt.box if prompt.box is not None else (prompt.extras[0] if prompt.extras else (0, 0, 0, 0))
        return SliceMask(z, mask, box, contrast, encoded)


@torch.no_grad()
def decode_prompt(model: LiteMedSam, embedding: torch.Tensor, box_xyxy: np.ndarray | None,
                  points: tuple[np.ndarray, np.ndarray] | None = None) -> torch.Tensor:
    """The decoder's mask logits (256 x 256) for a box ``(x0, y0, x1, y1)`` and/or points ``(coords (n, 2)
    as (x, y), labels (n,): 1 positive, 0 negative)``, all in input pixels."""
    boxes = None if box_xyxy is None else \
        torch.as_tensor(np.asarray(box_xyxy, np.float32), device=model.device).reshape(1, 1, 4)
    pts = None
    if points is not None:
        pts = (torch.as_tensor(points[0], dtype=torch.float32, device=model.device)[None],
               torch.as_tensor(points[1], dtype=torch.int64, device=model.device)[None])
    sparse, dense = model.prompt_encoder(points=pts, boxes=boxes, masks=None)
    logits, _ = model.mask_decoder(image_embeddings=embedding[None].to(model.device),
                                   image_pe=model.prompt_encoder.get_dense_pe(), sparse_prompt_embeddings=sparse,
                                   dense_prompt_embeddings=dense, multimask_output=False)
    return logits[0, 0]


def _mask_box(mask: np.ndarray, grow_px: int) -> BoxYx:
    rows, cols = np.nonzero(mask)
    return (max(int(rows.min()) - grow_px, 0), max(int(cols.min()) - grow_px, 0),
            min(int(rows.max()) + 1 + grow_px, mask.shape[0]), min(int(cols.max()) + 1 + grow_px, mask.shape[1]))


def _inside(box: BoxYx, y: float, x: float) -> bool:
    return box[0] <= y < box[2] and box[1] <= x < box[3]


def _nearer_than_core(mask: np.ndarray, y: float, x: float) -> np.ndarray:
    """The pixels of ``mask`` nearer to ``(y, x)`` than to its core (the pixel deepest inside it); the
    whole piece under the click when the click is on the core."""
    if not mask.any():
        return mask
    depth = ndimage.distance_transform_edt(mask)
    core = np.array(np.unravel_index(np.argmax(depth), mask.shape), float)
    click = np.array([y, x], float)
    if np.allclose(np.floor(click), core):
        pieces, _ = ndimage.label(mask)
        return pieces == pieces[int(y), int(x)]
    rows, cols = np.indices(mask.shape, dtype=float)
    to_click = (rows - click[0]) ** 2 + (cols - click[1]) ** 2
    to_core = (rows - core[0]) ** 2 + (cols - core[1]) ** 2
    return mask & (to_click < to_core)


def _paste(crop_mask: np.ndarray, start: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    out = np.zeros(shape, bool)
    lo = np.maximum(start, 0)
    hi = np.minimum(start + crop_mask.shape, shape)
    if np.all(hi > lo):
        out[lo[0]:hi[0], lo[1]:hi[1]] = crop_mask[lo[0] - start[0]:hi[0] - start[0], lo[1] - start[1]:hi[1] - start[1]]
    return out
