"""NAM/R-NAM slid over whole slices in tiles: a classifier trained on nodule-sized crops on a whole CT.

The paper feeds the whole lung-centred slice to the classifier. A classifier trained on small crops
around nodules (the real VOI set: 495 patients, where whole slices of only a few scans exist) never
fires on a whole slice, whose field of view it never saw. Here each slice's lung crop (the network
grid of ``config.input_size`` pixels) is cut into overlapping tiles of ``config.tile_size`` pixels
(the classifier's training crop) every ``config.tile_stride`` pixels; tiles whose centre lies in
the lungs are classified in batches, and every nodule tile is segmented as the paper segments a
nodule slice (scope, ICM candidates, R-NAM screening: :func:`~.slice_segment.segment_positive`).
The tiles' masks are joined (union) on the slice, the slices linked in 3D as in
:func:`~.pipeline.segment_volume`. A slice's probability is that of its most probable tile; its
NAM, the per-pixel maximum of its tiles' NAMs.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from wsnodule_core.errors import NamSegmentationError, raise_if_cancelled
from wsnodule_core.image.window import apply_window
from wsnodule_core.io.volume import Volume
from wsnodule_core.nam.assembly import NetworkGrid, link_slices, network_grid
from wsnodule_core.nam.maps import evaluating, forward_maps, to_numpy
from wsnodule_core.nam.result import CandidateInfo, NamSegmentation, SliceCandidates
from wsnodule_core.nam.segment_config import NamConfig
from wsnodule_core.nam.slice_segment import segment_positive
from wsnodule_core.nam.tile_grid import cut_tiles, tile_origins
from wsnodule_core.training.device import device_of


def segment_volume_tiled(
    model: torch.nn.Module,
    volume: Volume,
    lungs,
    config: NamConfig,
    *,
    multi_gap_model: torch.nn.Module | None = None,
    progress: Callable[[int, int], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    batch_size: int = 64,
):
    """Segment a CT with the NAM slid over each slice's lungs in tiles (see the module docstring).

    Called by :func:`~.pipeline.segment_volume` when ``config.tile_size`` is set; returns its
    :class:`~.result.NamSegmentation`.
    """
    if lungs is None:
        raise NamSegmentationError(
            "the tiled NAM (NamConfig.tile_size set) slides over the lungs and needs a lung mask: pass "
            "lungs (the command line segments them itself unless told not to)."
        )
    size, stride = int(config.tile_size), int(config.tile_stride or config.tile_size // 2)
    nz = volume.shape[0]
    report = progress or (lambda done, total: None)
    raise_if_cancelled(cancel)
    grid = network_grid(volume, lungs, config.input_size, config.crop_pixel_spacing_mm, with_lungs=True)
    origins = [tile_origins(grid.lungs[z], size, stride) for z in range(nz)]
    net_shape = (nz, grid.size, grid.size)
    probability = np.zeros(nz, np.float32)
    nam_net = np.zeros(net_shape, np.float32)
    multi_net = np.zeros(net_shape, np.float32) if multi_gap_model is not None else None
    coarse, fine, scope, c1 = (np.zeros(net_shape, bool) for _ in range(4))
    candidates_net = np.zeros(net_shape, np.int32)
    slices: list[SliceCandidates] = []
    device = device_of(model)
    for z in range(nz):
        raise_if_cancelled(cancel)
        if len(origins[z]):
            tiles = cut_tiles(np.asarray(grid.source[z], np.float32), origins[z], size)
            x = apply_window(torch.from_numpy(tiles).to(device)[:, None], config.window)
            prob, nam = _forward(model, x, config.nam_branches, batch_size)
            prob = to_numpy(prob)
            probability[z] = float(prob.max())
            for (y0, x0), plane in zip(origins[z], to_numpy(nam)):
                view = nam_net[z, y0:y0 + size, x0:x0 + size]
                np.maximum(view, plane, out=view)
            positive = np.flatnonzero(prob >= config.probability_threshold)
            multis = None
            if multi_gap_model is not None and len(positive):  # the multi-GAP NAMs of the nodule tiles only
                multis = to_numpy(_forward(multi_gap_model, x[positive].to(device_of(multi_gap_model)), "all",
                                           batch_size)[1])
            infos: list[CandidateInfo] = []
            chosen: list[int] = []
            for k, i in enumerate(positive):
                y0, x0 = (int(v) for v in origins[z][i])
                window = (slice(y0, y0 + size), slice(x0, x0 + size))
                multi = None
                if multis is not None:
                    multi = multis[k]
                    np.maximum(multi_net[z][window], multi, out=multi_net[z][window])
                result = segment_positive(
                    model, to_numpy(x[i, 0]), nam[i], float(prob[i]), multi, config,
                    lung_mask=grid.lungs[z][window], keep_rnams=False,
                )
                coarse[z][window] |= result.coarse
                fine[z][window] |= result.fine
                scope[z][window] |= result.scope
                c1[z][window] |= result.c1
                offset = len(infos)
                placed = candidates_net[z][window]
                new = (result.candidates > 0) & (placed == 0)
                placed[new] = result.candidates[new] + offset
                areas = np.bincount(result.candidates.ravel(), minlength=len(result.scores) + 1)
                infos += [CandidateInfo(offset + j, int(areas[j]), float(s), None)
                          for j, s in enumerate(result.scores, start=1)]
                chosen += [offset + label for label in result.chosen_labels]
            if len(positive):
                slices.append(SliceCandidates(z, float(probability[z]), tuple(infos), tuple(chosen)))
        report(z + 1, nz)
    return NamSegmentation(
        fine=volume.with_array(link_slices(grid.mask_to_source(fine, volume), config.bridge_gap)),
        coarse=volume.with_array(link_slices(grid.mask_to_source(coarse, volume), config.bridge_gap)),
        probability=probability,
        is_nodule=probability >= config.probability_threshold,
        nam=volume.with_array(_to_source(grid, nam_net, order=1)),
        multi_nam=None if multi_net is None else volume.with_array(_to_source(grid, multi_net, order=1)),
        scope=volume.with_array(_scope_labels(grid, scope, c1, volume)),
        candidates=volume.with_array(_to_source(grid, candidates_net, order=0).astype(np.uint16)),
        slices=tuple(slices),
        config=config,
    )


def _forward(model, x: torch.Tensor, branches, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Probabilities (k,) and NAMs (k, h, w) of tiles ``x`` in batches."""
    probs, nams = [], []
    with evaluating(model):
        for start in range(0, len(x), batch_size):
            p, n = forward_maps(model, x[start:start + batch_size], branches)
            probs.append(p)
            nams.append(n)
    return torch.cat(probs), torch.cat(nams)


def _to_source(grid: NetworkGrid, stack: np.ndarray, order: int) -> np.ndarray:
    return np.stack([grid.to_source(plane, order=order) for plane in stack]).astype(np.float32)


def _scope_labels(grid: NetworkGrid, scope: np.ndarray, c1: np.ndarray, volume: Volume) -> np.ndarray:
    labels = np.zeros(volume.shape, np.uint8)
    labels[grid.mask_to_source(c1, volume)] = 2
    labels[grid.mask_to_source(scope, volume)] = 1
    return labels
