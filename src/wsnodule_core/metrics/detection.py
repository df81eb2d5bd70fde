"""3D per-nodule detection: one-to-one matching of predicted components to ground-truth nodules."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Literal, Sequence

import numpy as np
from scipy import ndimage as ndi
from scipy.optimize import linear_sum_assignment

from wsnodule_core.errors import DimensionError, MetricInputError
from wsnodule_core.metrics.common import (
    NAN,
    as_mask,
    check_same_shape,
    check_spacing,
    contingency,
    dice_from_counts,
    is_label_map,
    mean_sd,
    rate,
    relabel,
    equivalent_diameter_3d,
)
from wsnodule_core.metrics.volume import hausdorff95_mm, mean_surface_distance_mm

_TWENTY_SIX_CONNECTED = np.ones((3, 3, 3), dtype=bool)


@dataclass(frozen=True)
class NoduleMatch3D:
    """One ground-truth nodule and the predicted component matched to it (if any).

    For a missed nodule ``pred_id`` is None, ``iou`` and ``dice_3d`` are 0 and the distances
    ``inf``. ``centroid_distance_mm`` is between the GT centroid and the matched component's.
    """

    case_id: str
    gt_id: int
    pred_id: int | None
    iou: float
    dice_3d: float
    msd_mm: float
    hd95_mm: float
    centroid_distance_mm: float
    gt_diameter_mm: float
    gt_volume_mm3: float
    pred_volume_mm3: float

    @property
    def detected(self) -> bool:
        return self.pred_id is not None


@dataclass(frozen=True)
class DetectionEvaluation:
    """Per-nodule matches of one case, the unmatched predicted components and the counts.

    ``tp`` / ``fn``: matched / unmatched GT nodules; ``fp``: unmatched predicted components;
    ``sensitivity = tp / (tp + fn)``, ``nan`` when the case has no GT nodule. The counts are
    fields (not properties) so that they appear in the JSON written by ``reports.to_json``.
    """

    case_id: str
    nodules: tuple[NoduleMatch3D, ...]
    n_pred_components: int
    false_positive_ids: tuple[int, ...]
    tp: int
    fn: int
    fp: int
    sensitivity: float


def _joint_box(a: tuple[slice, ...], b: tuple[slice, ...], shape: tuple[int, ...]) -> tuple[slice, ...]:
    """Bounding box of two boxes plus one voxel of margin (kept inside the array)."""
    return tuple(
        slice(max(min(x.start, y.start) - 1, 0), min(max(x.stop, y.stop) + 1, n))
        for x, y, n in zip(a, b, shape)
    )


def _centroids_mm(
    labels_fg: np.ndarray,
    n: int,
    foreground: tuple[np.ndarray, ...],
    sizes: np.ndarray,
    spacing: Sequence[float],
) -> np.ndarray:
    """(n, ndim) centroids in mm of labels 1..n, from the foreground voxels' labels and indices."""
    if n == 0:
        return np.zeros((0, len(foreground)))
    columns = [
        np.bincount(labels_fg, weights=axis_index, minlength=n + 1)[1:] / sizes[1:] * step
        for axis_index, step in zip(foreground, spacing)
    ]
    return np.stack(columns, axis=1)


def match_nodules_3d(
    pred: np.ndarray,
    gt: np.ndarray,
    spacing: Sequence[float],
    *,
    rule: Literal["overlap", "centroid"] = "overlap",
    min_iou: float = 0.0,
    compute_distances: bool = True,
    case_id: str = "",
) -> DetectionEvaluation:
    """Match predicted 3D components to ground-truth nodules one to one.

    Nodules: connected components (26-connectivity) of ``gt``, or, when ``gt`` is an integer
    label map (at least two distinct nonzero values), one nodule per label value.
    Predictions: 26-connected components of ``pred``.

    A (GT, predicted) pair is *eligible* when

    * ``rule="overlap"`` (default): they share a voxel and their IoU is ``>= min_iou``
      (default 0: any overlap); or
    * ``rule="centroid"``: the predicted component's centroid lies within the GT nodule's
      equivalent-sphere radius of the GT centroid (mm, LUNA16-style).

    Among eligible pairs, the one-to-one assignment maximising the summed IoU (``overlap``)
    or the summed ``1 / (1 + centroid distance)`` (``centroid``) is chosen with
    :func:`scipy.optimize.linear_sum_assignment`. Matched GT nodules are TPs, the rest FNs;
    unmatched predicted components are FPs. Dice, MSD and HD95 are computed between a GT
    nodule and its matched component only.
    """
    p = as_mask(pred)
    gt_arr = np.asarray(gt)
    check_same_shape(p, gt_arr)
    if p.ndim != 3:
        raise DimensionError(f"match_nodules_3d needs 3D (z, y, x) masks, got shape {p.shape}.")
    sp = check_spacing(spacing, 3)
    if rule not in ("overlap", "centroid"):
        raise MetricInputError(f"rule must be 'overlap' or 'centroid', got {rule!r}.")
    if not (math.isfinite(min_iou) and 0.0 <= min_iou <= 1.0):
        raise MetricInputError(f"min_iou must lie in [0, 1], got {min_iou}.")
    voxel = float(np.prod(sp))

    if is_label_map(gt_arr):
        g_labels, g_ids = relabel(gt_arr)
        n_g = len(g_ids) - 1
    else:
        g_labels, n_g = ndi.label(gt_arr != 0, structure=_TWENTY_SIX_CONNECTED)
        g_ids = np.arange(n_g + 1)
    p_labels, n_p = ndi.label(p, structure=_TWENTY_SIX_CONNECTED)
    # Work on foreground voxels only: whole CT volumes are large, nodules small.
    foreground = np.nonzero((g_labels > 0) | p)
    g_fg, p_fg = g_labels[foreground], p_labels[foreground]
    table = contingency(g_fg, n_g, p_fg, n_p)
    g_sizes = table.sum(axis=1)
    p_sizes = table.sum(axis=0)
    inter = table[1:, 1:].astype(float)
    union = g_sizes[1:, None] + p_sizes[None, 1:] - inter
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)

    g_cent = _centroids_mm(g_fg, n_g, foreground, g_sizes, sp)
    p_cent = _centroids_mm(p_fg, n_p, foreground, p_sizes, sp)
    dist = np.linalg.norm(g_cent[:, None, :] - p_cent[None, :, :], axis=-1)
    radius = np.array([equivalent_diameter_3d(s * voxel) / 2 for s in g_sizes[1:]])

    if rule == "overlap":
        eligible = (inter > 0) & (iou >= min_iou)
        score = iou
    else:
        eligible = dist <= radius[:, None]
        score = 1.0 / (1.0 + dist)
    matches: dict[int, int] = {}
    if n_g and n_p:
        rows, cols = linear_sum_assignment(np.where(eligible, -score, 0.0))
        matches = {int(r): int(c) for r, c in zip(rows, cols) if eligible[r, c]}

    g_boxes = ndi.find_objects(g_labels, max_label=n_g)
    p_boxes = ndi.find_objects(p_labels, max_label=n_p)
    records = []
    for k in range(n_g):
        gt_volume = float(g_sizes[k + 1]) * voxel
        diameter = equivalent_diameter_3d(gt_volume)
        if k not in matches:
            records.append(
                NoduleMatch3D(
                    case_id, int(g_ids[k + 1]), None, 0.0, 0.0, math.inf, math.inf, NAN,
                    diameter, gt_volume, 0.0,
                )
            )
            continue
        j = matches[k]
        msd = hd95 = NAN
        if compute_distances:
            box = _joint_box(g_boxes[k], p_boxes[j], p.shape)
            a, b = p_labels[box] == j + 1, g_labels[box] == k + 1
            msd = mean_surface_distance_mm(a, b, sp)
            hd95 = hausdorff95_mm(a, b, sp)
        records.append(
            NoduleMatch3D(
                case_id=case_id,
                gt_id=int(g_ids[k + 1]),
                pred_id=j + 1,
                iou=float(iou[k, j]),
                dice_3d=dice_from_counts(inter[k, j], float(g_sizes[k + 1]), float(p_sizes[j + 1])),
                msd_mm=msd,
                hd95_mm=hd95,
                centroid_distance_mm=float(dist[k, j]),
                gt_diameter_mm=diameter,
                gt_volume_mm3=gt_volume,
                pred_volume_mm3=float(p_sizes[j + 1]) * voxel,
            )
        )
    matched_pred = set(matches.values())
    false_positives = tuple(j + 1 for j in range(n_p) if j not in matched_pred)
    tp = len(matches)
    return DetectionEvaluation(
        case_id, tuple(records), n_p, false_positives, tp, n_g - tp, len(false_positives), rate(tp, n_g)
    )


def summarize_detections(evaluations: Iterable[DetectionEvaluation]) -> dict[str, float | int]:
    """Pool per-case detections: counts, sensitivity, FPs per case and TP quality.

    Keys: ``n_cases``, ``tp``, ``fn``, ``fp``, ``sensitivity`` (pooled TP / (TP + FN), ``nan``
    without GT nodules), ``fp_per_case`` (``nan`` without cases), and mean/SD over true
    positives of ``tp_dice_3d``, ``tp_msd_mm``, ``tp_hd95_mm``.
    """
    evaluations = list(evaluations)
    tp = sum(e.tp for e in evaluations)
    fn = sum(e.fn for e in evaluations)
    fp = sum(e.fp for e in evaluations)
    matched = [n for e in evaluations for n in e.nodules if n.detected]
    out: dict[str, float | int] = {
        "n_cases": len(evaluations),
        "tp": tp,
        "fn": fn,
        "fp": fp,
        "sensitivity": rate(tp, tp + fn),
        "fp_per_case": rate(fp, len(evaluations)),
    }
    for key, attr in (("tp_dice_3d", "dice_3d"), ("tp_msd_mm", "msd_mm"), ("tp_hd95_mm", "hd95_mm")):
        out[key], out[f"{key}_sd"] = mean_sd(v for n in matched if math.isfinite(v := getattr(n, attr)))
    return out
