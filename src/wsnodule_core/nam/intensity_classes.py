"""1D intensity classes for initialising ICM: exact k-means and a Gaussian mixture (EM), on histograms."""

from __future__ import annotations

import numpy as np

from wsnodule_core.errors import NamSegmentationError


def kmeans_1d(values: np.ndarray, k: int, iterations: int = 30) -> np.ndarray:
    """Sorted centres of the optimal 1D k-means of ``values``, to the resolution of a 512-bin histogram.

    In 1D the optimal clusters are intervals, so dynamic programming over the histogram's bins
    finds the global optimum (Lloyd's iterations from a quantile start get stuck when one class
    holds most pixels, as air does in a CT slice); ``iterations`` Lloyd steps then polish it.
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size == 0:
        raise NamSegmentationError("kmeans_1d: no intensities to cluster (the region is empty).")
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return lo + np.arange(k, dtype=np.float64)  # flat image: any distinct centres
    counts, edges = np.histogram(values, bins=512, range=(lo, hi))
    x = 0.5 * (edges[:-1] + edges[1:])
    w = counts.astype(np.float64)
    s0, s1, s2 = (np.concatenate([[0.0], np.cumsum(w * x**p)]) for p in (0, 1, 2))
    # cost[i, j]: squared error of one cluster made of bins i..j (inf when i > j)
    n0 = s0[None, 1:] - s0[:-1, None]
    n1 = s1[None, 1:] - s1[:-1, None]
    n2 = s2[None, 1:] - s2[:-1, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        cost = np.where(n0 > 0, n2 - n1**2 / np.where(n0 > 0, n0, 1.0), 0.0)
    cost = np.where(np.triu(np.ones_like(cost, bool)), np.maximum(cost, 0.0), np.inf)
    nb = len(x)
    best = cost[0].copy()  # best[j]: one cluster over bins 0..j
    splits = []
    for _ in range(1, k):
        # total[i, j] = best[i - 1] + cost[i, j]: last cluster starts at bin i
        total = np.concatenate([[np.inf], best[:-1]])[:, None] + cost
        start = np.argmin(total, axis=0)
        splits.append(start)
        best = total[start, np.arange(nb)]
    bounds = [nb]
    for start in reversed(splits):
        bounds.append(int(start[bounds[-1] - 1]))
    bounds = sorted(set([0, nb] + bounds[1:]))
    centres = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        mass = w[a:b].sum()
        centres.append(float((w[a:b] * x[a:b]).sum() / mass) if mass > 0 else float(x[a:b].mean()))
    while len(centres) < k:  # fewer populated intervals than classes
        centres.append(centres[-1] + (hi - lo) / 512)
    centres = np.sort(np.asarray(centres[:k]))
    for _ in range(iterations):
        assign = np.argmin(np.abs(x[:, None] - centres[None, :]), axis=1)
        mass = np.bincount(assign, weights=w, minlength=k)
        sums = np.bincount(assign, weights=w * x, minlength=k)
        new = np.where(mass > 0, sums / np.maximum(mass, 1e-12), centres)
        if np.allclose(new, centres):
            break
        centres = new
    return np.sort(centres)


def gmm_1d(values: np.ndarray, centres: np.ndarray, iterations: int = 50, min_sd: float = 1e-3):
    """Means, standard deviations and log-likelihood of a 1D Gaussian mixture fitted by EM from ``centres``.

    Runs on a 512-bin histogram of ``values``.
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    k = len(centres)
    lo, hi = float(values.min()), float(values.max())
    means = np.asarray(centres, dtype=np.float64).copy()
    if hi <= lo:
        return means, np.full(k, min_sd), 0.0
    counts, edges = np.histogram(values, bins=512, range=(lo, hi))
    x = 0.5 * (edges[:-1] + edges[1:])
    w = counts.astype(np.float64)
    assign = np.argmin(np.abs(x[:, None] - means[None, :]), axis=1)
    mass = np.maximum(np.bincount(assign, weights=w, minlength=k), 1e-12)
    sds = np.sqrt(np.bincount(assign, weights=w * (x - means[assign]) ** 2, minlength=k) / mass)
    sds = np.maximum(sds, max(min_sd, (hi - lo) / 512))
    weights = mass / mass.sum()
    log_likelihood = -np.inf
    for _ in range(iterations + 1):
        log_p = -0.5 * ((x[:, None] - means) / sds) ** 2 - np.log(sds) + np.log(np.maximum(weights, 1e-12))
        top = log_p.max(axis=1, keepdims=True)
        resp = np.exp(log_p - top)
        log_likelihood = float((w * (top[:, 0] + np.log(resp.sum(axis=1)))).sum())
        if _ == iterations:
            break
        resp /= resp.sum(axis=1, keepdims=True)
        rw = resp * w[:, None]
        mass = np.maximum(rw.sum(axis=0), 1e-12)
        new_means = (rw * x[:, None]).sum(axis=0) / mass
        sds = np.sqrt(np.maximum((rw * (x[:, None] - new_means) ** 2).sum(axis=0) / mass, 0.0))
        sds = np.maximum(sds, max(min_sd, (hi - lo) / 512))
        weights = mass / mass.sum()
        done = np.allclose(new_means, means, atol=1e-6 * (hi - lo))
        means = new_means
        if done:
            break
    order = np.argsort(means)
    return means[order], sds[order], log_likelihood
