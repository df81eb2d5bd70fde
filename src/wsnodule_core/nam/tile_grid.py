"""Where the tiles of the tiled NAM lie on a slice's lung crop, and cutting them (shared by segmentation and
hard-tile mining)."""

from __future__ import annotations

import numpy as np

from wsnodule_core.errors import NamSegmentationError

#: The lung crop a tile classifier slides over (px at its pixel spacing: 336 mm at 0.75 mm, both lungs).
TILED_LUNG_CROP_PX = 448


def tile_origins(lungs: np.ndarray, size: int, stride: int) -> np.ndarray:
    """(k, 2) top-left corners (y, x) of the tiles of a (H, W) slice whose centre pixel is lung.

    The tiles cover the slice on a regular grid (the last row and column flush with its edge).
    """
    lungs = np.asarray(lungs, bool)
    height, width = lungs.shape
    if size > min(height, width):
        raise NamSegmentationError(
            f"NAM tiles of {size} px do not fit the {height} x {width} px lung crop: give a larger "
            "input_size (the lung crop's side) or a smaller tile_size."
        )
    ys = _starts(height, size, stride)
    xs = _starts(width, size, stride)
    grid = np.stack(np.meshgrid(ys, xs, indexing="ij"), axis=-1).reshape(-1, 2)
    centre = size // 2
    keep = lungs[grid[:, 0] + centre, grid[:, 1] + centre]
    return grid[keep]


def _starts(length: int, size: int, stride: int) -> np.ndarray:
    starts = list(range(0, length - size + 1, stride))
    if starts[-1] != length - size:
        starts.append(length - size)
    return np.asarray(starts, np.int64)


def cut_tiles(plane: np.ndarray, origins: np.ndarray, size: int) -> np.ndarray:
    """The (k, size, size) float32 tiles of a (H, W) plane at ``origins`` (from :func:`tile_origins`)."""
    if not len(origins):
        return np.zeros((0, size, size), np.float32)
    return np.stack([plane[y:y + size, x:x + size] for y, x in origins]).astype(np.float32)
