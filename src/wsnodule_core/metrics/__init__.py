"""Every evaluation metric of wsnodule, one module per family.

All documented with their matching rules in ``docs/metrics.md``:

* **Slice level** (the NAM paper's Table 1), :mod:`~wsnodule_core.metrics.slices`:
  :func:`evaluate_slices`, :func:`pool_slice_evaluations`, :func:`summarize_slices`.
* **By nodule size** (the NAM paper's Fig. 3), :mod:`~wsnodule_core.metrics.sizes`:
  :func:`size_breakdown`.
* **Volumetric** with physical spacing, :mod:`~wsnodule_core.metrics.volume`: :func:`dice_3d`,
  :func:`mean_surface_distance_mm`, :func:`hausdorff95_mm`, :func:`evaluate_volume`,
  :func:`summarize_volumes`.
* **3D per-nodule detection**, :mod:`~wsnodule_core.metrics.detection`:
  :func:`match_nodules_3d`, :func:`summarize_detections`.

Conventions: masks are numpy arrays indexed ``(z, y, x)`` (slices ``(y, x)``), spacings are
millimetres in the same order. A value that is undefined (a rate with an empty denominator,
a mean over nothing) is ``nan``; a distance to an empty mask is ``inf``. The JSON writer of
:mod:`wsnodule_core.reports` writes both as ``null``. Import the names from this package:
``from wsnodule_core.metrics import evaluate_slices``.
"""

from __future__ import annotations

from wsnodule_core.metrics.common import equivalent_diameter_2d, equivalent_diameter_3d
from wsnodule_core.metrics.detection import (
    DetectionEvaluation,
    NoduleMatch3D,
    match_nodules_3d,
    summarize_detections,
)
from wsnodule_core.metrics.sizes import DEFAULT_SIZE_BINS_MM, SizeBin, size_breakdown
from wsnodule_core.metrics.slices import (
    NoduleRecord,
    SliceEvaluation,
    SliceRecord,
    evaluate_slices,
    pool_slice_evaluations,
    summarize_slices,
)
from wsnodule_core.metrics.volume import (
    VolumeEvaluation,
    dice_3d,
    evaluate_volume,
    hausdorff95_mm,
    mean_surface_distance_mm,
    summarize_volumes,
)

__all__ = [
    "DEFAULT_SIZE_BINS_MM",
    "DetectionEvaluation",
    "NoduleMatch3D",
    "NoduleRecord",
    "SizeBin",
    "SliceEvaluation",
    "SliceRecord",
    "VolumeEvaluation",
    "dice_3d",
    "equivalent_diameter_2d",
    "equivalent_diameter_3d",
    "evaluate_slices",
    "evaluate_volume",
    "hausdorff95_mm",
    "match_nodules_3d",
    "mean_surface_distance_mm",
    "pool_slice_evaluations",
    "size_breakdown",
    "summarize_detections",
    "summarize_slices",
    "summarize_volumes",
]
