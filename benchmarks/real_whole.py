"""A shipped model (or a checkpoint) on whole real CT: the shipped LIDC-IDRI-0001 sample and the whole
LIDC-IDRI-0001/0002 scans (test patients of every real-data split), scored against the readers' labels.

    WSNODULE_DATA=/work/shared/data python benchmarks/real_whole.py --out OUT --model pw4medseg
    WSNODULE_DATA=/work/shared/data python benchmarks/real_whole.py --out OUT --checkpoint RUN/best.pt \
        --option threshold=0.7 --option min_diameter_mm=3 --option lung_margin_mm=0 [--sample-only] [--lidc DIR] \
        [--classifier PRED.pt --classifier-threshold 0.59]

Prints, for the sample: 3D Dice, predicted components, whether the nodule was found and the Dice of the
components on it; for the whole scans: the NAM paper's Table 1 (slice TPR / FPR / TP Dice), nodules
found, false components per scan, 3D Dice (``evaluation.evaluate_cases``). Writes OUT/metrics.json.
Nothing is tuned here: options come from the model's entry (chosen on validation patients) or the
command line.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _held_out_scans import held_out_scans


def segmenter(args: argparse.Namespace):
    options = {}
    for text in args.option:
        key, _, value = text.partition("=")
        try:
            options[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            options[key] = value
    if args.model:
        from wsnodule_core.shipped import load_shipped

        return load_shipped(args.model, args.device, checkpoint=args.checkpoint, **options)
    from wsnodule_core.segmentation import load_segmenter

    return load_segmenter(args.checkpoint, args.device, **options)


def on_sample(model) -> dict:
    from scipy import ndimage

    from wsnodule_core.data.sample import load_lidc_sample
    from wsnodule_core.metrics import dice_3d

    sample = load_lidc_sample()
    started = time.monotonic()
    mask = np.asarray(model.segment(sample.ct).mask.array) > 0
    seconds = time.monotonic() - started
    truth = np.asarray(sample.label.array) > 0
    labels, n = ndimage.label(mask, np.ones((3, 3, 3)))
    on_nodule = np.isin(labels, np.unique(labels[truth & (labels > 0)]))
    return {"dice_3d": dice_3d(mask, truth), "components": int(n), "found": bool(on_nodule.any()),
            "dice_of_components_on_nodule": dice_3d(on_nodule, truth) if on_nodule.any() else 0.0,
            "seconds": seconds}


def on_scans(model, data: Path, name: str) -> dict:
    from wsnodule_core.evaluation import evaluate_cases, row_name

    started = time.monotonic()
    result, _ = evaluate_cases(held_out_scans(data).cases(None), {name: model})
    # a model with several outputs (NAM: fine and coarse) has a row per output: report its mask's
    summary = result.get(name) or result[row_name(name, getattr(model, "output", "mask"))]
    summary["seconds"] = time.monotonic() - started
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model", help="a shipped model's name (`wsnodule models`)")
    parser.add_argument("--checkpoint", help="a checkpoint (with --model: replaces the entry's file)")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="a segmenter option, e.g. threshold=0.7 (repeatable)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--lidc", type=Path, help="the LIDC-IDRI-0001/0002 data set folder to use or build "
                        "(`wsnodule data lidc`; default OUT/lidc)")
    parser.add_argument("--sample-only", action="store_true", help="skip the whole scans")
    parser.add_argument("--classifier", type=Path, help="keep only the components this flow patch predictor "
                        "calls nodule (segmentation.ClassifiedSegmenter, every component scored)")
    parser.add_argument("--classifier-threshold", type=float, default=0.59)
    args = parser.parse_args(argv)
    if not (args.model or args.checkpoint):
        parser.error("give --model NAME or --checkpoint CKPT")
    if not args.sample_only and not os.environ.get("WSNODULE_DATA"):
        parser.error("the whole scans need WSNODULE_DATA (or give --sample-only)")
    args.out.mkdir(parents=True, exist_ok=True)
    model = segmenter(args)
    name = args.model or Path(args.checkpoint).parent.name
    if args.classifier:
        from wsnodule_core.flow.predictors import load_predictor, trained_patch_config
        from wsnodule_core.segmentation.classified import ClassifiedSegmenter

        predictor, checkpoint = load_predictor(args.classifier)
        model = ClassifiedSegmenter(model, predictor, trained_patch_config(checkpoint),
                                    threshold=args.classifier_threshold, max_candidates=None)
        name += " + classifier"
    results = {"sample": on_sample(model)}
    s = results["sample"]
    print(f"sample LIDC-IDRI-0001 crop: Dice 3D {s['dice_3d']:.3f}, {s['components']} components, nodule "
          f"{'found' if s['found'] else 'missed'} (Dice of its components {s['dice_of_components_on_nodule']:.3f}), "
          f"{s['seconds']:.1f} s", flush=True)
    if not args.sample_only:
        summary = on_scans(model, args.lidc or args.out / "lidc", name)
        results["scans"] = summary
        det, table = summary["detection_3d"], summary.get("table1", summary)
        print(f"whole LIDC-IDRI-0001/0002: nodules found {det['tp']} / {det['tp'] + det['fn']}, FP components "
              f"per scan {det['fp_per_case']:.1f}, TP Dice 3D {det.get('tp_dice_3d')}, {summary['seconds']:.0f} s")
        print(json.dumps({k: v for k, v in table.items() if isinstance(v, (int, float))}, indent=1))
    (args.out / "metrics.json").write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
