"""Slice-level results by nodule size (the NAM paper's Fig. 3): TPR, TP Dice and TP DOA per diameter bin."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

from wsnodule_core.errors import MetricInputError
from wsnodule_core.metrics.common import mean_sd, rate
from wsnodule_core.metrics.slices import NoduleRecord, SliceEvaluation

#: Default nodule-size bins (equivalent diameter, mm): [3, 5), [5, 10), [10, 20), [20, 30), [30, inf).
DEFAULT_SIZE_BINS_MM: tuple[float, ...] = (3.0, 5.0, 10.0, 20.0, 30.0, math.inf)


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
        dice, dice_sd = mean_sd(r.dice for r in detected)
        doa, doa_sd = mean_sd(r.doa_mm2 for r in detected)
        tpr = rate(len(detected), len(inside))
        out.append(SizeBin(low, high, len(inside), len(detected), tpr, dice, dice_sd, doa, doa_sd))
    return tuple(out)
