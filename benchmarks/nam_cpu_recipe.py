"""Train a NAM recipe on a phantom set, segment the held-out test split, print timings and Table 1.

    python benchmarks/nam_cpu_recipe.py --out /tmp/nam_run                 # recipe cpu_demo
    python benchmarks/nam_cpu_recipe.py --out /tmp/nam_run --data /tmp/nam_run/data --epochs 20

The data set is built in ``OUT/data`` unless ``--data`` names one already built (with the same
recipe). Training writes ``OUT/train``; the NAM/R-NAM segmentation of each test case is compared
with the Hessian blob baseline on the same cases, evaluated as in ``wsnodule_core.demo``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from wsnodule_core.baselines.blob_filter import BlobFilterConfig, segment_blobs
from wsnodule_core.data.builders import build_dataset
from wsnodule_core.data.dataset import load_dataset
from wsnodule_core.metrics import (
    evaluate_slices,
    evaluate_volume,
    match_nodules_3d,
    pool_slice_evaluations,
    summarize_detections,
    summarize_slices,
    summarize_volumes,
)
from wsnodule_core.segmentation import NamSegmenter
from wsnodule_core.nam.recipes import get_recipe, recipe_names
from wsnodule_core.nam.train import train_classifier
from wsnodule_core.reports import markdown_table

COLUMNS = ("tpr", "fpr", "fpr_nodule", "dice", "tp_dice", "tp_doa_mm2", "dice_3d", "msd_mm", "hd95_mm")


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default="cpu_demo", choices=recipe_names())
    p.add_argument("--out", required=True, help="output folder (train/ and data/ go here)")
    p.add_argument("--data", help="an existing data set folder to reuse")
    p.add_argument("--threads", type=int, help="torch threads (default: the recipe's)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr-decay", type=float)
    p.add_argument("--min-area", type=float, help="min nodule area (mm2) of a positive slice")
    p.add_argument("--max-steps-per-epoch", type=int)
    p.add_argument("--image-size", type=int, help="crop side in pixels")
    p.add_argument("--pixel-spacing", type=float, help="crop pixel spacing in mm")
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--optimizer", choices=("sgd", "adam", "adamw"))
    p.add_argument("--bn-recal", type=int, help="BatchNorm recalibration batches after each epoch")
    p.add_argument("--select-metric", choices=("balanced_accuracy", "tuned_balanced_accuracy", "auc"),
                   help="validation metric that picks best.pt")
    p.add_argument("--threshold", type=float, help="slice probability threshold for segmentation")
    p.add_argument("--val-threshold", action="store_true",
                   help="segment with the threshold best.pt chose on the validation slices")
    p.add_argument("--skip-train", action="store_true", help="reuse OUT/train/best.pt")
    return p.parse_args()


def _evaluate(pred, case) -> tuple:
    gt, spacing = case.mask.array, case.image.spacing
    return (evaluate_slices(pred, gt, spacing[1:], case_id=case.case_id),
            evaluate_volume(pred, gt > 0, spacing, case_id=case.case_id),
            match_nodules_3d(pred, gt, spacing, case_id=case.case_id))


def _summary(evals: list[tuple]) -> dict:
    slices, volumes, detections = zip(*evals)
    pooled = pool_slice_evaluations(slices)
    return {**summarize_slices(pooled), **summarize_volumes(volumes),
            "detection_3d": summarize_detections(detections)}


def main() -> None:
    args = _parse()
    recipe = get_recipe(args.recipe)
    changes = {k: v for k, v in {"epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size,
                                 "lr_decay": args.lr_decay, "min_nodule_area_mm2": args.min_area,
                                 "max_steps_per_epoch": args.max_steps_per_epoch,
                                 "image_size": args.image_size, "pixel_spacing_mm": args.pixel_spacing,
                                 "optimizer": args.optimizer, "select_metric": args.select_metric,
                                 "bn_recalibration_batches": args.bn_recal,
                                 }.items() if v is not None}
    if args.no_augment:
        changes["augment"] = False
    recipe = recipe.with_train(**changes)
    if args.threshold is not None:
        from dataclasses import replace
        recipe = replace(recipe, segment=replace(recipe.segment, probability_threshold=args.threshold))
    threads = args.threads or recipe.torch_threads
    if threads:
        torch.set_num_threads(threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"recipe {recipe.name}; torch threads {torch.get_num_threads()}", flush=True)
    print(json.dumps(recipe.to_dict(), default=str), flush=True)

    t0 = time.perf_counter()
    data_dir = Path(args.data) if args.data else out / "data"
    if not args.data:
        build_dataset(data_dir, **recipe.data.build_kwargs())
    t_build = time.perf_counter() - t0
    dataset = load_dataset(data_dir)

    t0 = time.perf_counter()
    if args.skip_train:
        from wsnodule_core.nam.model import load_classifier
        model, _ = load_classifier(out / "train" / "best.pt", device="cpu")
        history = []
    else:
        result = train_classifier(dataset, out / "train", recipe.train, overwrite=True,
                                  log=lambda s: print(f"[{time.perf_counter() - t0:.0f} s] {s}", flush=True))
        history = result.history
        from wsnodule_core.nam.model import load_classifier
        model, _ = load_classifier(result.best_path or result.last_path, device="cpu")
        print(f"best epoch {result.best_epoch}, best {recipe.train.select_metric} {result.best_metric}",
              flush=True)
    t_train = time.perf_counter() - t0
    if args.val_threshold:
        from dataclasses import replace
        recipe = replace(recipe, segment=recipe.segment.with_checkpoint_threshold(out / "train" / "best.pt"))
        print(f"segmentation threshold from validation: {recipe.segment.probability_threshold:.3f}",
              flush=True)

    tests = [e for e in dataset.entries() if e["split"] == "test"]
    nam_evals, blob_evals, t_seg, t_blob, n_nodule_slices = [], [], 0.0, 0.0, 0
    for entry in tests:
        case = dataset.load_case(entry)
        t0 = time.perf_counter()
        seg = NamSegmenter(model, recipe.segment).segment(case.image, lungs=case.lungs).details
        t_seg += time.perf_counter() - t0
        n_nodule_slices += int(seg.is_nodule.sum())
        nam_evals.append(_evaluate(seg.fine.array > 0, case))
        t0 = time.perf_counter()
        blobs = segment_blobs(case.image, case.lungs.array if hasattr(case.lungs, "array") else case.lungs,
                              BlobFilterConfig())
        t_blob += time.perf_counter() - t0
        blob_evals.append(_evaluate(blobs.mask > 0, case))
    summaries = {"NAM/R-NAM (1-GAP, fine)": _summary(nam_evals), "Hessian blob filter": _summary(blob_evals)}
    print(f"\ntimings: build {t_build:.0f} s, train {t_train:.0f} s, NAM segmentation {t_seg:.0f} s "
          f"({len(tests)} test cases, {n_nodule_slices} slices classified nodule), blob {t_blob:.0f} s")
    print(markdown_table({k: {c: v[c] for c in COLUMNS} for k, v in summaries.items()}, COLUMNS))
    for name, s in summaries.items():
        d = s["detection_3d"]
        print(f"{name}: 3D {d['tp']} of {d['tp'] + d['fn']} nodules found, {d['fp']} FP components")
    (out / "results.json").write_text(json.dumps({"recipe": recipe.to_dict(), "history": history,
                                                  "summaries": summaries,
                                                  "timings": {"build": t_build, "train": t_train,
                                                              "segment": t_seg, "blob": t_blob}},
                                                 default=str, indent=1))


if __name__ == "__main__":
    main()
