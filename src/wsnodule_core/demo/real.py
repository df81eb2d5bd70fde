"""The demo's real part: the shipped LIDC-IDRI-0001 crop segmented with the shipped models, scored
against its reader label.

Rows: the registry's default model (by name, whatever it is), the training-free Hessian blob filter
(the reference), the shipped models of the three weakly supervised methods (:data:`METHOD_MODELS`, those
in the registry), and ``medsam-box`` prompted with the reader label's own bounding box plus
:data:`BOX_MARGIN_PX` voxels in-plane (an annotator's box, not an automatic result). Each is loaded
through :func:`~wsnodule_core.shipped.load_shipped` as ``wsnodule segment`` loads it and scored by
:func:`~wsnodule_core.evaluation.evaluate_cases` (one case, one nodule). Without LiteMedSAM the rows
that need it are skipped with the reason; the demo goes on.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wsnodule_core.data.cases import Case
from wsnodule_core.data.lung import segment_lungs
from wsnodule_core.data.sample import load_lidc_sample, sample_folder
from wsnodule_core.demo.common import BLOB_METHOD, Progress, fmt, slug, stage_callback
from wsnodule_core.errors import FoundationModelError, PromptError
from wsnodule_core.evaluation import evaluate_cases
from wsnodule_core.io import write_mask
from wsnodule_core.segmentation import BlobSegmenter
from wsnodule_core.segmentation.base import Segmenter
from wsnodule_core.shipped import SHIPPED, Registry, load_shipped

BOX_MODEL = "medsam-box"
#: The shipped models of the three methods (trained on real data from weak labels), in the demo when shipped.
METHOD_MODELS = ("nam", "pw4medseg", "flow")
#: In-plane voxels added on each side of the reader label's bounding box for the ``medsam-box`` row.
BOX_MARGIN_PX = 2


@dataclass(frozen=True)
class RealPart:
    """The real part's ``metrics`` (metrics.json's ``"real"`` section), ``table`` and ``report`` (Markdown)."""

    metrics: dict[str, Any]
    table: str
    report: str


def label_box(label: np.ndarray, margin_px: int = BOX_MARGIN_PX) -> tuple[int, int, int, int, int, int]:
    """The bounding box ``(z0, y0, x0, z1, y1, x1)`` (end exclusive) of ``label``'s voxels, grown by
    ``margin_px`` in y and x (not z) and clipped to the array."""
    where = np.nonzero(np.asarray(label))
    if not where[0].size:
        raise PromptError("the reader label is empty: there is no box to prompt medsam-box with.")
    lo = [int(w.min()) for w in where]
    hi = [int(w.max()) + 1 for w in where]
    shape = np.shape(label)
    for axis in (1, 2):
        lo[axis], hi[axis] = max(lo[axis] - margin_px, 0), min(hi[axis] + margin_px, shape[axis])
    return (*lo, *hi)  # type: ignore[return-value]


def mask_file(row: str) -> str:
    """A row's mask file name: ``"blob-refine (shipped default)"`` -> ``"blob-refine-shipped-default.nii.gz"``."""
    return re.sub("-+", "-", slug(row)) + ".nii.gz"


def default_row(registry: Registry = SHIPPED) -> str:
    """The table row of the registry's default model: ``"<name> (shipped default)"``."""
    return f"{registry.default} (shipped default)"


def box_row(margin_px: int = BOX_MARGIN_PX) -> str:
    return f"{BOX_MODEL}, box = reader label's box + {margin_px} px"


def run_real(
    out: Path,
    *,
    device: str = "auto",
    lite_medsam: Any = None,
    cache_dir: str | Path | None = None,
    registry: Registry = SHIPPED,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> RealPart:
    """Segment the shipped sample with the default model, the blob filter, the methods' shipped models and
    ``medsam-box``; score them.

    Writes ``out/real/masks/<row>.nii.gz`` (uint8/int labels on the sample's grid). ``lite_medsam``: a
    loaded LiteMedSAM (default: loaded from the installed wheel; when that fails the rows needing it are
    skipped); ``cache_dir``: the LiteMedSAM embedding cache (default the user cache,
    :func:`~wsnodule_core.foundation.default_cache_dir`), so a second run skips the encoder.
    """
    report_stage = stage_callback(progress, "real CT: reading the LIDC-IDRI-0001 sample, segmenting its lungs")
    if report_stage:
        report_stage(0, 1)
    sample = load_lidc_sample()
    lungs = segment_lungs(sample.ct).lungs
    if report_stage:
        report_stage(1, 1)
    case = Case(case_id=sample.info["patient_id"], image=sample.ct, mask=sample.label, lungs=lungs, nodules=[],
                source="lidc-sample")
    box = label_box(sample.label.array)
    rows_wanted = [(default_row(registry), registry.default), (BLOB_METHOD, None)]
    rows_wanted += [(name, name) for name in METHOD_MODELS if name in registry.names() and name != registry.default]
    if registry.default != BOX_MODEL and BOX_MODEL in registry.names():
        rows_wanted.append((box_row(), BOX_MODEL))
    medsam = _MedSam(lite_medsam, device)
    cache = _cache(cache_dir) if any(n and not registry.get(n).trained for _, n in rows_wanted) else None
    methods: dict[str, dict[str, Any]] = {}
    skipped: dict[str, str] = {}
    masks = out / "real" / "masks"

    def save(row: str, _case: Case, mask) -> None:
        write_mask(mask, sample.ct, masks / mask_file(row), overwrite=overwrite)

    for row, name in rows_wanted:
        try:
            segmenter = _segmenter(row, name, registry, device, medsam, cache, box)
        except FoundationModelError as error:
            skipped[row] = str(error)
            continue
        report_row = stage_callback(progress, f"real CT: segmenting with {row}")
        if report_row:
            report_row(0, 1)  # a row may take minutes (LiteMedSAM's encoder on a CPU): show it started
        start = time.monotonic()
        found, _ = evaluate_cases([case], {row: segmenter}, n_cases=1, on_output=save, progress=report_row)
        seconds = time.monotonic() - start
        for output_row, summary in found.items():
            summary = {k: v for k, v in summary.items() if k != "size_breakdown"}
            methods[output_row] = {**summary, "seconds": seconds,
                                   "mask": f"real/masks/{mask_file(output_row)}"}
    info = sample.info
    metrics = {
        "case": info["patient_id"], "series_uid": info["series_uid"], "shape_zyx": list(sample.ct.shape),
        "spacing_zyx": list(sample.ct.spacing), "nodule_diameter_mm": info["nodule"]["diameter_mm"],
        "label": "the LIDC readers' 50 % consensus (sample.json)", "default_model": registry.default,
        "box_zyx": list(box), "box_margin_px": BOX_MARGIN_PX, "methods": methods, "skipped": skipped,
        "embedding_cache": str(cache.folder) if cache is not None else None,
        "attribution": info["attribution"],
    }
    table = real_table(methods)
    return RealPart(metrics, table, _report(metrics, table))


class _MedSam:
    """LiteMedSAM loaded on first need; the load error is kept and raised again for each later row."""

    def __init__(self, model: Any, device: str) -> None:
        self.model, self.device, self.error = model, device, None

    def get(self) -> Any:
        if self.model is None and self.error is None:
            from wsnodule_core.foundation import load_lite_medsam

            try:
                self.model = load_lite_medsam(self.device)
            except FoundationModelError as error:
                self.error = error
        if self.error is not None:
            raise self.error
        return self.model


def _cache(cache_dir: str | Path | None) -> Any:
    from wsnodule_core.foundation import EmbeddingCache

    return EmbeddingCache(cache_dir)


def _segmenter(row: str, name: str | None, registry: Registry, device: str, medsam: _MedSam, cache: Any,
               box: tuple[int, ...]) -> Segmenter:
    """The row's segmenter through the shipped models' front door (``wsnodule segment``'s loading)."""
    if name is None:
        return BlobSegmenter(name=row)
    model = registry.get(name)
    if model.trained:
        return load_shipped(name, device, registry=registry)
    options = {"boxes_zyx": [box]} if model.method == BOX_MODEL else {}
    return load_shipped(name, device, registry=registry, lite_medsam=medsam.get(), cache=cache, **options)


def real_table(methods: dict[str, dict[str, Any]]) -> str:
    """The real part's Markdown table: Dice 3D, the nodule found or not and its own Dice 3D, FPs, slice
    TPR/FPR, distances, time."""
    header = ("| Method | Dice 3D | Nodule found | TP Dice 3D | FP components | Slice TPR | Slice FPR | MSD (mm) "
              "| HD95 (mm) | Time (s) |")
    lines = [header, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row, m in methods.items():
        det = m["detection_3d"]
        lines.append(f"| {row} | {fmt(m.get('dice_3d'))} | {det['tp']} of {det['tp'] + det['fn']} "
                     f"| {fmt(det.get('tp_dice_3d'))} | {det['fp']} "
                     f"| {fmt(m.get('tpr'))} | {fmt(m.get('fpr'))} | {_mm(m.get('msd_mm'))} "
                     f"| {_mm(m.get('hd95_mm'))} | {m['seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def _mm(value: Any) -> str:
    return "-" if value is None or not np.isfinite(value) else f"{value:.1f}"


def _report(metrics: dict[str, Any], table: str) -> str:
    credit = metrics["attribution"]
    box = metrics["box_zyx"]
    skipped = ""
    by_reason: dict[str, list[str]] = {}
    for row, reason in metrics["skipped"].items():
        by_reason.setdefault(reason, []).append(row)
    for reason, rows in by_reason.items():
        skipped += f"\nSkipped {', '.join(rows)}: {reason} (docs/foundation.md).\n"
    cache = (f" LiteMedSAM's slice embeddings are cached in `{metrics['embedding_cache']}`, so a second run "
             "skips the encoder (delete the folder to free the space)." if metrics["embedding_cache"] else "")
    return f"""## Real CT: the shipped LIDC-IDRI-0001 crop

A real chest CT ({metrics['case']}, {' x '.join(str(n) for n in metrics['shape_zyx'])} voxels at
{' x '.join(f'{s:g}' for s in metrics['spacing_zyx'])} mm, one solid nodule of
{metrics['nodule_diameter_mm']:.1f} mm) segmented with the shipped default model
`{metrics['default_model']}`, the training-free Hessian blob filter (the reference row) and the shipped
models of the weakly supervised methods ({', '.join(f'`{n}`' for n in METHOD_MODELS)}, those shipped), each loaded
as `wsnodule segment` loads it, and scored against {metrics['label']}. The `{BOX_MODEL}` row is **not
automatic**: its box is the reader label's bounding box (z, y, x) {tuple(box[:3])}..{tuple(box[3:])} (end
exclusive, {metrics['box_margin_px']} voxels added in-plane), i.e. what LiteMedSAM draws from an
annotator's box.

{table}{skipped}
Dice 3D: the whole mask against the label; nodule found, TP Dice 3D (the matched component's own Dice),
FP components: per-nodule 3D matching (`match_nodules_3d`); slice TPR/FPR: the NAM paper's
slice rules on the lung-bearing slices (`docs/metrics.md`). Masks on the sample's grid in `real/masks/`;
the CT is `{sample_folder() / 'ct.nii.gz'}`.{cache}

Sample: derived from {credit['data_set']} ({credit['doi']}), licensed {credit['license']}
({credit['license_url']}); credits and changes in `{credit['file']}` beside the sample.
"""
