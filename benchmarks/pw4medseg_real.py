"""PW4MedSeg on the real VOI set (issue 16): Dice and false positives per probability threshold and
smallest kept component, chosen on the validation patients only, then the test patients there.

    WSNODULE_DATA=/work/shared/data python benchmarks/pw4medseg_real.py VOI_SET RUN [RUN ...] \
        [--max-fp 0.5] [--passes 6] [--test]

Each RUN is a PW4MedSeg run folder or checkpoint trained on VOI_SET's train split (`wsnodule train
--method pw4medseg VOI_SET RUN ...`). Per run, threshold and smallest kept component (equivalent
diameter, `PwSegmenter(min_diameter_mm=...)`) it prints, over the split's nodule crops,
the mean 3D Dice (± SD) and the nodules found, and over its nodule-free crops the false components
per crop. Rule where the papers are silent: the setting with the best validation Dice among those
that leave at most ``--max-fp`` false components per nodule-free crop (the issue compares methods "at
equal or lower FPR"; the default 0.5 is below the blob filter's validation rate). ``--test`` then
evaluates the test patients at that threshold and at the one with the best validation Dice whatever
its false positives (nothing is tuned on the test patients).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

THRESHOLDS = (0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
MIN_DIAMETERS_MM = (0.0, 3.0, 5.0)  # components below dropped (segmentation.PwSegmenter.min_diameter_mm)


@dataclass(frozen=True, eq=False)
class ThresholdSweep:
    """A PW4MedSeg segmenter whose outputs are its mean probability at every threshold: one prediction
    per case, every threshold a row of ``evaluate_cases``."""

    segmenter: object
    thresholds: tuple[float, ...] = THRESHOLDS
    min_diameters_mm: tuple[float, ...] = MIN_DIAMETERS_MM
    name: str = "PW4MedSeg"
    kind: str = "pw4medseg"
    needs_lungs: bool = False

    def segment(self, volume, *, lungs=None, progress=None, cancel=None):
        from wsnodule_core.segmentation.base import SegmentationResult

        mean = np.asarray(self.segmenter.predict(volume, cancel=cancel).probability.array)
        outputs = {key(t, d): kept(volume, mean >= t, d)
                   for t in self.thresholds for d in self.min_diameters_mm}
        return SegmentationResult(mask=next(iter(outputs.values())), outputs=outputs, method=self.name)


def kept(volume, mask: np.ndarray, min_diameter_mm: float):
    from wsnodule_core.nodules import drop_small_components

    return volume.with_array(drop_small_components(mask, volume.spacing, min_diameter_mm).astype(np.int32))


def key(threshold: float, min_diameter_mm: float) -> str:
    return f"p>={threshold:g} d>={min_diameter_mm:g}"


def sweep(dataset, split: str, segmenter) -> dict[tuple[float, float], dict]:
    """Per (threshold, min diameter): Dice 3D mean/SD and nodules found on the nodule crops, FP
    components per free crop."""
    from wsnodule_core.evaluation import evaluate_cases

    entries = dataset.entries(split)
    groups = {"pos": [e for e in entries if e.get("nodules")],
              "neg": [e for e in entries if not e.get("nodules")]}
    method = ThresholdSweep(segmenter)
    rows: dict[str, dict] = {}
    for group, chosen in groups.items():
        summary, _ = evaluate_cases((dataset.load_case(e) for e in chosen), {method.name: method})
        for row, values in summary.items():
            rows.setdefault(row, {})[group] = values
    out = {}
    for t, d in ((t, d) for t in method.thresholds for d in method.min_diameters_mm):
        pos, neg = (rows[f"{method.name} {key(t, d).capitalize()}"][g] for g in ("pos", "neg"))
        det = pos["detection_3d"]
        out[(t, d)] = {"dice": pos["dice_3d"], "dice_sd": pos.get("dice_3d_sd", float("nan")),
                       "found": det["tp"], "nodules": det["tp"] + det["fn"],
                       "fp_nodule_crop": det["fp_per_case"],
                       "fp_free_crop": neg["detection_3d"]["fp_per_case"], "fp_slices_free": neg["fpr"]}
    return out


def choose(rows: dict[tuple, dict], max_fp: float) -> tuple | None:
    allowed = [t for t, r in rows.items() if r["fp_free_crop"] <= max_fp]
    return max(allowed, key=lambda t: (rows[t]["dice"], t)) if allowed else None


def print_rows(label: str, rows: dict[tuple, dict], chosen: tuple | None = None) -> None:
    print(f"\n{label}\n| threshold, min diameter (mm) | Dice 3D | nodules found | FP comp. / nodule crop | "
          "FP comp. / free crop | FP slices, free crops |\n|---|---:|---:|---:|---:|---:|")
    for t, r in rows.items():
        mark = " (chosen)" if t == chosen else ""
        print(f"| {t[0]:g}, {t[1]:g}{mark} | {r['dice']:.3f} ± {r['dice_sd']:.3f} | {r['found']} / "
              f"{r['nodules']} | {r['fp_nodule_crop']:.2f} | {r['fp_free_crop']:.2f} | "
              f"{r['fp_slices_free']:.2f} |", flush=True)


def main(argv: list[str] | None = None) -> int:
    import torch

    from wsnodule_core.data.dataset import load_dataset
    from wsnodule_core.pw4medseg.config import load_pw4medseg
    from wsnodule_core.segmentation.pw4medseg import PwSegmenter

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("vois", type=Path)
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--max-fp", type=float, default=0.5,
                        help="false components per nodule-free crop [0.5]")
    parser.add_argument("--passes", type=int, default=6, help="stochastic passes (the paper: 6) [6]")
    parser.add_argument("--test", action="store_true", help="then the test split at the chosen thresholds")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    dataset = load_dataset(args.vois)
    for run in args.runs:
        started = time.monotonic()
        model, config = load_pw4medseg(run)
        segmenter = PwSegmenter(model, config, passes=args.passes, seed=0)
        val = sweep(dataset, "val", segmenter)
        chosen = choose(val, args.max_fp)
        best = choose(val, float("inf"))
        print_rows(f"{run} ({config.annotation.describe()}), val split, {args.passes} passes, "
                   f"{time.monotonic() - started:.0f} s; chosen: the best Dice within the FP budget "
                   f"({chosen}), best Dice at any FP ({best})", val, chosen)
        if args.test:
            test = sweep(dataset, "test", PwSegmenter(model, config, passes=args.passes, seed=0))
            picks = sorted({t for t in (chosen, best) if t is not None})
            print_rows(f"{run}, test split at the val settings {picks}", {t: test[t] for t in picks}, chosen)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
