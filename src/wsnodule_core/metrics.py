"""Every evaluation metric of wsnodule.

Three families, all documented with their matching rules in ``docs/metrics.md``:

* **Slice level** (the NAM paper's Table 1 and Fig. 3): :func:`evaluate_slices`,
  :func:`pool_slice_evaluations`, :func:`summarize_slices`, :func:`size_breakdown`.
* **Volumetric** with physical spacing: :func:`dice_3d`, :func:`mean_surface_distance_mm`,
  :func:`hausdorff95_mm`, :func:`evaluate_volume`, :func:`summarize_volumes`.
* **3D per-nodule detection**: :func:`match_nodules_3d`, :func:`summarize_detections`.

Conventions: masks are numpy arrays indexed ``(z, y, x)`` (slices ``(y, x)``), spacings are
millimetres in the same order. A value that is undefined (a rate with an empty denominator,
a mean over nothing) is ``nan``; a distance to an empty mask is ``inf``. The JSON writer of
:mod:`wsnodule_core.reports` writes both as ``null``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Iterable, Literal, Sequence

import numpy as np
from scipy import ndimage as ndi
from scipy.optimize import linear_sum_assignment

from wsnodule_core.errors import (
    DimensionError,
    GeometryMismatchError,
    InvalidSpacingError,
    MetricInputError,
)

#: Default nodule-size bins (equivalent diameter, mm): [3, 5), [5, 10), [10, 20), [20, 30), [30, inf).
DEFAULT_SIZE_BINS_MM: tuple[float, ...] = (3.0, 5.0, 10.0, 20.0, 30.0, math.inf)

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)
_TWENTY_SIX_CONNECTED = np.ones((3, 3, 3), dtype=bool)
_NAN = math.nan


# --------------------------------------------------------------------------- helpers


def _as_mask(array: np.ndarray) -> np.ndarray:
    return np.asarray(array) != 0


def _check_same_shape(pred: np.ndarray, gt: np.ndarray) -> None:
    if pred.shape != gt.shape:
        raise GeometryMismatchError(
            f"pred has shape {pred.shape} but gt has shape {gt.shape}: both masks must be on the "
            "same grid. Resample the prediction onto the ground truth's grid first."
        )


def _check_spacing(spacing: Sequence[float], ndim: int, name: str = "spacing") -> tuple[float, ...]:
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


def _mean_sd(values: Iterable[float]) -> tuple[float, float]:
    """Mean and population SD (ddof=0); (nan, nan) for no values."""
    arr = np.asarray(list(values), dtype=float)
    if arr.size == 0:
        return _NAN, _NAN
    return float(arr.mean()), float(arr.std())


def _rate(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else _NAN


def _dice_from_counts(intersection: float, size_a: float, size_b: float) -> float:
    total = size_a + size_b
    return 1.0 if total == 0 else float(2.0 * intersection / total)


def _contingency(labels_a: np.ndarray, n_a: int, labels_b: np.ndarray, n_b: int) -> np.ndarray:
    """(n_a + 1, n_b + 1) table of voxel counts per label pair (row/column 0 = background)."""
    joint = labels_a.astype(np.int64).ravel() * (n_b + 1) + labels_b.ravel()
    return np.bincount(joint, minlength=(n_a + 1) * (n_b + 1)).reshape(n_a + 1, n_b + 1)


def _is_label_map(gt: np.ndarray) -> bool:
    """An integer array with at least two distinct nonzero values (a 0/255 mask is binary)."""
    if not np.issubdtype(gt.dtype, np.integer):
        return False
    values = gt[gt != 0]
    return values.size > 0 and bool(np.any(values != values[0]))


def _relabel(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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


# --------------------------------------------------------------------------- slice level


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


@dataclass(frozen=True)
class SizeBin:
    """TPR, TP Dice and TP DOA of the nodules whose diameter lies in ``[low_mm, high_mm)``."""

    low_mm: float
    high_mm: float
    n_nodules: int
    n_detected: int
    tpr: float
    tp_dice: float
    tp_dice_sd: float
    tp_doa_mm2: float
    tp_doa_mm2_sd: float

    @property
    def label(self) -> str:
        """Short label for plots and tables, e.g. ``"5-10"`` or ``">=30"``."""
        if math.isinf(self.high_mm):
            return f">={self.low_mm:g}"
        return f"{self.low_mm:g}-{self.high_mm:g}"


def _slice_gt_components(gt_slice: np.ndarray, labelled: bool) -> tuple[np.ndarray, int, np.ndarray]:
    """(labels 1..n, n, original label ids) of the GT nodules on one slice."""
    if labelled:
        relabelled, ids = _relabel(gt_slice)
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
    _check_same_shape(pred_arr, gt_arr)
    if pred_arr.ndim == 2:
        pred_arr, gt_arr = pred_arr[None], gt_arr[None]
    if pred_arr.ndim != 3:
        raise DimensionError(
            f"pred and gt must be (n_slices, H, W) stacks or single (H, W) slices, got shape "
            f"{np.asarray(pred).shape}."
        )
    spacing = _check_spacing(pixel_spacing_mm, 2, "pixel_spacing_mm")
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
    labelled = _is_label_map(gt_arr)

    slice_records: list[SliceRecord] = []
    nodule_records: list[NoduleRecord] = []
    for i in range(n_slices):
        if not (labels_arr is not None and labels_arr[i]) and not gt_arr[i].any() and not pred_mask[i].any():
            slice_records.append(SliceRecord(case_id, i, "no_nodule", 0, 0, 0, False, _NAN))
            continue
        g_labels, n_g, g_ids = _slice_gt_components(gt_arr[i], labelled)
        p_labels, n_p = ndi.label(pred_mask[i], structure=_EIGHT_CONNECTED)
        table = _contingency(g_labels, n_g, p_labels, n_p)
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
            slice_records.append(SliceRecord(case_id, i, kind, 0, n_p, n_fp, n_p > 0, _NAN))
            continue

        n_fp = int(np.count_nonzero(table[1:, 1:].sum(axis=0) == 0))  # components touching no GT pixel
        gt_mask = gt_arr[i] != 0
        pred_slice = pred_mask[i]
        slice_dice = _dice_from_counts(
            np.count_nonzero(gt_mask & pred_slice), np.count_nonzero(gt_mask), np.count_nonzero(pred_slice)
        )
        slice_records.append(SliceRecord(case_id, i, kind, len(counted), n_p, n_fp, n_p > 0, slice_dice))
        for k in counted:
            overlapping = np.nonzero(table[k, 1:])[0] + 1
            inter = float(table[k, overlapping].sum())
            union_area = float(p_areas[overlapping].sum())
            dice = _dice_from_counts(inter, float(g_areas[k]), union_area) if inter > 0 else 0.0
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
    dice, dice_sd = _mean_sd(s.dice for s in nodule_slices)
    tp_dice, tp_dice_sd = _mean_sd(n.dice for n in detected)
    tp_doa, tp_doa_sd = _mean_sd(n.doa_mm2 for n in detected)
    n_fp_negative = sum(s.predicted for s in negative_slices)
    n_fp_nodule = sum(s.n_fp_components > 0 for s in nodule_slices)
    return {
        "tpr": _rate(len(detected), len(evaluation.nodules)),
        "fpr": _rate(n_fp_negative, len(negative_slices)),
        "fpr_nodule": _rate(n_fp_nodule, len(nodule_slices)),
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


def _check_bins(bins_mm: Sequence[float]) -> tuple[float, ...]:
    edges = tuple(float(b) for b in bins_mm)
    if len(edges) < 2 or any(math.isnan(b) for b in edges) or any(b >= c for b, c in zip(edges, edges[1:])):
        raise MetricInputError(
            f"size bins must be at least two strictly increasing edges in mm, got {tuple(bins_mm)}; "
            f"e.g. {DEFAULT_SIZE_BINS_MM}."
        )
    return edges


def size_breakdown(
    evaluation: SliceEvaluation | Iterable[NoduleRecord],
    bins_mm: Sequence[float] = DEFAULT_SIZE_BINS_MM,
) -> tuple[SizeBin, ...]:
    """TPR, TP Dice and TP DOA per nodule-size bin (the NAM paper's Fig. 3).

    A nodule record falls in bin ``[bins_mm[i], bins_mm[i+1])`` by its equivalent diameter
    on the slice; records outside all bins are left out. Every bin is returned, empty ones
    with ``nan`` statistics.
    """
    edges = _check_bins(bins_mm)
    records = evaluation.nodules if isinstance(evaluation, SliceEvaluation) else tuple(evaluation)
    out = []
    for low, high in zip(edges, edges[1:]):
        inside = [r for r in records if low <= r.diameter_mm < high]
        detected = [r for r in inside if r.detected]
        dice, dice_sd = _mean_sd(r.dice for r in detected)
        doa, doa_sd = _mean_sd(r.doa_mm2 for r in detected)
        tpr = _rate(len(detected), len(inside))
        out.append(SizeBin(low, high, len(inside), len(detected), tpr, dice, dice_sd, doa, doa_sd))
    return tuple(out)


# --------------------------------------------------------------------------- volumetric


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
    p, g = _as_mask(pred), _as_mask(gt)
    _check_same_shape(p, g)
    return _dice_from_counts(np.count_nonzero(p & g), np.count_nonzero(p), np.count_nonzero(g))


def _surface_metric(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float], which: str) -> float:
    p, g = _as_mask(pred), _as_mask(gt)
    _check_same_shape(p, g)
    if p.ndim not in (2, 3):
        raise DimensionError(f"surface distances need 2D or 3D masks, got shape {p.shape}.")
    sp = _check_spacing(spacing, p.ndim)
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
    p, g = _as_mask(pred), _as_mask(gt)
    _check_same_shape(p, g)
    sp = _check_spacing(spacing, p.ndim)
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
        out[key], out[f"{key}_sd"] = _mean_sd(finite)
        out[f"{key}_median"] = float(np.median(finite)) if finite else _NAN
    out["n_infinite_distance"] = sum(not math.isfinite(e.msd_mm) for e in evaluations)
    return out


# --------------------------------------------------------------------------- 3D detection


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
    p = _as_mask(pred)
    gt_arr = np.asarray(gt)
    _check_same_shape(p, gt_arr)
    if p.ndim != 3:
        raise DimensionError(f"match_nodules_3d needs 3D (z, y, x) masks, got shape {p.shape}.")
    sp = _check_spacing(spacing, 3)
    if rule not in ("overlap", "centroid"):
        raise MetricInputError(f"rule must be 'overlap' or 'centroid', got {rule!r}.")
    if not (math.isfinite(min_iou) and 0.0 <= min_iou <= 1.0):
        raise MetricInputError(f"min_iou must lie in [0, 1], got {min_iou}.")
    voxel = float(np.prod(sp))

    if _is_label_map(gt_arr):
        g_labels, g_ids = _relabel(gt_arr)
        n_g = len(g_ids) - 1
    else:
        g_labels, n_g = ndi.label(gt_arr != 0, structure=_TWENTY_SIX_CONNECTED)
        g_ids = np.arange(n_g + 1)
    p_labels, n_p = ndi.label(p, structure=_TWENTY_SIX_CONNECTED)
    # Work on foreground voxels only: whole CT volumes are large, nodules small.
    foreground = np.nonzero((g_labels > 0) | p)
    g_fg, p_fg = g_labels[foreground], p_labels[foreground]
    table = _contingency(g_fg, n_g, p_fg, n_p)
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
                    case_id, int(g_ids[k + 1]), None, 0.0, 0.0, math.inf, math.inf, _NAN,
                    diameter, gt_volume, 0.0,
                )
            )
            continue
        j = matches[k]
        msd = hd95 = _NAN
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
                dice_3d=_dice_from_counts(inter[k, j], float(g_sizes[k + 1]), float(p_sizes[j + 1])),
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
        case_id, tuple(records), n_p, false_positives, tp, n_g - tp, len(false_positives), _rate(tp, n_g)
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
        "sensitivity": _rate(tp, tp + fn),
        "fp_per_case": _rate(fp, len(evaluations)),
    }
    for key, attr in (("tp_dice_3d", "dice_3d"), ("tp_msd_mm", "msd_mm"), ("tp_hd95_mm", "hd95_mm")):
        out[key], out[f"{key}_sd"] = _mean_sd(v for n in matched if math.isfinite(v := getattr(n, attr)))
    return out
