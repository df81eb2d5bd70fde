"""NAM / R-NAM on the pretrained LiteMedSAM encoder, on the whole real LIDC-IDRI-0001/0002 scans (issue 16).

Each variant is the real benchmark's part (b) (``evaluation.evaluate_cases`` on every slice of both scans:
slice TPR / FPR / TP Dice, 3D Dice, nodules found): the 1-GAP classifier picks the nodule slices at its
validation threshold (from its checkpoint), the 2-/3-GAP classifier narrows the scope (the paper's
multi-GAP NAM), ``coarse`` = every ICM candidate in the scope, ``fine`` = one candidate per scope. The
encoder's features of every slice are kept in the embedding cache (``$WSNODULE_CACHE/lite_medsam``), so
a whole scan is encoded once for all variants (``--pre-encode`` does that first, with an untrained
3-GAP head, so that every later variant only reads the cache).

    WSNODULE_DATA=/work/shared/data WSNODULE_CACHE=/tmp/wsn-cache OMP_NUM_THREADS=1 \\
        python benchmarks/nam_real.py --runs /tmp/nam-runs --lidc /tmp/real-bench/full/lidc --out OUT \\
            [--pre-encode] [--variants 1-GAP 2-GAP 3-GAP "1-GAP two-nodule"] [--rnam]

``--runs DIR`` holds ``nam-1gap/best.pt``, ``nam-2gap/best.pt``, ``nam-3gap/best.pt``; ``--lidc`` a
``wsnodule data lidc --with-images`` set of the two scans (built there when missing). ``--rnam``: the
fine mask by the paper's R-NAM screening (one encoder pass per candidate) instead of the candidate with
the highest mean NAM. Writes OUT/whole.md and OUT/metrics.json.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _held_out_scans import held_out_scans

VARIANTS = ("1-GAP", "2-GAP", "3-GAP", "1-GAP two-nodule", "3-GAP two-nodule")
SETTINGS = {"lung_slices_only": True}


def with_cache(segmenter):
    """``segmenter`` whose LiteMedSAM classifiers keep their features in the embedding cache."""
    from wsnodule_core.foundation import EmbeddingCache

    for model in (segmenter.model, getattr(segmenter, "multi_gap_model", None)):
        if model is not None and hasattr(model, "embedding_cache"):
            model.embedding_cache = EmbeddingCache()
    return segmenter


def variant_segmenters(runs: Path, variants: list[str], rnam: bool) -> dict[str, object]:
    from wsnodule_core.segmentation import load_segmenter

    one = runs / "nam-1gap" / "best.pt"
    out = {}
    for variant in variants:
        multi = {"2-GAP": runs / "nam-2gap" / "best.pt", "3-GAP": runs / "nam-3gap" / "best.pt"}.get(variant[:5])
        top_k = 2 if "two-nodule" in variant else 1
        for output in ("coarse", "fine"):
            label = f"NAM {variant} {'Fine (R-NAM)' if output == 'fine' and rnam else output.capitalize()}"
            out[label] = with_cache(load_segmenter(one, "cpu", name=label, multi_gap_checkpoint=multi, output=output,
                                                   top_k=top_k, rnam=rnam, **SETTINGS))
    return out


def pre_encode(dataset, input_size: int, spacing: float) -> float:
    """Encode every lung slice of every case (3-GAP features) into the cache with an untrained head (threshold 1: no nodule slice)."""
    from wsnodule_core.nam.heads import MultiGapConfig
    from wsnodule_core.nam.lite_medsam_model import LiteMedSamClassifier
    from wsnodule_core.nam.segment_config import NamConfig
    from wsnodule_core.segmentation.nam import NamSegmenter

    model = LiteMedSamClassifier(MultiGapConfig(backbone="lite_medsam", n_gap=3)).eval()
    config = NamConfig(input_size=input_size, crop_pixel_spacing_mm=spacing, probability_threshold=1.0,
                       **SETTINGS)
    segmenter = with_cache(NamSegmenter(model, config, name="pre-encode"))
    started = time.monotonic()
    for case in dataset.cases(None):
        segmenter.segment(case.image)
        print(f"pre-encoded {case.case_id[-12:]} ({case.image.shape[0]} slices) at "
              f"{time.monotonic() - started:.0f} s", flush=True)
    return time.monotonic() - started


def diagnose(dataset, runs: Path) -> str:
    """Why the NAM finds or misses: per scan the slice AUC of the 1-GAP P(nodule) over the lung slices, the
    P of nodule and nodule-free lung slices, the rank of the best nodule slice, and on the nodule slices
    whether the NAM's peak lies in the nodule and how far from it (mm)."""
    from scipy import ndimage

    from wsnodule_core.metrics.classification import roc_auc
    from wsnodule_core.segmentation import load_segmenter

    segmenter = with_cache(load_segmenter(runs / "nam-1gap" / "best.pt", "cpu", output="coarse", rnam=False,
                                          **SETTINGS))
    lines = ["| scan | lung slices (nodule) | slice AUC | median P nodule / free | best nodule slice's rank | "
             "threshold | NAM peak in the nodule | peak to nodule (mm, median) |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for case in dataset.cases(None):
        result = segmenter.segment(case.image)
        details, lungs = result.details, np.asarray(result.lungs.array) > 0
        gt = np.asarray(case.mask.array) > 0
        lung_z = np.flatnonzero(lungs.any(axis=(1, 2)))
        labels = gt[lung_z].any(axis=(1, 2))
        p = details.probability[lung_z]
        rank = int((p > p[labels].max()).sum()) + 1 if labels.any() else -1
        nam = np.asarray(details.nam.array)
        inside, dist = [], []
        for z in np.flatnonzero(gt.any(axis=(1, 2))):
            peak = np.unravel_index(np.argmax(nam[z]), nam[z].shape)
            inside.append(bool(gt[z][peak]))
            edt = ndimage.distance_transform_edt(~gt[z], sampling=case.image.spacing[1:])
            dist.append(float(edt[peak]))
        lines.append(f"| {case.nodules[0].patient_id if case.nodules else case.case_id[-8:]} | {len(lung_z)} ({int(labels.sum())}) | "
                     f"{roc_auc(p, labels):.2f} | {np.median(p[labels]):.2f} / {np.median(p[~labels]):.2f} | "
                     f"{rank} of {len(lung_z)} | {segmenter.config.probability_threshold:.2f} | "
                     f"{sum(inside)} / {len(inside)} | {np.median(dist):.1f} |")
    return "\n".join(lines)


def table(rows: dict) -> str:
    from wsnodule_core.evaluation import TABLE_COLUMNS
    from wsnodule_core.reports import markdown_table

    lines = [markdown_table(rows, TABLE_COLUMNS), "", "| Method | Nodules found | FP components per scan | "
             "TP Dice 3D | s |", "|---|---:|---:|---:|---:|"]
    for row, summary in rows.items():
        det = summary["detection_3d"]
        tp = det.get("tp_dice_3d")
        tp_text = "-" if tp is None or not math.isfinite(tp) else f"{tp:.2f}"
        lines.append(f"| {row} | {det['tp']} / {det['tp'] + det['fn']} | {det['fp_per_case']:.1f} | {tp_text} | "
                     f"{summary.get('seconds', 0):.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, required=True)
    parser.add_argument("--lidc", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS[:3]), choices=VARIANTS)
    parser.add_argument("--rnam", action="store_true", help="fine = the paper's R-NAM screening")
    parser.add_argument("--pre-encode", action="store_true", help="only fill the cache (untrained 3-GAP head)")
    parser.add_argument("--diagnose", action="store_true", help="slice AUC and NAM peaks of the 1-GAP model")
    parser.add_argument("--input-size", type=int, default=256, help="--pre-encode: crop side [256]")
    parser.add_argument("--pixel-spacing", type=float, default=1.25, help="--pre-encode: crop spacing [1.25]")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    dataset = held_out_scans(args.lidc)
    if args.pre_encode:
        print(f"pre-encoding took {pre_encode(dataset, args.input_size, args.pixel_spacing):.0f} s")
        return 0
    from wsnodule_core.evaluation import evaluate_cases
    from wsnodule_core.reports import to_json

    args.out.mkdir(parents=True, exist_ok=True)
    if args.diagnose:
        text = diagnose(dataset, args.runs)
        (args.out / "diagnose.md").write_text(text + "\n")
        print(text)
        return 0
    rows = {}
    for label, segmenter in variant_segmenters(args.runs, args.variants, args.rnam).items():
        started = time.monotonic()
        result, _ = evaluate_cases(dataset.cases(None), {label: segmenter})
        result[label]["seconds"] = time.monotonic() - started
        rows.update(result)
        print(f"{label}: {time.monotonic() - started:.0f} s", flush=True)
    to_json(rows, args.out / "metrics.json", overwrite=True)
    text = table(rows)
    (args.out / "whole.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
