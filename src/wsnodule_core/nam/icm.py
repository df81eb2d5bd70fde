"""Multi-phase segmentation of a CT slice by iterated conditional modes (ICM) on a Potts MRF.

The paper cites an ICM multi-phase method (its ref. [9]) that could not be recovered; this is the
textbook form: K Gaussian intensity classes, initialised on the intensity distribution of
the slice (or of a region such as the lungs) by an exact 1D k-means refined by a 1D Gaussian
mixture (EM; the likelier of two starts), a Potts prior with weight ``beta``
over the 8-neighbourhood, ICM sweeps and re-estimation of the class means and variances between
sweeps. A sweep is vectorised with a 4-colour coding of the pixel grid (pixels with the same
``(y % 2, x % 2)`` are never 8-neighbours), so updating one colour at a time is exactly sequential
ICM in that visiting order. Phases are numbered by increasing mean intensity.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from wsnodule_core.errors import NamSegmentationError
from wsnodule_core.nam.intensity_classes import gmm_1d, kmeans_1d

__all__ = ["IcmParams", "IcmResult", "dense_candidates", "dense_phases", "gmm_1d", "icm_segment", "kmeans_1d"]


@dataclass(frozen=True)
class IcmParams:
    """Parameters of :func:`icm_segment` and :func:`dense_candidates`.

    Attributes
    ----------
    n_phases
        Number of intensity classes K (the paper: 4, "determined by global intensity distribution").
    beta
        Potts smoothness weight: the energy of a label grows by ``beta`` per 8-neighbour with
        another label (in units of the Gaussian negative log-likelihood).
    max_sweeps
        Maximum number of ICM sweeps.
    tol
        Stop when a sweep changes fewer than this fraction of the pixels.
    kmeans_iterations
        Lloyd iterations after the exact 1D k-means initialisation (on a 512-bin histogram).
    em_iterations
        EM iterations of the 1D Gaussian mixture that refines the initialisation (two starts: the
        k-means centres and evenly spread centres; the likelier fit wins). 0: k-means only.
    min_sd
        Lower bound of a class's standard deviation (intensity units), keeps the energies finite.
    n_dense_phases
        Candidates come from the ``n_dense_phases`` brightest phases (denser than parenchyma),
        unless ``dense_min_mean`` is set.
    dense_min_mean
        When set, the dense phases are those whose mean intensity is at least this (in the units
        of the image given to ICM), and always the brightest phase.
    min_area_px
        Candidates smaller than this many pixels are dropped.
    """

    n_phases: int = 4
    beta: float = 1.0
    max_sweeps: int = 10
    tol: float = 1e-3
    kmeans_iterations: int = 30
    em_iterations: int = 50
    min_sd: float = 1e-3
    n_dense_phases: int = 2
    dense_min_mean: float | None = None
    min_area_px: int = 4

    def __post_init__(self) -> None:
        if self.n_phases < 2:
            raise NamSegmentationError(f"IcmParams.n_phases must be >= 2, got {self.n_phases}.")
        if not 1 <= self.n_dense_phases < self.n_phases:
            raise NamSegmentationError(
                f"IcmParams.n_dense_phases must be in [1, n_phases - 1] = [1, {self.n_phases - 1}], "
                f"got {self.n_dense_phases}."
            )
        if self.beta < 0 or self.max_sweeps < 0 or self.min_sd <= 0 or self.min_area_px < 1:
            raise NamSegmentationError(
                "IcmParams: beta and max_sweeps must be >= 0, min_sd > 0 and min_area_px >= 1 "
                f"(got beta={self.beta}, max_sweeps={self.max_sweeps}, min_sd={self.min_sd}, "
                f"min_area_px={self.min_area_px})."
            )


@dataclass(frozen=True, eq=False)
class IcmResult:
    """Phase map (0 = darkest) with the final class means and standard deviations."""

    phases: np.ndarray
    means: np.ndarray
    sds: np.ndarray
    sweeps: int
    converged: bool


def _initial_classes(sample: np.ndarray, params: IcmParams) -> tuple[np.ndarray, np.ndarray]:
    """Class means and SDs: the Gaussian mixture of highest likelihood from two starts.

    Starts: the optimal k-means centres (which split a class holding most pixels rather than
    isolate a small one) and centres evenly spread over the 0.5-99.5 percentile range.
    """
    k = params.n_phases
    kmeans = kmeans_1d(sample, k, params.kmeans_iterations)
    if params.em_iterations == 0:
        return kmeans, np.full(k, max(params.min_sd, float(np.std(sample)) / k))
    lo, hi = np.percentile(sample, [0.5, 99.5])
    even = lo + (hi - lo) * (np.arange(k) + 0.5) / k
    fits = [gmm_1d(sample, start, params.em_iterations, params.min_sd) for start in (kmeans, even)]
    means, sds, _ = max(fits, key=lambda fit: fit[2])
    return means, sds


_OFFSETS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]


def _colour_counts(padded: np.ndarray, a: int, b: int, shape: tuple[int, int]) -> np.ndarray:
    """(k, h, w) counts of 8-neighbours per label at the pixels ``[a::2, b::2]``.

    ``padded`` is the (k, H + 2, W + 2) one-hot label image with a zero border.
    """
    h, w = shape
    total = np.zeros((padded.shape[0], h, w), np.int16)
    for dy, dx in _OFFSETS:
        y0, x0 = 1 + a + dy, 1 + b + dx
        total += padded[:, y0 : y0 + 2 * h - 1 : 2, x0 : x0 + 2 * w - 1 : 2]
    return total


def _data_term(image: np.ndarray, means: np.ndarray, sds: np.ndarray) -> np.ndarray:
    """(k, H, W) Gaussian negative log-likelihood of every label at every pixel."""
    mu, sd = means[:, None, None], sds[:, None, None]
    return (image[None] - mu) ** 2 / (2.0 * sd**2) + np.log(sd)


def _class_stats(image: np.ndarray, labels: np.ndarray, k: int, old_means, old_sds, min_sd: float):
    flat = labels.ravel()
    n = np.bincount(flat, minlength=k).astype(np.float64)
    s1 = np.bincount(flat, weights=image.ravel(), minlength=k)
    s2 = np.bincount(flat, weights=image.ravel() ** 2, minlength=k)
    safe = np.maximum(n, 1.0)
    means = np.where(n > 0, s1 / safe, old_means)
    var = np.where(n > 1, s2 / safe - means**2, old_sds**2)
    return means, np.sqrt(np.maximum(var, min_sd**2))


def icm_segment(
    image: np.ndarray, params: IcmParams = IcmParams(), *, init_region: np.ndarray | None = None
) -> IcmResult:
    """Segment a 2D image into ``params.n_phases`` phases (0 = darkest).

    Parameters
    ----------
    image
        2D intensities (HU or window-normalised).
    params
        See :class:`IcmParams`.
    init_region
        Optional boolean mask: the k-means initialisation uses only its intensities (e.g. the lungs);
        the whole image is labelled either way.
    """
    image = np.asarray(image, dtype=np.float64)
    if image.ndim != 2:
        raise NamSegmentationError(f"icm_segment: expected a 2D image, got shape {image.shape}.")
    k = params.n_phases
    sample = image if init_region is None or not np.any(init_region) else image[np.asarray(init_region, bool)]
    means, sds = _initial_classes(sample, params)
    data = _data_term(image, means, sds)
    labels = np.argmin(data, axis=0).astype(np.int64)
    means, sds = _class_stats(image, labels, k, means, sds, params.min_sd)
    height, width = image.shape
    padded = np.zeros((k, height + 2, width + 2), np.int16)
    padded[:, 1:-1, 1:-1] = labels[None] == np.arange(k)[:, None, None]
    colours = [(a, b) for a in (0, 1) for b in (0, 1) if a < height and b < width]
    sweeps, converged = 0, False
    for sweeps in range(1, params.max_sweeps + 1):
        # data term of every label for all pixels at once (Gaussian negative log-likelihood)
        data = _data_term(image, means, sds)
        changed = 0
        for a, b in colours:
            view = labels[a::2, b::2]
            counts = _colour_counts(padded, a, b, view.shape)
            energy = data[:, a::2, b::2] - params.beta * counts
            new = np.argmin(energy, axis=0)
            changed += int(np.count_nonzero(new != view))
            view[...] = new
            onehot = new[None] == np.arange(k)[:, None, None]
            padded[:, 1 + a : height + 1 : 2, 1 + b : width + 1 : 2] = onehot
        means, sds = _class_stats(image, labels, k, means, sds, params.min_sd)
        if changed < params.tol * labels.size:
            converged = True
            break
    order = np.argsort(means, kind="stable")
    rank = np.empty(k, dtype=np.int64)
    rank[order] = np.arange(k)
    return IcmResult(rank[labels].astype(np.uint8), means[order], sds[order], sweeps, converged)


def dense_phases(result: IcmResult, params: IcmParams = IcmParams()) -> np.ndarray:
    """Boolean map of the pixels in a dense phase (see ``IcmParams.n_dense_phases``/``dense_min_mean``)."""
    k = len(result.means)
    if params.dense_min_mean is None:
        first = k - params.n_dense_phases
    else:
        above = np.flatnonzero(result.means >= params.dense_min_mean)
        first = min(int(above[0]) if above.size else k - 1, k - 1)
    return result.phases >= first


def dense_candidates(
    dense: np.ndarray, scope: np.ndarray, params: IcmParams = IcmParams()
) -> tuple[np.ndarray, int]:
    """Candidate regions R_j: 8-connected components of the ``dense`` pixels inside ``scope``.

    Returns a label image (0 = none, 1..n) with components under ``params.min_area_px`` removed
    and the others numbered by decreasing area, and n.
    """
    dense = np.asarray(dense, bool) & np.asarray(scope, bool)
    labels, n = ndimage.label(dense, structure=np.ones((3, 3), bool))
    if n == 0:
        return labels.astype(np.int32), 0
    areas = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    keep = np.flatnonzero(areas >= params.min_area_px)
    keep = keep[np.argsort(-areas[keep], kind="stable")]
    relabel = np.zeros(n + 1, dtype=np.int32)
    relabel[keep + 1] = np.arange(1, len(keep) + 1)
    return relabel[labels], int(len(keep))
