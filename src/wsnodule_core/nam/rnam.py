"""R-NAM screening: which candidate, once masked out of the image, changes the NAM most (eq. 4).

Each candidate R_j is filled with surrounding parenchyma, all masked images of a slice go through
the same network as one batch (or chunks of ``batch_size``), and
``score_j = sum_{(x, y) in C} (NAM_I(x, y) - NAM_{I minus R_j}(x, y))^2``; the fine segmentation is
R_k with k = argmax_j score_j.

Two fills (the paper only says the candidate is "masked"):

* ``"ring"`` (default): the candidate, dilated by ``dilation_px`` to take its partial-volume rim,
  gets the median of a ring around it that excludes every dense-phase pixel, plus Gaussian noise
  with the ring's robust standard deviation (1.4826 MAD), seeded per candidate so the result does
  not depend on the batching.
* ``"biharmonic"``: ``skimage.restoration.inpaint_biharmonic`` inside the candidate's bounding box
  grown by ``bbox_margin_px``; smooth, no noise, but it smears neighbouring vessels into the hole.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage
from skimage.restoration import inpaint_biharmonic

from wsnodule_core.errors import NamSegmentationError
from wsnodule_core.nam.maps import Branches, evaluating, forward_maps, to_numpy
from wsnodule_core.training.device import device_of


@dataclass(frozen=True)
class FillParams:
    """How a candidate is masked out of the image (see the module docstring).

    Attributes
    ----------
    method
        ``"ring"`` or ``"biharmonic"``.
    dilation_px
        The candidate is dilated by this many pixels before filling.
    ring_width_px
        Width of the ring whose median fills the candidate (``"ring"``).
    noise
        Add Gaussian noise with the ring's robust standard deviation (``"ring"``).
    bbox_margin_px
        Margin around the candidate's bounding box for ``"biharmonic"``.
    seed
        Seed of the fill noise (the noise of candidate j uses ``(seed, j)``).
    """

    method: str = "ring"
    dilation_px: int = 1
    ring_width_px: int = 3
    noise: bool = True
    bbox_margin_px: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in ("ring", "biharmonic"):
            raise NamSegmentationError(
                f"FillParams.method must be 'ring' or 'biharmonic', got {self.method!r}."
            )
        if self.dilation_px < 0 or self.ring_width_px < 1 or self.bbox_margin_px < 1:
            raise NamSegmentationError(
                "FillParams: dilation_px must be >= 0, ring_width_px and bbox_margin_px >= 1 "
                f"(got {self.dilation_px}, {self.ring_width_px}, {self.bbox_margin_px})."
            )


_CROSS = ndimage.generate_binary_structure(2, 1)


def mask_candidate(
    image: np.ndarray,
    candidate: np.ndarray,
    dense: np.ndarray,
    params: FillParams = FillParams(),
    index: int = 0,
) -> np.ndarray:
    """A copy of ``image`` (2D) with ``candidate`` filled with surrounding non-dense tissue.

    ``dense`` marks the pixels excluded from the ring (all dense phases, all candidates); ``index``
    selects the noise stream.
    """
    image = np.asarray(image, dtype=np.float32)
    hole = np.asarray(candidate, bool)
    if params.dilation_px > 0:
        hole = ndimage.binary_dilation(hole, _CROSS, iterations=params.dilation_px)
    out = image.copy()
    if not hole.any():
        return out
    if params.method == "biharmonic":
        ys, xs = np.nonzero(hole)
        m = params.bbox_margin_px
        box = (slice(max(0, ys.min() - m), ys.max() + m + 1), slice(max(0, xs.min() - m), xs.max() + m + 1))
        out[box] = inpaint_biharmonic(image[box].astype(np.float64), hole[box]).astype(np.float32)
        return out
    ring = ndimage.binary_dilation(hole, _CROSS, iterations=params.ring_width_px) & ~hole
    ring_values = image[ring & ~np.asarray(dense, bool)]
    widen = params.ring_width_px
    while ring_values.size < 8 and widen < max(image.shape):  # crowded by dense tissue: look further
        widen *= 2
        ring = ndimage.binary_dilation(hole, _CROSS, iterations=widen) & ~hole
        ring_values = image[ring & ~np.asarray(dense, bool)]
    if ring_values.size == 0:
        ring_values = image[~np.asarray(dense, bool)] if (~np.asarray(dense, bool)).any() else image.ravel()
    centre = float(np.median(ring_values))
    fill = np.full(int(hole.sum()), centre, dtype=np.float32)
    if params.noise:
        sd = 1.4826 * float(np.median(np.abs(ring_values - centre)))
        rng = np.random.default_rng([params.seed, int(index)])
        fill += rng.normal(0.0, sd, fill.size).astype(np.float32)
    out[hole] = fill
    return out


@dataclass(frozen=True, eq=False)
class RnamResult:
    """Scores (eq. 4) of the candidates 1..n (index j-1 for label j), their R-NAMs, the argmax."""

    scores: np.ndarray
    rnams: np.ndarray | None
    chosen: int | None

    @property
    def chosen_label(self) -> int | None:
        return None if self.chosen is None else self.chosen + 1


def rnam_screening(
    model: torch.nn.Module,
    image: np.ndarray,
    candidates: np.ndarray,
    n_candidates: int,
    scope: np.ndarray,
    nam: np.ndarray | torch.Tensor,
    *,
    dense: np.ndarray | None = None,
    fill: FillParams = FillParams(),
    branches: Branches = "all",
    batch_size: int = 16,
    keep_rnams: bool = True,
) -> RnamResult:
    """Score every candidate R_j of one slice by eq. 4 and pick the argmax.

    Parameters
    ----------
    model
        The classifier whose NAM ``nam`` is (``forward_with_maps``); it stays on its device.
    image
        The network input (H, W), window-normalised to [0, 1].
    candidates, n_candidates
        Label image of the candidates (1..n) and n.
    scope
        Boolean (H, W): the sum of eq. 4 runs over it; or (n, H, W), one region per candidate.
    nam
        NAM_I (H, W), the NAM of the unmasked image with the same ``branches``.
    dense
        Pixels excluded from the fill's ring; defaults to the candidates themselves.
    batch_size
        Masked images per forward pass (the result does not depend on it).
    keep_rnams
        Return the R-NAMs (n, H, W) as float32 (else only the scores).
    """
    image = np.asarray(image, dtype=np.float32)
    candidates = np.asarray(candidates)
    scope = np.asarray(scope, bool)
    per_candidate = scope.ndim == 3
    if (
        image.ndim != 2 or image.shape != candidates.shape or tuple(nam.shape) != image.shape
        or scope.shape[-2:] != image.shape or (per_candidate and scope.shape[0] != n_candidates)
    ):
        raise NamSegmentationError(
            f"rnam_screening: image {image.shape}, candidates {candidates.shape}, scope {scope.shape} "
            f"and NAM {tuple(nam.shape)} must share one 2D shape (H, W); scope may also be "
            "(n_candidates, H, W), one region per candidate."
        )
    if n_candidates == 0:
        rnams = np.zeros((0, *image.shape), np.float32) if keep_rnams else None
        return RnamResult(np.zeros(0, np.float32), rnams, None)
    if batch_size < 1:
        raise NamSegmentationError(f"rnam_screening: batch_size must be >= 1, got {batch_size}.")
    exclude = candidates > 0 if dense is None else (np.asarray(dense, bool) | (candidates > 0))
    device = device_of(model)
    nam_t = torch.as_tensor(nam, dtype=torch.float32).to(device)
    scope_t = torch.as_tensor(scope).to(device)
    scores, rnams = [], []
    with evaluating(model):
        for start in range(0, n_candidates, batch_size):
            labels = range(start + 1, min(n_candidates, start + batch_size) + 1)
            masked = np.stack([mask_candidate(image, candidates == j, exclude, fill, j - 1) for j in labels])
            batch = torch.from_numpy(masked)[:, None].to(device)
            _, rnam = forward_maps(model, batch, branches)
            diff = (nam_t[None] - rnam) ** 2
            region = scope_t[start : start + len(labels)] if per_candidate else scope_t[None]
            scores.append(to_numpy((diff * region).sum(dim=(1, 2))))
            if keep_rnams:
                rnams.append(to_numpy(rnam))
    score = np.concatenate(scores).astype(np.float32)
    return RnamResult(score, np.concatenate(rnams) if keep_rnams else None, int(np.argmax(score)))
