"""NAM/R-NAM segmentation of a CT volume (Feng et al., MICCAI 2017), slice by slice, back in 3D.

1. Every axial slice is classified in one batched pass (lung-centred crop when lungs are given,
   else the whole slice resized to ``config.input_size``); the NAM of every slice is kept.
2. Only nodule slices go on: scope C (:mod:`.scope`), ICM candidates (:mod:`.icm`), R-NAM screening
   (:mod:`.rnam`), coarse and fine masks (:mod:`.slice_segment`).
3. The per-slice maps are put back on the input volume's grid and the fine (and coarse) masks are
   linked into 3D nodules by connected components.

Cancellation raises :class:`~wsnodule_core.errors.SegmentationCancelled` (nothing partial is
returned: a half-segmented volume would look like a finished one).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from wsnodule_core.data.lung import LungSegmentation
from wsnodule_core.errors import NamSegmentationError, raise_if_cancelled
from wsnodule_core.image.window import apply_window
from wsnodule_core.io.volume import Volume
from wsnodule_core.nam.assembly import NetworkGrid, link_slices, network_grid
from wsnodule_core.nam.maps import evaluating, forward_maps, to_numpy
from wsnodule_core.nam.result import CandidateInfo, NamSegmentation, SliceCandidates
from wsnodule_core.nam.segment_config import NamConfig
from wsnodule_core.nam.slice_segment import SliceResult, segment_positive, segment_slice
from wsnodule_core.training.device import device_of

__all__ = [
    "CandidateInfo", "NamConfig", "NamSegmentation", "SliceCandidates", "SliceResult", "link_slices",
    "segment_slice", "segment_volume",
]


def segment_volume(
    model: torch.nn.Module,
    volume: Volume,
    *,
    lungs: np.ndarray | Volume | LungSegmentation | None = None,
    config: NamConfig = NamConfig(),
    multi_gap_model: torch.nn.Module | None = None,
    progress: Callable[[int, int], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    batch_size: int = 8,
) -> NamSegmentation:
    """Segment the nodules of a CT volume with NAMs and R-NAMs.

    Parameters
    ----------
    model
        The (1-GAP) classifier (``forward_with_maps``); it classifies the slices and makes the
        NAMs and R-NAMs. It stays on its device; its training flag is restored afterwards.
    volume
        The CT in HU.
    lungs
        Lung mask on ``volume``'s grid (array, mask Volume or ``LungSegmentation``): slices are
        then cropped to ``config.input_size`` around the lungs (the paper's input), else the whole
        slice is resized. With ``config.tile_size`` the crop is slid over in tiles
        (:mod:`~wsnodule_core.nam.tiles`; lungs needed).
    config
        See :class:`NamConfig`.
    multi_gap_model
        A multi-GAP classifier whose NAM narrows the scope to C_multi inside C1 (run on nodule
        slices only).
    progress
        Called with (done, total); total is twice the number of slices (classification, then
        segmentation).
    cancel
        Polled between batches and slices; when it returns True,
        :class:`~wsnodule_core.errors.SegmentationCancelled` is raised.
    batch_size
        Slices per classification forward pass.
    """
    if batch_size < 1:
        raise NamSegmentationError(f"segment_volume: batch_size must be >= 1, got {batch_size}.")
    if config.tile_size is not None:
        from wsnodule_core.nam.tiles import segment_volume_tiled

        # tiles are a few dozen pixels wide: many more of them than of whole slices fit one forward pass
        return segment_volume_tiled(model, volume, lungs, config, multi_gap_model=multi_gap_model,
                                    progress=progress, cancel=cancel, batch_size=max(batch_size, 64))
    nz = volume.shape[0]
    report = progress or (lambda done, total: None)
    raise_if_cancelled(cancel)
    grid = network_grid(
        volume, lungs, config.input_size, config.crop_pixel_spacing_mm,
        with_lungs=config.icm_init == "lung" or config.min_candidate_lung_fraction > 0 or config.lung_slices_only,
    )
    probability, nam_vol, images, nams = _classify(model, grid, config, batch_size, report, cancel)
    multi_vol, multi_nams = None, {}
    if multi_gap_model is not None:
        multi_vol, multi_nams = _multi_gap_nams(
            multi_gap_model, grid, images, volume.shape, batch_size, cancel
        )

    net_shape = (nz, grid.size, grid.size)
    coarse, fine, scope, c1 = (np.zeros(net_shape, bool) for _ in range(4))
    cand_vol = np.zeros(volume.shape, np.uint16)
    slices: list[SliceCandidates] = []
    kept = 0
    for z in range(nz):
        raise_if_cancelled(cancel)
        if z in images:
            result = segment_positive(
                model, images.pop(z), nams.pop(z), float(probability[z]), multi_nams.get(z), config,
                lung_mask=None if grid.lungs is None else grid.lungs[z],
                keep_rnams=kept < config.max_kept_rnams,
            )
            coarse[z], fine[z], scope[z], c1[z] = result.coarse, result.fine, result.scope, result.c1
            cand_vol[z] = grid.to_source(result.candidates, order=0).astype(np.uint16)
            infos = []
            areas = np.bincount(result.candidates.ravel(), minlength=len(result.scores) + 1)
            for j, score in enumerate(result.scores, start=1):
                rnam = None
                if result.rnams is not None and kept < config.max_kept_rnams:
                    rnam, kept = grid.to_source(result.rnams[j - 1], order=1), kept + 1
                infos.append(CandidateInfo(j, int(areas[j]), float(score), rnam))
            slices.append(SliceCandidates(z, float(probability[z]), tuple(infos), result.chosen_labels))
        report(nz + z + 1, 2 * nz)

    # one full-size array at a time: a 512 x 512 x 300 CT's int32 labels are 315 MB each
    fine_labels = link_slices(grid.mask_to_source(fine, volume), config.bridge_gap)
    coarse_labels = link_slices(grid.mask_to_source(coarse, volume), config.bridge_gap)
    scope_labels = np.zeros(volume.shape, np.uint8)
    scope_labels[grid.mask_to_source(c1, volume)] = 2
    scope_labels[grid.mask_to_source(scope, volume)] = 1
    return NamSegmentation(
        fine=volume.with_array(fine_labels),
        coarse=volume.with_array(coarse_labels),
        probability=probability,
        is_nodule=probability >= config.probability_threshold,
        nam=volume.with_array(nam_vol),
        multi_nam=None if multi_vol is None else volume.with_array(multi_vol),
        scope=volume.with_array(scope_labels),
        candidates=volume.with_array(cand_vol),
        slices=tuple(slices),
        config=config,
    )


def _classify(model, grid: NetworkGrid, config: NamConfig, batch_size: int, report, cancel):
    """Probabilities and NAM volume of all slices; network image and NAM of the nodule slices."""
    nz = grid.source.shape[0]
    device = device_of(model)
    probability = np.zeros(nz, np.float32)
    nam_vol = np.zeros((nz, *grid.out_shape), np.float32)
    images: dict[int, np.ndarray] = {}
    nams: dict[int, torch.Tensor] = {}
    order = np.arange(nz)
    if config.lung_slices_only and grid.lungs is not None:  # a slice without lung holds no lung nodule
        order = np.flatnonzero(np.asarray(grid.lungs).any(axis=(1, 2)))
    with evaluating(model):
        for start in range(0, len(order), batch_size):
            raise_if_cancelled(cancel)
            chosen = order[start:start + batch_size]
            hu = torch.as_tensor(np.asarray(grid.source[chosen], np.float32)).to(device)[:, None]
            if grid.crop is None:
                hu = F.interpolate(hu, size=(grid.size, grid.size), mode="bilinear", align_corners=False)
            x = apply_window(hu, config.window)
            prob, nam = forward_maps(model, x, config.nam_branches)
            probability[chosen] = to_numpy(prob)
            stop = int(chosen[-1]) + 1 if start + batch_size < len(order) else nz
            for i, (z, plane) in enumerate(zip(chosen.tolist(), to_numpy(nam))):
                nam_vol[z] = grid.to_source(plane, order=1)
                if probability[z] >= config.probability_threshold:
                    images[z] = to_numpy(x[i, 0])
                    nams[z] = nam[i].clone()  # stays on the device
            report(stop, 2 * nz)
    return probability, nam_vol, images, nams


def _multi_gap_nams(multi_gap_model, grid: NetworkGrid, images: dict, shape, batch_size: int, cancel):
    """The multi-GAP NAM of the nodule slices: on the network grid and as a volume."""
    volume = np.zeros(shape, np.float32)
    nams: dict[int, np.ndarray] = {}
    device = device_of(multi_gap_model)
    zs = sorted(images)
    with evaluating(multi_gap_model):
        for start in range(0, len(zs), batch_size):
            raise_if_cancelled(cancel)
            chunk = zs[start : start + batch_size]
            x = torch.from_numpy(np.stack([images[z] for z in chunk]))[:, None].to(device)
            _, multi = forward_maps(multi_gap_model, x, "all")
            for z, plane in zip(chunk, to_numpy(multi)):
                nams[z] = plane
                volume[z] = grid.to_source(plane, order=1)
    return volume, nams
