"""Helpers the metric families share: mask and spacing checks, means and rates, equivalent diameters.

Conventions (every metric): masks are numpy arrays indexed ``(z, y, x)`` (slices ``(y, x)``),
spacings are millimetres in the same order. A value that is undefined (a rate with an empty
denominator, a mean over nothing) is ``nan``; a distance to an empty mask is ``inf``.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np

from wsnodule_core.errors import GeometryMismatchError, InvalidSpacingError

NAN = math.nan


def as_mask(array: np.ndarray) -> np.ndarray:
    return np.asarray(array) != 0


def check_same_shape(pred: np.ndarray, gt: np.ndarray) -> None:
    if pred.shape != gt.shape:
        raise GeometryMismatchError(
            f"pred has shape {pred.shape} but gt has shape {gt.shape}: both masks must be on the "
            "same grid. Resample the prediction onto the ground truth's grid first."
        )


def check_spacing(spacing: Sequence[float], ndim: int, name: str = "spacing") -> tuple[float, ...]:
    try:
        values = tuple(float(s) for s in spacing)
    except TypeError as exc:
        raise InvalidSpacingError(
            f"{name} must be a sequence of {ndim} millimetre values, got {spacing!r}."
        ) from exc
    if len(values) != ndim or not all(math.isfinite(v) and v > 0 for v in values):
        raise InvalidSpacingError(
            f"{name} must be {ndim} positive finite millimetre values (one per array axis), got "
            f"{spacing!r}. Pass the masks' voxel spacing, e.g. Volume.spacing."
        )
    return values


def mean_sd(values: Iterable[float]) -> tuple[float, float]:
    """Mean and population SD (ddof=0); (nan, nan) for no values."""
    arr = np.asarray(list(values), dtype=float)
    if arr.size == 0:
        return NAN, NAN
    return float(arr.mean()), float(arr.std())


def rate(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else NAN


def dice_from_counts(intersection: float, size_a: float, size_b: float) -> float:
    total = size_a + size_b
    return 1.0 if total == 0 else float(2.0 * intersection / total)


def contingency(labels_a: np.ndarray, n_a: int, labels_b: np.ndarray, n_b: int) -> np.ndarray:
    """(n_a + 1, n_b + 1) table of voxel counts per label pair (row/column 0 = background)."""
    joint = labels_a.astype(np.int64).ravel() * (n_b + 1) + labels_b.ravel()
    return np.bincount(joint, minlength=(n_a + 1) * (n_b + 1)).reshape(n_a + 1, n_b + 1)


def is_label_map(gt: np.ndarray) -> bool:
    """An integer array with at least two distinct nonzero values (a 0/255 mask is binary)."""
    if not np.issubdtype(gt.dtype, np.integer):
        return False
    values = gt[gt != 0]
    return values.size > 0 and bool(np.any(values != values[0]))


def relabel(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map arbitrary positive labels to 1..n; returns (relabelled, original ids indexed by new id)."""
    ids = np.unique(labels)
    ids = ids[ids > 0]
    lookup = np.searchsorted(ids, labels)
    out = np.where(labels > 0, lookup + 1, 0)
    return out, np.concatenate([[0], ids])


def equivalent_diameter_2d(area_mm2: float) -> float:
    """Diameter (mm) of the disc of the given area: ``2 * sqrt(area / pi)``."""
    return 2.0 * math.sqrt(area_mm2 / math.pi)


def equivalent_diameter_3d(volume_mm3: float) -> float:
    """Diameter (mm) of the sphere of the given volume: ``(6 * volume / pi) ** (1/3)``."""
    return (6.0 * volume_mm3 / math.pi) ** (1.0 / 3.0)
