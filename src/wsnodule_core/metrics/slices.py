"""Slice-level metrics of the NAM paper's Table 1: per-slice and per-nodule records and their summary.

The matching rules are in :func:`evaluate_slices` and ``docs/metrics.md``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
from scipy import ndimage as ndi

from wsnodule_core.errors import DimensionError, MetricInputError
from wsnodule_core.metrics.common import (
    NAN,
    check_same_shape,
    check_spacing,
    contingency,
    dice_from_counts,
    is_label_map,
    mean_sd,
    rate,
    relabel,
    equivalent_diameter_2d,
)

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class SliceRecord:
    """One evaluated slice.

    ``kind`` is ``"nodule"`` (a slice with nodule), ``"no_nodule"`` or ``"excluded"`` (ground
    truth only holds components below the minimum size: neither positive nor negative).
    ``dice`` is the Dice of the whole predicted and ground-truth masks of the slice on nodule
    slices, ``nan`` on other slices. ``n_fp_components`` counts predicted components that touch
    no ground-truth pixel.
    """

    case_id: str
    slice_index: int
    kind: str
    n_gt_nodules: int
    n_pred_components: int
    n_fp_components: int
    predicted: bool
    dice: float


@dataclass(frozen=True)
class NoduleRecord:
    """One ground-truth nodule cross-section (a GT component on one nodule slice).

    ``dice`` is the Dice between the GT component and the union of the predicted components
    that overlap it (0 when none does); ``pred_area_mm2`` is that union's area and
    ``doa_mm2 = |pred_area_mm2 - area_mm2|``. Only detected records enter TP Dice and TP DOA.
    """

    case_id: str
    slice_index: int
    gt_label: int
    area_mm2: float
    diameter_mm: float
    detected: bool
    dice: float
    pred_area_mm2: float
    doa_mm2: float


@dataclass(frozen=True)
class SliceEvaluation:
    """Per-slice and per-nodule records; pool several with :func:`pool_slice_evaluations`."""

    slices: tuple[SliceRecord, ...]
    nodules: tuple[NoduleRecord, ...]


def _slice_gt_components(gt_slice: np.ndarray, labelled: bool) -> tuple[np.ndarray, int, np.ndarray]:
    """(labels 1..n, n, original label ids) of the GT nodules on one slice."""
    if labelled:
        relabelled, ids = relabel(gt_slice)
        return relabelled, len(ids) - 1, ids
    labels, n = ndi.label(gt_slice != 0, structure=_EIGHT_CONNECTED)
    return labels, n, np.arange(n + 1)


def evaluate_slices(
    pred: np.ndarray,
    gt: np.ndarray,
    pixel_spacing_mm: Sequence[float],
    *,
    slice_labels: np.ndarray | Sequence[bool] | None = None,
    min_gt_diameter_mm: float = 3.0,
    min_dice: float = 0.0,
    case_id: str = "",
) -> SliceEvaluation:
    """Evaluate a stack of 2D slices with the NAM paper's slice-level rules.

    Matching rules (the paper is silent on them; see ``docs/metrics.md``):

    * A **GT nodule** on a slice is a connected component of the GT mask (2D, 8-connectivity)
      whose equivalent diameter ``2 sqrt(area / pi)`` is at least ``min_gt_diameter_mm``. If
      ``gt`` is an integer label map, each label value on the slice is one
      nodule (so touching nodules stay apart); an integer array is a label map when it holds
      at least two distinct nonzero values. Smaller components are *ignored*: they are not
      nodules, but a prediction touching them is not a false positive either.
    * A **predicted nodule** is a connected component (8-connectivity) of the predicted mask.
    * A GT nodule is **detected** when at least one predicted component overlaps it (shares a
      pixel) and the Dice between the GT nodule and the union of the predicted components that
      overlap it is ``>= min_dice`` (default 0: any overlap).
    * A slice is a **nodule slice** when it holds at least one GT nodule and a **no-nodule
      slice** when its GT mask is empty; a slice whose GT holds only ignored components is
      *excluded* (the paper drops nodules under 3 mm and takes negatives only where no reader
      marked anything). With ``slice_labels`` given, the label decides instead: a True slice
      must hold a GT nodule (else :class:`MetricInputError`); a False slice is a no-nodule slice
      whatever its GT mask holds.

    Parameters
    ----------
    pred, gt
        ``(n_slices, H, W)`` (or one ``(H, W)`` slice) masks; nonzero is foreground. ``gt`` may
        be an integer label map with one label per nodule (at least two distinct nonzero values
        in the stack; a 0/1 or 0/255 mask is binary).
    pixel_spacing_mm
        ``(row, column)`` = ``(y, x)`` pixel spacing in mm, shared by all slices. Evaluate
        volumes with different spacings separately and pool the results.
    slice_labels
        Optional ground-truth slice labels (True = slice with nodule), one per slice.
    min_gt_diameter_mm
        Minimum equivalent diameter of a GT component to count as a nodule (paper: 3 mm).
    min_dice
        Minimum Dice for a detection; 0 means any overlap.
    case_id
        Copied into every record, so pooled results keep their origin.
    """
    pred_arr = np.asarray(pred)
    gt_arr = np.asarray(gt)
    check_same_shape(pred_arr, gt_arr)
    if pred_arr.ndim == 2:
        pred_arr, gt_arr = pred_arr[None], gt_arr[None]
    if pred_arr.ndim != 3:
        raise DimensionError(
            f"pred and gt must be (n_slices, H, W) stacks or single (H, W) slices, got shape "
            f"{np.asarray(pred).shape}."
        )
    spacing = check_spacing(pixel_spacing_mm, 2, "pixel_spacing_mm")
    pixel_area = spacing[0] * spacing[1]
    if not (math.isfinite(min_dice) and 0.0 <= min_dice <= 1.0):
        raise MetricInputError(f"min_dice must lie in [0, 1], got {min_dice}.")
    if not (math.isfinite(min_gt_diameter_mm) and min_gt_diameter_mm >= 0):
        raise MetricInputError(f"min_gt_diameter_mm must be a finite value >= 0, got {min_gt_diameter_mm}.")
    n_slices = pred_arr.shape[0]
    labels_arr = None
    if slice_labels is not None:
        labels_arr = np.asarray(slice_labels).astype(bool).ravel()
        if labels_arr.size != n_slices:
            raise MetricInputError(
                f"slice_labels has {labels_arr.size} entries but the masks have {n_slices} slices: "
                "give one label per slice."
            )
    pred_mask = pred_arr != 0
    labelled = is_label_map(gt_arr)

    slice_records: list[SliceRecord] = []
    nodule_records: list[NoduleRecord] = []
    for i in range(n_slices):
        if not (labels_arr is not None and labels_arr[i]) and not gt_arr[i].any() and not pred_mask[i].any():
            slice_records.append(SliceRecord(case_id, i, "no_nodule", 0, 0, 0, False, NAN))
            continue
        g_labels, n_g, g_ids = _slice_gt_components(gt_arr[i], labelled)
        p_labels, n_p = ndi.label(pred_mask[i], structure=_EIGHT_CONNECTED)
        table = contingency(g_labels, n_g, p_labels, n_p)
        g_areas = table.sum(axis=1)
        p_areas = table.sum(axis=0)
        counted = [
            k
            for k in range(1, n_g + 1)
            if equivalent_diameter_2d(g_areas[k] * pixel_area) >= min_gt_diameter_mm
        ]
        gt_any = n_g > 0
        if labels_arr is None:
            kind = "nodule" if counted else ("excluded" if gt_any else "no_nodule")
        elif labels_arr[i]:
            if not counted:
                raise MetricInputError(
                    f"slice {i} of case {case_id!r} is labelled as a slice with nodule but its ground-"
                    f"truth mask holds no component of at least {min_gt_diameter_mm} mm: fix the "
                    "labels or lower min_gt_diameter_mm."
                )
            kind = "nodule"
        else:
            kind = "no_nodule"

        if kind != "nodule":
            n_fp = n_p if kind == "no_nodule" else 0
            slice_records.append(SliceRecord(case_id, i, kind, 0, n_p, n_fp, n_p > 0, NAN))
            continue

        n_fp = int(np.count_nonzero(table[1:, 1:].sum(axis=0) == 0))  # components touching no GT pixel
        gt_mask = gt_arr[i] != 0
        pred_slice = pred_mask[i]
        slice_dice = dice_from_counts(
            np.count_nonzero(gt_mask & pred_slice), np.count_nonzero(gt_mask), np.count_nonzero(pred_slice)
        )
        slice_records.append(SliceRecord(case_id, i, kind, len(counted), n_p, n_fp, n_p > 0, slice_dice))
        for k in counted:
            overlapping = np.nonzero(table[k, 1:])[0] + 1
            inter = float(table[k, overlapping].sum())
            union_area = float(p_areas[overlapping].sum())
            dice = dice_from_counts(inter, float(g_areas[k]), union_area) if inter > 0 else 0.0
            area_mm2 = float(g_areas[k]) * pixel_area
            pred_area_mm2 = union_area * pixel_area
            nodule_records.append(
                NoduleRecord(
                    case_id=case_id,
                    slice_index=i,
                    gt_label=int(g_ids[k]),
                    area_mm2=area_mm2,
                    diameter_mm=equivalent_diameter_2d(area_mm2),
                    detected=bool(inter > 0 and dice >= min_dice),
                    dice=dice,
                    pred_area_mm2=pred_area_mm2,
                    doa_mm2=abs(pred_area_mm2 - area_mm2),
                )
            )
    return SliceEvaluation(tuple(slice_records), tuple(nodule_records))


def pool_slice_evaluations(evaluations: Iterable[SliceEvaluation]) -> SliceEvaluation:
    """Concatenate the records of several evaluations (e.g. one per case) into one."""
    evaluations = list(evaluations)
    return SliceEvaluation(
        tuple(r for e in evaluations for r in e.slices),
        tuple(r for e in evaluations for r in e.nodules),
    )


def summarize_slices(evaluation: SliceEvaluation) -> dict[str, float | int]:
    """The NAM paper's Table 1 row for an evaluation.

    Keys: ``tpr`` (detected GT nodules / GT nodules), ``fpr`` (no-nodule slices with any
    prediction / no-nodule slices), ``fpr_nodule`` (nodule slices with a predicted component
    touching no GT / nodule slices), ``dice`` and ``dice_sd`` (slice Dice over nodule slices,
    0 where nothing overlaps), ``tp_dice``, ``tp_dice_sd``, ``tp_doa_mm2``, ``tp_doa_mm2_sd``
    (over detected nodules), and the counts ``n_slices``, ``n_nodule_slices``,
    ``n_no_nodule_slices``, ``n_excluded_slices``, ``n_gt_nodules``, ``n_detected``,
    ``n_fp_no_nodule_slices``, ``n_fp_nodule_slices`` (the numerators of the two FPRs).
    A rate or mean with nothing to average is ``nan`` (e.g. ``tpr`` with no GT nodule);
    SDs are population SDs (ddof=0).
    """
    nodule_slices = [s for s in evaluation.slices if s.kind == "nodule"]
    negative_slices = [s for s in evaluation.slices if s.kind == "no_nodule"]
    detected = [n for n in evaluation.nodules if n.detected]
    dice, dice_sd = mean_sd(s.dice for s in nodule_slices)
    tp_dice, tp_dice_sd = mean_sd(n.dice for n in detected)
    tp_doa, tp_doa_sd = mean_sd(n.doa_mm2 for n in detected)
    n_fp_negative = sum(s.predicted for s in negative_slices)
    n_fp_nodule = sum(s.n_fp_components > 0 for s in nodule_slices)
    return {
        "tpr": rate(len(detected), len(evaluation.nodules)),
        "fpr": rate(n_fp_negative, len(negative_slices)),
        "fpr_nodule": rate(n_fp_nodule, len(nodule_slices)),
        "dice": dice,
        "dice_sd": dice_sd,
        "tp_dice": tp_dice,
        "tp_dice_sd": tp_dice_sd,
        "tp_doa_mm2": tp_doa,
        "tp_doa_mm2_sd": tp_doa_sd,
        "n_slices": len(evaluation.slices),
        "n_nodule_slices": len(nodule_slices),
        "n_no_nodule_slices": len(negative_slices),
        "n_excluded_slices": sum(s.kind == "excluded" for s in evaluation.slices),
        "n_gt_nodules": len(evaluation.nodules),
        "n_detected": len(detected),
        "n_fp_no_nodule_slices": n_fp_negative,
        "n_fp_nodule_slices": n_fp_nodule,
    }
