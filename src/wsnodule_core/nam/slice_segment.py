"""NAM/R-NAM segmentation of one slice on the network's grid: scope, ICM candidates, R-NAM screening."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from wsnodule_core.errors import NamSegmentationError
from wsnodule_core.nam.icm import dense_candidates, dense_phases, icm_segment
from wsnodule_core.nam.maps import evaluating, forward_maps, to_numpy
from wsnodule_core.image.window import apply_window
from wsnodule_core.nam.rnam import rnam_screening
from wsnodule_core.nam.scope import combine_multi_gap, screening_scopes
from wsnodule_core.nam.segment_config import NamConfig
from wsnodule_core.training.device import device_of


@dataclass(frozen=True, eq=False)
class NoduleScope:
    """One screened blob: its 1-GAP scope C1, the final scope C, its candidates and the pick.

    ``candidate_labels`` are labels of :attr:`SliceResult.candidates`; ``chosen_label`` is R_k
    (None when the scope holds no candidate); ``multi_gap_used`` tells whether C = C_multi.
    """

    c1: np.ndarray
    scope: np.ndarray
    multi_gap_used: bool
    prominence: float
    candidate_labels: tuple[int, ...]
    chosen_label: int | None


@dataclass(frozen=True, eq=False)
class SliceResult:
    """Everything computed for one slice, on the network's grid (H, W).

    ``candidates`` is a label image (1..n); ``scores[j - 1]`` is eq. 4 for label j (summed over the
    C1 of its scope) and ``rnams[j - 1]`` its R-NAM (None when not kept). ``coarse`` is the coarse
    mask, ``fine`` the union of the chosen candidates. ``phases`` is the ICM phase map (None on a
    slice not segmented).
    """

    probability: float
    is_nodule: bool
    image: np.ndarray
    nam: np.ndarray
    multi_nam: np.ndarray | None
    phases: np.ndarray | None
    scopes: tuple[NoduleScope, ...]
    candidates: np.ndarray
    scores: np.ndarray
    rnams: np.ndarray | None
    coarse: np.ndarray
    fine: np.ndarray

    @property
    def scope(self) -> np.ndarray:
        """Union of the final scopes C."""
        out = np.zeros(self.nam.shape, bool)
        for s in self.scopes:
            out |= s.scope
        return out

    @property
    def c1(self) -> np.ndarray:
        """Union of the 1-GAP scopes C1 (equal to :attr:`scope` without a multi-GAP model)."""
        out = np.zeros(self.nam.shape, bool)
        for s in self.scopes:
            out |= s.c1
        return out

    @property
    def chosen_labels(self) -> tuple[int, ...]:
        return tuple(s.chosen_label for s in self.scopes if s.chosen_label is not None)


def keep_lung_candidates(
    labels: np.ndarray, count: int, lung_mask: np.ndarray, min_fraction: float
) -> tuple[np.ndarray, int]:
    """Drop candidates with less than ``min_fraction`` of their pixels in ``lung_mask``; relabel 1..n."""
    if count == 0:
        return labels, 0
    lungs = np.asarray(lung_mask, bool)
    area = np.bincount(labels.ravel(), minlength=count + 1)
    inside = np.bincount(labels[lungs].ravel(), minlength=count + 1)
    keep = np.flatnonzero(inside[1:] >= min_fraction * area[1:]) + 1
    relabel = np.zeros(count + 1, labels.dtype)
    relabel[keep] = np.arange(1, len(keep) + 1, dtype=labels.dtype)
    return relabel[labels], len(keep)


def segment_slice(
    model: torch.nn.Module,
    slice_hu: np.ndarray,
    *,
    config: NamConfig = NamConfig(),
    multi_gap_model: torch.nn.Module | None = None,
    lung_mask: np.ndarray | None = None,
    force: bool = False,
) -> SliceResult:
    """Classify one 2D HU slice (fed at its own size) and, if it is a nodule slice, segment it.

    Parameters
    ----------
    model
        The (1-GAP) classifier: ``forward_with_maps`` as in :mod:`wsnodule_core.nam.model`.
    slice_hu
        (H, W) Hounsfield units, already cropped/resized as the network expects.
    config
        See :class:`NamConfig`.
    multi_gap_model
        Optional multi-GAP classifier giving the finer scope C_multi inside C1.
    lung_mask
        Optional (H, W) lungs: candidates mostly outside them are dropped
        (``config.min_candidate_lung_fraction``), and ICM starts from them when
        ``config.icm_init == "lung"``.
    force
        Segment even when the slice is not classified as a nodule slice.
    """
    slice_hu = np.asarray(slice_hu, dtype=np.float32)
    if slice_hu.ndim != 2:
        raise NamSegmentationError(f"segment_slice: expected a 2D HU slice, got shape {slice_hu.shape}.")
    device = device_of(model)
    x = apply_window(torch.from_numpy(slice_hu).to(device), config.window)[None, None]
    with evaluating(model):
        prob, nam = forward_maps(model, x, config.nam_branches)
    multi_nam = None
    if multi_gap_model is not None:
        with evaluating(multi_gap_model):
            _, m = forward_maps(multi_gap_model, x.to(device_of(multi_gap_model)), "all")
        multi_nam = to_numpy(m[0])
    p = float(prob[0])
    image = to_numpy(x[0, 0])
    if p < config.probability_threshold and not force:
        return empty_result(p, image, to_numpy(nam[0]), multi_nam)
    return segment_positive(model, image, nam[0], p, multi_nam, config, lung_mask=lung_mask)


def empty_result(
    probability: float, image: np.ndarray, nam: np.ndarray, multi_nam: np.ndarray | None
) -> SliceResult:
    """The result of a slice that is not segmented (not a nodule slice)."""
    zeros = np.zeros(nam.shape, bool)
    return SliceResult(
        probability, False, image, nam, multi_nam, None, (), np.zeros(nam.shape, np.int32),
        np.zeros(0, np.float32), None, zeros, zeros.copy(),
    )


def segment_positive(
    model: torch.nn.Module,
    image: np.ndarray,
    nam: torch.Tensor,
    probability: float,
    multi_nam: np.ndarray | None,
    config: NamConfig,
    *,
    lung_mask: np.ndarray | None = None,
    keep_rnams: bool = True,
) -> SliceResult:
    """Scope, ICM candidates and R-NAM screening of a nodule slice (``image`` in [0, 1], H x W).

    ``nam`` is the model's NAM of ``image`` (a tensor on the model's device, or an array).
    """
    nam_np = to_numpy(nam) if isinstance(nam, torch.Tensor) else np.asarray(nam, np.float32)
    blobs = screening_scopes(nam_np, config.scope, top_k=config.top_k, min_ratio=config.second_blob_min_ratio)
    init = lung_mask if config.icm_init == "lung" else None
    icm = icm_segment(image, config.icm, init_region=init)
    dense = dense_phases(icm, config.icm_params())
    candidates = np.zeros(image.shape, np.int32)
    taken = np.zeros(image.shape, bool)
    per_scope: list[tuple] = []
    region_of: list[np.ndarray] = []
    n = 0
    for blob in blobs:
        scope, multi_blob = (blob.scope, None)
        if multi_nam is not None:
            scope, multi_blob = combine_multi_gap(blob, multi_nam, config.scope, config.multi_gap)
        scope = scope & ~taken
        taken |= scope
        labels, count = dense_candidates(dense, scope, config.icm)
        if lung_mask is not None and config.min_candidate_lung_fraction > 0:
            labels, count = keep_lung_candidates(labels, count, lung_mask, config.min_candidate_lung_fraction)
        candidates[labels > 0] = labels[labels > 0] + n
        own = tuple(range(n + 1, n + count + 1))
        region_of += [blob.scope] * count  # eq. 4 sums over C1 (= C without a multi-GAP model)
        per_scope.append((blob, scope, multi_blob is not None, own))
        n += count
    scores = np.zeros(0, np.float32)
    rnams = None
    if n and not config.rnam:  # no R-NAM pass: rank the candidates by their mean NAM
        scores = np.array([nam_np[candidates == j].mean() for j in range(1, n + 1)], np.float32)
    elif n:
        result = rnam_screening(
            model, image, candidates, n, np.stack(region_of), nam, dense=dense, fill=config.fill,
            branches=config.nam_branches, batch_size=config.rnam_batch_size, keep_rnams=keep_rnams,
        )
        scores, rnams = result.scores, result.rnams
    scopes = []
    coarse = np.zeros(image.shape, bool)
    fine = np.zeros(image.shape, bool)
    for blob, scope, used, own in per_scope:
        chosen = None
        if own:
            chosen = own[int(np.argmax(scores[np.asarray(own) - 1]))]
            fine |= candidates == chosen
            if config.coarse_mode == "all":
                coarse |= np.isin(candidates, own)
            else:
                means = [float(image[candidates == j].mean()) for j in own]
                coarse |= candidates == own[int(np.argmax(means))]
        scopes.append(NoduleScope(blob.scope, scope, used, blob.prominence, own, chosen))
    return SliceResult(
        probability, True, image, nam_np, multi_nam, icm.phases, tuple(scopes), candidates, scores, rnams,
        coarse, fine,
    )
