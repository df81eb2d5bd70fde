"""3D NAM / R-NAM segmentation of CT patches and of whole volumes (slid over the lungs).

For a patch classified "nodule": the 3D NAM (:func:`~wsnodule_core.nam.model3d.nodule_activation_map_3d`);
scope C = the most prominent blob of the NAM after a 3D watershed; candidates R_j = 26-connected
components of dense voxels (a 3D multi-phase ICM, :func:`icm_segment_3d`) inside C (grown by
``grow_vox``); 3D R-NAMs: every candidate is filled with surrounding parenchyma, all masked patches
go through the network in batches, and the fine segmentation is
``R_k = argmax_j sum_{v in C} (NAM_I(v) - NAM_{I minus R_j}(v))^2`` (eq. 4 in 3D).
Works with any model whose ``forward_with_maps`` returns ``logits`` and per-branch ``nams`` of
shape (B, d, h, w). See ``docs/nam_3d.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from scipy import ndimage
from skimage.feature import peak_local_max
from skimage.segmentation import watershed

from wsnodule_core.errors import NamSegmentationError, SegmentationCancelled
from wsnodule_core.image.resample import resample_to_grid, resample_to_spacing
from wsnodule_core.image.window import AIR_HU, NAM3D_WINDOW, apply_window
from wsnodule_core.io.volume import Volume, check_mask_matches
from wsnodule_core.nam.icm import gmm_1d, kmeans_1d
from wsnodule_core.nam.model3d import nodule_activation_map_3d
from wsnodule_core.training.device import device_of

Branches = str | Sequence[int]
_BALL = ndimage.generate_binary_structure(3, 1)
_CUBE = np.ones((3, 3, 3), bool)


@dataclass(frozen=True)
class Segment3DParams:
    """Parameters of the 3D NAM/R-NAM segmentation (lengths in voxels of the patch grid).

    Attributes
    ----------
    window
        HU window mapped to [0, 1]: must be the one the model was trained with.
    threshold
        A patch is "nodule" when its softmax nodule probability is at least this.
    branches
        GAP branches whose NAMs are summed for the scope and the R-NAMs ("all" or indices, 0 = deepest).
    smooth_sigma_vox, threshold_fraction, peak_min_distance_vox, scope_fraction
        Blob analysis: Gaussian smoothing of the NAM; blobs live above ``threshold_fraction`` of
        the NAM's maximum; watershed markers at local maxima at least ``peak_min_distance_vox``
        apart; the scope is the best basin where the NAM exceeds ``scope_fraction`` of its peak.
    n_phases, beta, icm_sweeps, dense_min_hu
        3D ICM: phases, Potts weight (per 26-neighbour), sweeps; a phase is dense when its mean
        is at least ``dense_min_hu`` (denser than parenchyma).
    grow_vox, min_candidate_vox
        Candidates are dense components inside the scope dilated by ``grow_vox`` that touch the
        scope; components under ``min_candidate_vox`` voxels are dropped.
    fill_dilation_vox, ring_width_vox, fill_noise, seed
        Masking R_j: the candidate dilated by ``fill_dilation_vox`` gets the median of a ring of
        ``ring_width_vox`` around it (dense voxels excluded) plus Gaussian noise of the ring's
        robust SD (seeded by ``(seed, j)``).
    batch_size
        Masked patches (or sliding patches) per forward pass.
    """

    window: tuple[float, float] = NAM3D_WINDOW
    threshold: float = 0.5
    branches: Branches = "all"
    smooth_sigma_vox: float = 1.0
    threshold_fraction: float = 0.2
    peak_min_distance_vox: int = 4
    scope_fraction: float = 0.3
    n_phases: int = 4
    beta: float = 0.5
    icm_sweeps: int = 5
    dense_min_hu: float = -500.0
    grow_vox: int = 3
    min_candidate_vox: int = 8
    fill_dilation_vox: int = 1
    ring_width_vox: int = 2
    fill_noise: bool = True
    seed: int = 0
    batch_size: int = 8

    def __post_init__(self) -> None:
        object.__setattr__(self, "window", tuple(float(w) for w in self.window))
        fractions = (self.threshold_fraction, self.scope_fraction)
        if not 0.0 <= self.threshold <= 1.0 or not all(0.0 <= f < 1.0 for f in fractions):
            raise NamSegmentationError(
                "Segment3DParams: threshold must be in [0, 1], threshold_fraction and scope_fraction in "
                f"[0, 1) (got {self.threshold}, {self.threshold_fraction}, {self.scope_fraction}).")
        if self.n_phases < 2 or self.icm_sweeps < 0 or self.beta < 0 or self.batch_size < 1:
            raise NamSegmentationError(
                "Segment3DParams: n_phases must be >= 2, icm_sweeps and beta >= 0, batch_size >= 1 "
                f"(got {self.n_phases}, {self.icm_sweeps}, {self.beta}, {self.batch_size}).")
        if (min(self.grow_vox, self.fill_dilation_vox) < 0 or self.smooth_sigma_vox < 0
                or min(self.ring_width_vox, self.min_candidate_vox, self.peak_min_distance_vox) < 1):
            raise NamSegmentationError(
                "Segment3DParams: grow_vox and fill_dilation_vox must be >= 0, ring_width_vox, "
                "min_candidate_vox and peak_min_distance_vox >= 1, smooth_sigma_vox >= 0.")

    def dense_level(self) -> float:
        """``dense_min_hu`` in the network's [0, 1] units."""
        lo, hi = self.window
        return float(np.clip((self.dense_min_hu - lo) / (hi - lo), 0.0, 1.0))


# --- scope -------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Blob3D:
    """One watershed basin of a 3D NAM: peak position (z, y, x), peak value, basin and scope."""

    peak_zyx: tuple[int, int, int]
    peak: float
    basin: np.ndarray
    scope: np.ndarray


def find_blobs_3d(nam: np.ndarray, params: Segment3DParams = Segment3DParams()) -> list[Blob3D]:
    """The blobs of a 3D NAM, highest peak first (prominence = peak height); [] when nothing is positive."""
    nam = np.asarray(nam, np.float64)
    if nam.ndim != 3:
        raise NamSegmentationError(f"find_blobs_3d: expected a 3D NAM, got shape {nam.shape}.")
    smooth = ndimage.gaussian_filter(nam, params.smooth_sigma_vox) if params.smooth_sigma_vox > 0 else nam
    top = float(smooth.max())
    if not np.isfinite(top) or top <= 0.0:
        return []
    threshold = params.threshold_fraction * top
    above = smooth > threshold
    peaks = peak_local_max(smooth, min_distance=int(params.peak_min_distance_vox), threshold_abs=threshold,
                           labels=above.astype(np.int32), exclude_border=False)
    if len(peaks) == 0:
        peaks = np.array([np.unravel_index(int(np.argmax(smooth)), smooth.shape)])
    markers = np.zeros(smooth.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    basins = watershed(-smooth, markers, mask=above)
    blobs = []
    for label in range(1, len(peaks) + 1):
        basin = basins == label
        if not basin.any():
            continue
        height = float(smooth[basin].max())
        peak = np.unravel_index(int(np.argmax(np.where(basin, smooth, -np.inf))), smooth.shape)
        blobs.append(Blob3D(tuple(int(p) for p in peak), height, basin,
                            basin & (smooth > params.scope_fraction * height)))
    blobs.sort(key=lambda b: -b.peak)
    return blobs


# --- 3D multi-phase ICM --------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Icm3DResult:
    """Phase map (0 = darkest), class means and SDs, sweeps run."""

    phases: np.ndarray
    means: np.ndarray
    sds: np.ndarray
    sweeps: int


def icm_segment_3d(image: np.ndarray, n_phases: int = 4, beta: float = 0.5, max_sweeps: int = 5, *,
                   init_region: np.ndarray | None = None, min_sd: float = 1e-3) -> Icm3DResult:
    """Multi-phase ICM of a 3D image: K Gaussian classes (1D k-means then EM on the intensities, from
    :mod:`wsnodule_core.nam.icm`), a Potts prior of weight ``beta`` per differing 26-neighbour, and
    sequential ICM sweeps vectorised over the 8 parity colours (voxels of one colour are never
    26-neighbours); means and SDs are re-estimated after each sweep. Phases ordered by mean."""
    image = np.asarray(image, np.float64)
    if image.ndim != 3:
        raise NamSegmentationError(f"icm_segment_3d: expected a 3D image, got shape {image.shape}.")
    k = int(n_phases)
    sample = image if init_region is None or not np.any(init_region) else image[np.asarray(init_region, bool)]
    means, sds, _ = gmm_1d(sample, kmeans_1d(sample, k), 50, min_sd)
    sds = np.maximum(sds, min_sd)

    def data_term() -> np.ndarray:
        return (image[None] - means[:, None, None, None]) ** 2 / (2 * sds[:, None, None, None] ** 2) \
            + np.log(sds)[:, None, None, None]

    labels = np.argmin(data_term(), axis=0)
    sweeps = 0
    for sweeps in range(1, max_sweeps + 1):
        data = data_term()
        changed = 0
        for colour in np.ndindex(2, 2, 2):
            view = tuple(slice(c, None, 2) for c in colour)
            onehot = (labels[None] == np.arange(k)[:, None, None, None]).astype(np.float32)
            counts = np.stack([ndimage.uniform_filter(o, 3, mode="constant") * 27.0 - o for o in onehot])
            energy = data[(slice(None), *view)] - beta * counts[(slice(None), *view)]
            new = np.argmin(energy, axis=0)
            changed += int(np.count_nonzero(new != labels[view]))
            labels[view] = new
        flat = labels.ravel()
        n = np.bincount(flat, minlength=k).astype(np.float64)
        s1 = np.bincount(flat, weights=image.ravel(), minlength=k)
        s2 = np.bincount(flat, weights=image.ravel() ** 2, minlength=k)
        safe = np.maximum(n, 1.0)
        new_means = np.where(n > 0, s1 / safe, means)
        sds = np.sqrt(np.maximum(np.where(n > 1, s2 / safe - new_means**2, sds**2), min_sd**2))
        means = new_means
        if changed == 0:
            break
    order = np.argsort(means, kind="stable")
    rank = np.empty(k, np.int64)
    rank[order] = np.arange(k)
    return Icm3DResult(rank[labels].astype(np.uint8), means[order], sds[order], sweeps)


def dense_candidates_3d(dense: np.ndarray, scope: np.ndarray, params: Segment3DParams = Segment3DParams()
                        ) -> tuple[np.ndarray, int]:
    """Candidates R_j: 26-connected dense components inside the scope grown by ``grow_vox`` that touch the
    scope, at least ``min_candidate_vox`` voxels; labels 1..n by decreasing size."""
    scope = np.asarray(scope, bool)
    region = ndimage.binary_dilation(scope, _BALL, iterations=params.grow_vox) if params.grow_vox else scope
    labels, n = ndimage.label(np.asarray(dense, bool) & region, structure=_CUBE)
    if n == 0:
        return labels.astype(np.int32), 0
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    touching = np.zeros(n + 1, bool)
    touching[np.unique(labels[scope])] = True
    keep = np.flatnonzero((sizes >= params.min_candidate_vox) & touching)
    keep = keep[keep > 0]
    keep = keep[np.argsort(-sizes[keep], kind="stable")]
    relabel = np.zeros(n + 1, np.int32)
    relabel[keep] = np.arange(1, len(keep) + 1)
    return relabel[labels], int(len(keep))


# --- R-NAM screening ----------------------------------------------------------------------------


def mask_candidate_3d(image: np.ndarray, candidate: np.ndarray, exclude: np.ndarray,
                      params: Segment3DParams = Segment3DParams(), index: int = 0) -> np.ndarray:
    """A copy of ``image`` with ``candidate`` (dilated) filled with the surrounding non-dense tissue."""
    out = np.array(image, np.float32, copy=True)
    hole = np.asarray(candidate, bool)
    if params.fill_dilation_vox:
        hole = ndimage.binary_dilation(hole, _BALL, iterations=params.fill_dilation_vox)
    if not hole.any():
        return out
    keep = ~np.asarray(exclude, bool)
    width = params.ring_width_vox
    values = np.zeros(0, np.float32)
    while values.size < 8 and width <= max(image.shape):
        ring = ndimage.binary_dilation(hole, _BALL, iterations=width) & ~hole & keep
        values = out[ring]
        width *= 2
    if values.size == 0:
        values = out[keep] if keep.any() else out.ravel()
    centre = float(np.median(values))
    fill = np.full(int(hole.sum()), centre, np.float32)
    if params.fill_noise:
        sd = 1.4826 * float(np.median(np.abs(values - centre)))
        fill += np.random.default_rng([params.seed, int(index)]).normal(0.0, sd, fill.size).astype(np.float32)
    out[hole] = fill
    return out


def _forward(model, images01: np.ndarray, branches: Branches) -> tuple[np.ndarray, np.ndarray]:
    """Nodule probabilities (B,) and NAMs (B, D, H, W) at the input size, as numpy float32."""
    x = torch.from_numpy(np.ascontiguousarray(images01, np.float32))[:, None].to(device_of(model))
    output = model.forward_with_maps(x)
    prob = torch.softmax(output.logits.float(), dim=1)[:, 1]
    nam = nodule_activation_map_3d(output, tuple(images01.shape[1:]), branches)
    return prob.cpu().float().numpy(), nam.cpu().float().numpy()


def rnam_screening_3d(
    model, image01: np.ndarray, candidates: np.ndarray, n_candidates: int, scope: np.ndarray, nam: np.ndarray,
    *, dense: np.ndarray | None = None, params: Segment3DParams = Segment3DParams(),
) -> tuple[np.ndarray, np.ndarray, int | None]:
    """Eq. 4 in 3D: the score of every candidate 1..n, their R-NAMs (n, D, H, W) and the chosen label.

    ``image01`` is the network input (D, H, W) in [0, 1], ``nam`` its NAM at that size with
    ``params.branches``; masked patches go through ``model`` in batches of ``params.batch_size``.
    """
    image01 = np.asarray(image01, np.float32)
    if image01.ndim != 3 or np.shape(candidates) != image01.shape or np.shape(scope) != image01.shape \
            or np.shape(nam) != image01.shape:
        raise NamSegmentationError(
            f"rnam_screening_3d: image {image01.shape}, candidates {np.shape(candidates)}, scope "
            f"{np.shape(scope)} and NAM {np.shape(nam)} must share one 3D shape.")
    if n_candidates == 0:
        return np.zeros(0, np.float32), np.zeros((0, *image01.shape), np.float32), None
    exclude = np.asarray(candidates) > 0
    if dense is not None:
        exclude = exclude | np.asarray(dense, bool)
    scope = np.asarray(scope, bool)
    scores, rnams = [], []
    was_training = bool(getattr(model, "training", False))
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(1, n_candidates + 1, params.batch_size):
                labels = range(start, min(n_candidates, start + params.batch_size - 1) + 1)
                masked = np.stack([mask_candidate_3d(image01, candidates == j, exclude, params, j - 1)
                                   for j in labels])
                _, rnam = _forward(model, masked, params.branches)
                scores.append((((nam[None] - rnam) ** 2) * scope[None]).sum(axis=(1, 2, 3)))
                rnams.append(rnam)
    finally:
        model.train(was_training)
    score = np.concatenate(scores).astype(np.float32)
    return score, np.concatenate(rnams), int(np.argmax(score)) + 1


# --- one patch --------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class PatchSegmentation3D:
    """The 3D NAM/R-NAM result of one patch; every map is on the patch's grid.

    ``mask`` (uint8 Volume, 1 = the chosen candidate, in the patch's geometry: paste it back with
    :func:`paste_mask`), ``nam`` (float32 Volume), ``scope`` (bool), ``candidates`` (int32 labels
    1..n), ``scores`` (n,) eq. 4, ``rnams`` (n, D, H, W), ``chosen`` (label or None).
    """

    probability: float
    is_nodule: bool
    mask: Volume
    nam: Volume
    scope: np.ndarray
    candidates: np.ndarray
    n_candidates: int
    scores: np.ndarray
    rnams: np.ndarray
    chosen: int | None


def _segment_from_maps(model, patch: Volume, image01: np.ndarray, probability: float, nam: np.ndarray,
                       params: Segment3DParams) -> PatchSegmentation3D:
    shape = image01.shape
    empty = np.zeros(shape, bool)
    nam_volume = patch.with_array(nam.astype(np.float32))
    is_nodule = probability >= params.threshold
    blobs = find_blobs_3d(nam, params) if is_nodule else []
    if not blobs:
        return PatchSegmentation3D(probability, is_nodule, patch.with_array(np.zeros(shape, np.uint8)),
                                   nam_volume, empty, np.zeros(shape, np.int32), 0, np.zeros(0, np.float32),
                                   np.zeros((0, *shape), np.float32), None)
    scope = blobs[0].scope
    icm = icm_segment_3d(image01, params.n_phases, params.beta, params.icm_sweeps)
    dense_phases = np.flatnonzero(icm.means >= params.dense_level())
    dense = icm.phases >= dense_phases[0] if dense_phases.size else empty
    candidates, n = dense_candidates_3d(dense, scope, params)
    scores, rnams, chosen = rnam_screening_3d(model, image01, candidates, n, scope, nam, dense=dense,
                                              params=params)
    mask = (candidates == chosen) if chosen is not None else empty
    return PatchSegmentation3D(probability, is_nodule, patch.with_array(mask.astype(np.uint8)), nam_volume,
                               scope, candidates, n, scores, rnams, chosen)


def segment_patch_3d(model, patch: Volume,
                     params: Segment3DParams = Segment3DParams()) -> PatchSegmentation3D:
    """Classify a CT patch (HU, on the isotropic grid the model was trained on) and segment its nodule.

    A patch below ``params.threshold`` gets an empty mask (its NAM is still returned).
    """
    image01 = apply_window(patch.array, params.window)
    was_training = bool(getattr(model, "training", False))
    model.eval()
    try:
        with torch.inference_mode():
            prob, nam = _forward(model, image01[None], params.branches)
    finally:
        model.train(was_training)
    return _segment_from_maps(model, patch, image01, float(prob[0]), nam[0], params)


def extract_patch_3d(volume: Volume, centre_xyz: Sequence[float], patch_size: int,
                     spacing_mm: float) -> Volume:
    """A cube of ``patch_size`` voxels at ``spacing_mm`` (isotropic) centred (voxel ``patch_size // 2``) on a
    world point, with the volume's direction; outside voxels are air."""
    from wsnodule_core.data.luna16 import extract_patch

    return extract_patch(volume, centre_xyz, size_vox=int(patch_size), spacing=float(spacing_mm), fill=AIR_HU)


def paste_mask(mask: Volume, reference: Volume) -> np.ndarray:
    """A mask on another grid resampled onto ``reference``'s grid (linear, >= 0.5), by world position."""
    moved = resample_to_grid(mask.with_array(np.asarray(mask.array, np.float32)), reference, fill=0.0)
    return np.asarray(moved.array) >= 0.5


# --- whole volume -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Detection3D:
    """A nodule patch: its centre (world x, y, z mm), probability, chosen candidate's voxels and score."""

    centre_xyz: tuple[float, float, float]
    probability: float
    n_voxels: int
    score: float


@dataclass(frozen=True, eq=False)
class VolumeSegmentation3D:
    """``labels``: uint16 Volume on the input grid (0 background, 1..n nodules, 26-connected);
    ``detections``: one per nodule patch; patch counts; ``patches``: kept patch results (when asked)."""

    labels: Volume
    n_nodules: int
    detections: tuple[Detection3D, ...]
    n_patches: int
    n_positive: int
    patches: tuple[PatchSegmentation3D, ...] = ()


def _starts(n: int, size: int, stride: int) -> np.ndarray:
    return np.unique(np.r_[np.arange(0, max(n - size, 0) + 1, stride), max(n - size, 0)])


def segment_volume_3d(model, volume: Volume, lungs: np.ndarray | Volume | None, *, patch_size: int = 32,
                      stride: int | None = None, spacing_mm: float = 1.0,
                      params: Segment3DParams = Segment3DParams(), central_only: bool = True,
                      central_fraction: float = 0.5, keep_patches: bool = False,
                      progress: Callable[[int, int], None] | None = None,
                      cancel: Callable[[], bool] | None = None) -> VolumeSegmentation3D:
    """Slide the 3D NAM/R-NAM segmentation over a volume's lungs and assemble a label mask on its grid.

    Parameters
    ----------
    volume, lungs
        The CT (HU) and its lung mask on the same grid (None: every voxel counts as lung).
    patch_size, spacing_mm
        The cube side (voxels) and isotropic spacing (mm) the model was trained with; the volume is
        resampled to that spacing (same physical box, origin and direction) and padded with air.
    stride
        Step between patches (voxels; default ``patch_size // 2``). A patch is run when its central
        half holds lung.
    central_only, central_fraction
        Keep a patch's chosen candidate only when its centroid lies in the central
        ``central_fraction`` of the cube (what a positive training label means); off-centre nodules
        are left to the patches that hold them more centrally, and patch-edge false positives drop.
    keep_patches
        Keep every nodule patch's :class:`PatchSegmentation3D` (NAMs, R-NAMs: memory heavy).
    progress, cancel
        ``progress(done, total)`` after each batch; ``cancel()`` True raises ``SegmentationCancelled``.
    """
    if lungs is None:
        lung_array = np.ones(volume.shape, bool)
    else:
        lung_array = np.asarray(check_mask_matches(lungs, volume)) > 0
    size = int(patch_size)
    stride = int(stride or max(1, size // 2))
    if size < 4 or stride < 1:
        raise NamSegmentationError(
            f"segment_volume_3d: patch_size must be >= 4 and stride >= 1, got {size}, {stride}.")
    iso = resample_to_spacing(volume, spacing_mm, size="ceil", fill=AIR_HU)
    iso_lungs = np.asarray(resample_to_spacing(volume.with_array(lung_array.astype(np.uint8)), spacing_mm,
                                               size="ceil", interpolator="nearest").array) > 0
    pad = [(0, max(0, size - n)) for n in iso.shape]
    hu = np.pad(np.asarray(iso.array, np.float32), pad, constant_values=AIR_HU)
    lung = np.pad(iso_lungs, pad)
    # padding only adds voxels at the far end: the isotropic grid's geometry still holds
    grid = Volume(hu, iso.spacing, iso.origin, iso.direction, iso.metadata)
    q0, q1 = size // 4, size - size // 4
    axes = [_starts(n, size, stride) for n in hu.shape]
    starts = [(z, y, x) for z in axes[0] for y in axes[1] for x in axes[2]
              if lung[z + q0:z + q1, y + q0:y + q1, x + q0:x + q1].any()]
    found = np.zeros(hu.shape, bool)
    detections: list[Detection3D] = []
    kept: list[PatchSegmentation3D] = []
    n_positive = 0
    was_training = bool(getattr(model, "training", False))
    model.eval()
    try:
        for b in range(0, len(starts), params.batch_size):
            if cancel is not None and cancel():
                raise SegmentationCancelled(
                    f"the 3D NAM segmentation was cancelled after {b} of {len(starts)} patches.")
            chunk = starts[b:b + params.batch_size]
            regions = [tuple(slice(s, s + size) for s in start) for start in chunk]
            images = np.stack([apply_window(hu[r], params.window) for r in regions])
            with torch.inference_mode():
                probs, nams = _forward(model, images, params.branches)
            for start, region, image01, prob, nam in zip(chunk, regions, images, probs, nams):
                if prob < params.threshold:
                    continue
                n_positive += 1
                origin = grid.index_to_world(np.asarray(start, float))
                patch = Volume(hu[region], grid.spacing, tuple(origin), grid.direction, grid.metadata)
                with torch.inference_mode():
                    result = _segment_from_maps(model, patch, image01, float(prob), nam, params)
                chosen = np.asarray(result.mask.array) > 0
                if result.chosen is not None and central_only:
                    centroid = np.argwhere(chosen).mean(axis=0)
                    if np.any(np.abs(centroid - (size - 1) / 2.0) > central_fraction * size / 2.0):
                        chosen[...] = False  # off-centre: left to a better-placed patch
                if chosen.any():
                    found[region] |= chosen
                    centre = grid.index_to_world(np.asarray(start) + (size - 1) / 2.0)
                    detections.append(Detection3D(tuple(float(c) for c in centre), float(prob),
                                                  int(chosen.sum()), float(result.scores[result.chosen - 1])))
                if keep_patches:
                    kept.append(result)
            if progress is not None:
                progress(min(b + params.batch_size, len(starts)), len(starts))
    finally:
        model.train(was_training)
    on_input = paste_mask(grid.with_array(found.astype(np.uint8)), volume)
    labels, n = ndimage.label(on_input, structure=_CUBE)
    return VolumeSegmentation3D(volume.with_array(labels.astype(np.uint16)), int(n), tuple(detections),
                                len(starts), n_positive, tuple(kept))
