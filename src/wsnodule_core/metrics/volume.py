"""Volumetric metrics with physical spacing: 3D Dice, symmetric mean surface distance and HD95.

Surface distances come from MONAI, imported on first use (``help`` stays instant).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from wsnodule_core.errors import DimensionError
from wsnodule_core.metrics.common import (
    NAN,
    as_mask,
    check_same_shape,
    check_spacing,
    dice_from_counts,
    mean_sd,
)


@dataclass(frozen=True)
class VolumeEvaluation:
    """Overlap and surface distances of one predicted mask against its ground truth."""

    case_id: str
    dice_3d: float
    msd_mm: float
    hd95_mm: float
    pred_volume_mm3: float
    gt_volume_mm3: float


def dice_3d(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice ``2|P & G| / (|P| + |G|)`` of two masks of any dimension; 1.0 when both are empty."""
    p, g = as_mask(pred), as_mask(gt)
    check_same_shape(p, g)
    return dice_from_counts(np.count_nonzero(p & g), np.count_nonzero(p), np.count_nonzero(g))


def _surface_metric(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float], which: str) -> float:
    p, g = as_mask(pred), as_mask(gt)
    check_same_shape(p, g)
    if p.ndim not in (2, 3):
        raise DimensionError(f"surface distances need 2D or 3D masks, got shape {p.shape}.")
    sp = check_spacing(spacing, p.ndim)
    p_any, g_any = bool(p.any()), bool(g.any())
    if not p_any and not g_any:
        return 0.0
    if p_any != g_any:
        return math.inf
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance

    batch_p = p[None, None].astype(np.float32)
    batch_g = g[None, None].astype(np.float32)
    with warnings.catch_warnings():
        # MONAI 1.5+ passes a deprecated argument to its own get_mask_edges.
        warnings.simplefilter("ignore", FutureWarning)
        if which == "msd":
            value = compute_average_surface_distance(
                batch_p, batch_g, include_background=True, symmetric=True, spacing=list(sp)
            )
        else:
            value = compute_hausdorff_distance(
                batch_p, batch_g, include_background=True, percentile=95, directed=False, spacing=list(sp)
            )
    return float(np.asarray(value).ravel()[0])


def mean_surface_distance_mm(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float]) -> float:
    """Symmetric mean surface distance in mm (MONAI ``compute_average_surface_distance``).

    Surface voxels are the mask voxels removed by one binary erosion (6-connected in 3D,
    4-connected in 2D; the image border counts as background). The result is the mean of the
    pooled set of distances from every predicted surface voxel to the nearest GT surface voxel
    and from every GT surface voxel to the nearest predicted one, measured between voxel
    centres with ``spacing`` (mm, one value per axis). Both masks empty: 0.0; exactly one
    empty: ``inf``.
    """
    return _surface_metric(pred, gt, spacing, "msd")


def hausdorff95_mm(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float]) -> float:
    """95th-percentile symmetric Hausdorff distance in mm (MONAI ``compute_hausdorff_distance``).

    The larger of the two directed 95th percentiles (linear interpolation, as
    ``numpy.percentile``) of the surface-to-surface distances defined in
    :func:`mean_surface_distance_mm`. Both masks empty: 0.0; exactly one empty: ``inf``.
    """
    return _surface_metric(pred, gt, spacing, "hd95")


def evaluate_volume(
    pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float], *, case_id: str = ""
) -> VolumeEvaluation:
    """Dice, symmetric MSD and HD95 of one case (see the single-metric functions)."""
    p, g = as_mask(pred), as_mask(gt)
    check_same_shape(p, g)
    sp = check_spacing(spacing, p.ndim)
    voxel = float(np.prod(sp))
    return VolumeEvaluation(
        case_id=case_id,
        dice_3d=dice_3d(p, g),
        msd_mm=mean_surface_distance_mm(p, g, sp),
        hd95_mm=hausdorff95_mm(p, g, sp),
        pred_volume_mm3=float(np.count_nonzero(p) * voxel),
        gt_volume_mm3=float(np.count_nonzero(g) * voxel),
    )


def summarize_volumes(evaluations: Iterable[VolumeEvaluation]) -> dict[str, float | int]:
    """Mean, SD and median of Dice, MSD and HD95 over cases.

    Distances are averaged over the cases where they are finite; ``n_infinite_distance``
    counts the cases left out (one mask empty). Keys: ``dice_3d``, ``dice_3d_sd``,
    ``dice_3d_median``, the same for ``msd_mm`` and ``hd95_mm``, ``n_cases``,
    ``n_infinite_distance``.
    """
    evaluations = list(evaluations)
    out: dict[str, float | int] = {"n_cases": len(evaluations)}
    for key in ("dice_3d", "msd_mm", "hd95_mm"):
        values = [getattr(e, key) for e in evaluations]
        finite = [v for v in values if math.isfinite(v)]
        out[key], out[f"{key}_sd"] = mean_sd(finite)
        out[f"{key}_median"] = float(np.median(finite)) if finite else NAN
    out["n_infinite_distance"] = sum(not math.isfinite(e.msd_mm) for e in evaluations)
    return out
