"""Table 1 on a hybrid set (real CT backgrounds, LIDC shapes): train the narrow NAM, evaluate the test series.

    export WSNODULE_DATA=/work/shared/data
    python benchmarks/nam_hybrid_table.py --out /tmp/nam_hybrid                # build, train, evaluate
    python benchmarks/nam_hybrid_table.py --out /tmp/nam_hybrid --data /tmp/nam_hybrid/data --skip-train
    python benchmarks/nam_hybrid_table.py ... --unet /path/to/unet/best.pt     # add a U-Net row

The set (``OUT/data``, unless ``--data`` names one) holds ``--cases`` hybrid cases of the real
series under ``$WSNODULE_DATA/chest-ct`` resampled to 2.5 x 1.8 x 1.8 mm, 2-5 inserted nodules of
>= 8 mm each: with two series, one series gives the train cases and the other the test cases.
The classifier (the ``cpu_demo`` recipe's crop and settings, with overrides) trains on the train
series; the last ``--val-fraction`` of its cases (by case id) are held out to pick the best
checkpoint and the slice threshold, so validation shares its CT background with training.
The test series is segmented by NAM/R-NAM (coarse and fine) and the Hessian blob filter and
evaluated by :func:`wsnodule_core.evaluation.evaluate_dataset` (``OUT/eval``, ``OUT/results_eval.json``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from wsnodule_core.data.builders import build_dataset
from wsnodule_core.data.dataset import load_dataset
from wsnodule_core.data.slices import slices_from_dataset
from wsnodule_core.evaluation import evaluate_dataset
from wsnodule_core.metrics.classification import roc_auc
from wsnodule_core.nam.model import load_classifier
from wsnodule_core.nam.recipes import get_recipe
from wsnodule_core.nam.train import best_threshold, train_classifier
from wsnodule_core.segmentation import BlobSegmenter, load_segmenter

TARGETS = {"tp_dice": (">=", 0.75), "tpr": (">=", 0.8), "fpr": ("<=", 0.1)}


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--data", help="an existing hybrid data set folder")
    p.add_argument("--ct", nargs="*", help="real CT series (default: the folders of $WSNODULE_DATA/chest-ct)")
    p.add_argument("--cases", type=int, default=48)
    p.add_argument("--seed", type=int, default=3, help="3: the cptac series trains, tcga tests")
    p.add_argument("--spacing", type=float, nargs=3, default=(2.5, 1.8, 1.8))
    p.add_argument("--val-fraction", type=float, default=0.2, help="train-series cases held out (validation)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--epochs", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--lr-decay", type=float)
    p.add_argument("--optimizer", choices=("sgd", "adam", "adamw"))
    p.add_argument("--bn-recal", type=int, help="BatchNorm recalibration batches after each epoch")
    p.add_argument("--select-metric", choices=("balanced_accuracy", "tuned_balanced_accuracy", "auc"))
    p.add_argument("--image-size", type=int)
    p.add_argument("--pixel-spacing", type=float)
    p.add_argument("--min-area", type=float)
    p.add_argument("--val-threshold", action="store_true", help="segment with best.pt's validation threshold")
    p.add_argument("--skip-train", action="store_true", help="reuse OUT/train/best.pt")
    p.add_argument("--no-eval", action="store_true", help="only the classifier's test-slice metrics")
    p.add_argument("--localisation", action="store_true",
                   help="also split NAM's misses into 'slice not called nodule' and 'mask off the nodule'")
    p.add_argument("--unet", help="a U-Net checkpoint (wsnodule train --method unet) to add as a row")
    p.add_argument("--methods", nargs="+", choices=("nam", "blob", "unet"), default=("nam", "blob", "unet"),
                   help="rows to evaluate (unet only with --unet)")
    p.add_argument("--eval-dir", default="eval", help="evaluation folder inside OUT")
    return p.parse_args()


@torch.no_grad()
def _slice_diagnostics(model, dataset, recipe, threshold: float) -> dict:
    """The classifier alone on the test series' slices (positives: >= the recipe's nodule area;
    negatives also from cases marked negatives_ok=False, whose unlabelled lesion slices count as
    negatives): ROC AUC, sensitivity / specificity at the segmentation threshold and at 0.5."""
    config = replace(recipe.slice_config(), use_unsafe_negatives=True)
    test = slices_from_dataset(dataset, "test", config)
    batches = (torch.from_numpy(test.images[i:i + 64]).float()[:, None] for i in range(0, len(test), 64))
    probs = np.concatenate([torch.softmax(model(x), 1)[:, 1].numpy() for x in batches])
    y = test.labels > 0
    out = {"n_positive": int(y.sum()), "n_negative": int((~y).sum()), "auc": roc_auc(probs, y),
           "oracle_threshold": best_threshold(probs, y)}
    for name, t in (("threshold", threshold), ("half", 0.5)):
        out[name] = {"threshold": t, "sensitivity": float((probs[y] >= t).mean()),
                     "specificity": float((probs[~y] < t).mean())}
    return out


def _localisation(model, dataset, segment, min_area_mm2: float) -> dict:
    """Per nodule slice of the test series (GT area >= ``min_area_mm2``): called a nodule slice by
    the classifier, and whether the fine mask then overlaps the nodule; per nodule-free lung slice:
    called a nodule slice, and given a (false) mask."""
    from wsnodule_core.segmentation import NamSegmenter

    counts = dict.fromkeys(("nodule_slices", "called", "hit", "free_slices", "free_called", "free_masked"), 0)
    for case in dataset.cases("test"):
        result = NamSegmenter(model, segment).segment(case.image, lungs=case.lungs).details
        gt = np.asarray(case.mask.array) > 0
        fine = np.asarray(result.fine.array) > 0
        area = gt.sum(axis=(1, 2)) * case.image.spacing[1] * case.image.spacing[2]
        lung = np.asarray(case.lungs, bool).any(axis=(1, 2))
        nodule, free = area >= min_area_mm2, lung & ~gt.any(axis=(1, 2))
        called = np.asarray(result.is_nodule, bool)
        counts["nodule_slices"] += int(nodule.sum())
        counts["called"] += int((nodule & called).sum())
        counts["hit"] += int((nodule & called & (fine & gt).any(axis=(1, 2))).sum())
        counts["free_slices"] += int(free.sum())
        counts["free_called"] += int((free & called).sum())
        counts["free_masked"] += int((free & fine.any(axis=(1, 2))).sum())
    return counts


def _carve_val(train_slices, fraction: float):
    cases = sorted(set(train_slices.case_ids.tolist()))
    n_val = max(1, math.ceil(fraction * len(cases))) if fraction > 0 else 0
    val_cases = set(cases[len(cases) - n_val:])
    is_val = np.array([c in val_cases for c in train_slices.case_ids])
    train = train_slices.subset(np.flatnonzero(~is_val))
    return train, train_slices.subset(np.flatnonzero(is_val)), sorted(val_cases)


def main() -> None:
    args = _parse()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    recipe = get_recipe("cpu_demo")
    changes = {k: v for k, v in {"epochs": args.epochs, "lr": args.lr, "lr_decay": args.lr_decay,
                                 "optimizer": args.optimizer, "select_metric": args.select_metric,
                                 "bn_recalibration_batches": args.bn_recal,
                                 "image_size": args.image_size, "pixel_spacing_mm": args.pixel_spacing,
                                 "min_nodule_area_mm2": args.min_area}.items() if v is not None}
    recipe = recipe.with_train(**changes)
    print(json.dumps({"train": recipe.train.to_dict(), "args": vars(args)}, default=str), flush=True)

    t0 = time.perf_counter()
    data_dir = Path(args.data) if args.data else out / "data"
    if not args.data:
        cts = args.ct or sorted(str(p) for p in (Path(os.environ["WSNODULE_DATA"]) / "chest-ct").iterdir()
                                if p.is_dir())
        info = build_dataset(data_dir, source="hybrid", ct_paths=cts, n_cases=args.cases, seed=args.seed,
                             spacing=tuple(args.spacing), nodules_per_case=(2, 5), n_shapes=120,
                             min_diameter_mm=8.0)
        print(f"built {info}", flush=True)
    t_build = time.perf_counter() - t0
    dataset = load_dataset(data_dir)
    subjects = {s: sorted({e["subject"] for e in dataset.entries(s)}) for s in ("train", "val", "test")}
    print(f"series per split: {subjects}", flush=True)

    t0 = time.perf_counter()
    history, val_cases, described = [], [], {}
    if not args.skip_train:
        slices = slices_from_dataset(dataset, "train", recipe.slice_config())
        train, val, val_cases = _carve_val(slices, args.val_fraction)
        described = {"train": train.describe(), "val": val.describe(), "val_cases": val_cases}
        print(f"train slices {train.n_positive} pos / {train.n_negative} neg; val ({val_cases}) "
              f"{val.n_positive} pos / {val.n_negative} neg", flush=True)
        result = train_classifier((train, val if len(val) else None), out / "train", recipe.train,
                                  overwrite=True,
                                  log=lambda s: print(f"[{time.perf_counter() - t0:.0f} s] {s}", flush=True))
        history = result.history
        print(f"best epoch {result.best_epoch}, best {recipe.train.select_metric} {result.best_metric}",
              flush=True)
    t_train = time.perf_counter() - t0
    best = out / "train" / "best.pt"
    model, _ = load_classifier(best, device="cpu")
    segment = recipe.segment.with_checkpoint_threshold(best) if args.val_threshold else recipe.segment
    print(f"segmentation threshold {segment.probability_threshold:.3f}", flush=True)

    diagnostics = _slice_diagnostics(model, dataset, recipe, segment.probability_threshold)
    print(f"classifier on the test series' slices: {json.dumps(diagnostics)}", flush=True)
    if args.localisation:
        counts = _localisation(model, dataset, segment, recipe.train.min_nodule_area_mm2)
        print(f"localisation on the test series: {json.dumps(counts)}; called / nodule slices "
              f"{counts['called'] / max(counts['nodule_slices'], 1):.2f}, mask on the nodule / called "
              f"{counts['hit'] / max(counts['called'], 1):.2f}, nodule-free slices called "
              f"{counts['free_called'] / max(counts['free_slices'], 1):.2f}", flush=True)
    if args.no_eval:
        return
    threshold = {} if args.val_threshold else {"probability_threshold": recipe.segment.probability_threshold}
    nam = load_segmenter(best, "cpu", name="NAM/R-NAM 1-GAP", config=recipe.segment, **threshold)
    methods = {"NAM/R-NAM 1-GAP": nam, "Hessian blob filter": BlobSegmenter(name="Hessian blob filter")}
    methods = {k: v for k, v in methods.items() if ("nam" if k.startswith("NAM") else "blob") in args.methods}
    if args.unet and "unet" in args.methods:
        methods["U-net"] = load_segmenter(args.unet, "cpu", name="U-net")
    t0 = time.perf_counter()
    report = evaluate_dataset(data_dir, methods, split="test", out_dir=out / args.eval_dir, overwrite=True)
    t_eval = time.perf_counter() - t0
    print(f"\ntimings: build {t_build:.0f} s, train {t_train:.0f} s, evaluation {t_eval:.0f} s "
          f"({len(dataset.entries('test'))} test cases)")
    print(report.table)
    for row, values in report.rows.items():
        d = values["detection_3d"]
        misses = [f"{c} {values[c]:.2f} (target {op} {t})" for c, (op, t) in TARGETS.items()
                  if not (values[c] >= t if op == ">=" else values[c] <= t)]
        print(f"{row}: 3D {d['tp']} of {d['tp'] + d['fn']} nodules, {d['fp']} FP components; "
              f"misses: {', '.join(misses) or 'none'}")
    (out / f"results_{args.eval_dir}.json").write_text(json.dumps(
        {"train_config": recipe.train.to_dict(), "segment_threshold": segment.probability_threshold,
         "slices": described, "test_slice_diagnostics": diagnostics, "history": history, "rows": report.rows,
         "timings": {"build": t_build, "train": t_train, "evaluate": t_eval}}, default=str, indent=1))


if __name__ == "__main__":
    main()
