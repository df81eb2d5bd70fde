"""Hard negative tiles for the tiled NAM: where a trained tile classifier fires on nodule-free whole scans.

A classifier trained on nodule and nodule-free VOI crops has seen few of the things a whole slice
holds (hilum, chest wall, diaphragm, vessel branchings in every direction). Slid over whole
nodule-free scans (:func:`~.tile_grid.tile_origins`, the same tiles as at segmentation), its most probable
tiles are its false positives: they become negatives of the next training round (the classic
bootstrapping of sliding-window detectors). Tiles whose crop comes near a known lesion (an LIDC
reader's contour, a tumour box) are never taken; a share of random lung tiles rides along so the
negatives still cover ordinary lung.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from wsnodule_core.data.nodule_free import LoadedSource, NoduleFreeSource, load_source
from wsnodule_core.data.slices import SliceConfig, SliceSet
from wsnodule_core.errors import TrainingDataError, raise_if_cancelled
from wsnodule_core.image.window import apply_window
from wsnodule_core.nam.assembly import network_grid
from wsnodule_core.nam.maps import evaluating
from wsnodule_core.nam.tile_grid import TILED_LUNG_CROP_PX, cut_tiles, tile_origins
from wsnodule_core.training.device import device_of

MINING = "mining hard tiles"


@dataclass(frozen=True)
class HardTileConfig:
    """How hard tiles are mined. ``crop_size`` is the lung crop (px, at the classifier's pixel
    spacing) the tiles are cut from, every ``stride`` px; per scan the ``per_scan`` most probable tiles
    with P(nodule) >= ``min_probability`` are kept, at least ``separation_px`` apart on a slice, plus
    ``random_per_scan`` random lung tiles; nothing within ``clearance_mm`` of a lesion."""

    crop_size: int = TILED_LUNG_CROP_PX
    stride: int = 20
    per_scan: int = 1500
    random_per_scan: int = 300
    min_probability: float = 0.5
    separation_px: int = 10
    clearance_mm: float = 10.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.per_scan < 0 or self.random_per_scan < 0 or self.stride < 1:
            raise TrainingDataError(
                f"hard tiles: per_scan and random_per_scan must be >= 0 and stride >= 1, got {self.per_scan}, "
                f"{self.random_per_scan}, {self.stride}."
            )


def mine_hard_tiles(
    model: torch.nn.Module,
    sources: Sequence[NoduleFreeSource],
    slice_config: SliceConfig,
    config: HardTileConfig = HardTileConfig(),
    *,
    progress: Callable[[str], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    batch_size: int = 256,
) -> SliceSet:
    """Nodule-free tiles (label 0) of ``sources``' whole scans: the classifier's most probable ones and
    some random ones, windowed as ``slice_config`` (its ``size`` is the tile side, its pixel spacing the
    grid). Case ids are ``"hard-tile:<subject>"``."""
    if slice_config.pixel_spacing_mm is None:
        raise TrainingDataError(
            "hard tiles need the classifier's pixel spacing (train with --pixel-spacing): tiles of a whole "
            "scan must have the spacing of the crops the classifier learnt."
        )
    say = progress or (lambda text: None)
    sets = []
    for source in sources:
        raise_if_cancelled(cancel, MINING)
        loaded = load_source(source)
        tiles = _scan_tiles(model, loaded, slice_config, config, batch_size, cancel)
        say(f"hard tiles: {source.subject}: {tiles.n_negative} nodule-free tiles")
        sets.append(tiles)
    return SliceSet.concatenate(sets, slice_config)


def _scan_tiles(model, loaded: LoadedSource, slice_config: SliceConfig, config: HardTileConfig, batch_size: int,
                cancel) -> SliceSet:
    volume, size = loaded.volume, slice_config.size
    grid = network_grid(volume, loaded.lungs, config.crop_size, slice_config.pixel_spacing_mm, with_lungs=True)
    found: list[tuple[float, int, int, int]] = []  # (probability, z, y0, x0)
    device = device_of(model)
    reach = config.clearance_mm + np.sqrt(2.0) * size / 2.0 * slice_config.pixel_spacing_mm
    with evaluating(model):
        for z in range(volume.shape[0]):
            raise_if_cancelled(cancel, MINING)
            origins = tile_origins(grid.lungs[z], size, config.stride)
            origins = np.asarray([o for o in origins if _clear(loaded, grid, z, o, size, reach)]).reshape(-1, 2)
            if not len(origins):
                continue
            cut = cut_tiles(np.asarray(grid.source[z], np.float32), origins, size)
            x = apply_window(torch.from_numpy(cut).to(device)[:, None], slice_config.window)
            probs = torch.cat([torch.softmax(model(x[i:i + batch_size]).float(), dim=1)[:, 1]
                               for i in range(0, len(x), batch_size)]).cpu().numpy()
            found += [(float(p), z, int(y), int(x0)) for p, (y, x0) in zip(probs, origins)]
    rng = np.random.default_rng([config.seed, *loaded.source.subject.encode()])
    hard = _separated(sorted((f for f in found if f[0] >= config.min_probability), reverse=True),
                      config.per_scan, config.separation_px)
    taken = set(hard)
    rest = [f for f in found if f not in taken]
    pick = rng.choice(len(rest), size=min(config.random_per_scan, len(rest)), replace=False) if rest else []
    chosen = hard + [rest[int(i)] for i in pick]
    images = np.stack([np.asarray(grid.source[z][y:y + size, x:x + size], np.float32) for _, z, y, x in chosen]
                      ) if chosen else np.zeros((0, size, size), np.float32)
    n = len(chosen)
    return SliceSet(
        apply_window(images, slice_config.window).astype(np.float16), np.zeros(n, np.int8),
        np.zeros((n, size, size), np.uint8), np.full(n, f"hard-tile:{loaded.source.subject}", dtype=object),
        np.asarray([z for _, z, _, _ in chosen], np.int32),
        np.full((n, 2), slice_config.pixel_spacing_mm, np.float32), slice_config,
    )


def _clear(loaded: LoadedSource, grid, z: int, origin, size: int, reach: float) -> bool:
    """Whether the tile at ``origin`` of slice ``z`` lies farther than ``reach`` mm from every lesion."""
    centre_net = np.asarray(origin, float) + (size - 1) / 2.0
    j = (centre_net - np.asarray(grid.b)) / np.asarray(grid.a)
    world = loaded.volume.index_to_world(np.asarray([[z, j[0], j[1]]], float)).reshape(3)
    return loaded.clear_of_lesions(world, reach)


def _separated(ranked: list, limit: int, separation: int) -> list:
    """The first ``limit`` of ``ranked`` tiles, skipping one within ``separation`` px of a kept tile
    on its slice (neighbouring tiles of one false positive would fill the budget with copies)."""
    kept: list = []
    by_slice: dict[int, list] = {}
    for item in ranked:
        if len(kept) >= limit:
            break
        _, z, y, x = item
        if any(abs(y - y2) < separation and abs(x - x2) < separation for y2, x2 in by_slice.get(z, [])):
            continue
        kept.append(item)
        by_slice.setdefault(z, []).append((y, x))
    return kept
