"""Issue 7's comparison on a CPU: PW4MedSeg trained from each kind of simulated sparse annotation
against the same network trained with the full masks, on the test split of a data set.

    python benchmarks/pw4medseg_table.py --data DATASET --out /tmp/pw_table [--steps 600] [--passes 2]

Trains one run per annotation (``--annotations``, default full, points:10, boxes:tight, slices:0.5)
with the CPU defaults of ``PwTrainConfig``, then evaluates every run with ``evaluate_dataset`` (the
NAM paper's slice metrics and the 3D Dice / MSD); prints the table and writes OUT/eval/. Runs already
in OUT are reused.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="data set folder (dataset.json)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--annotations", nargs="+", default=["full", "points:10", "boxes:tight", "slices:0.5"])
    parser.add_argument("--steps", type=int, default=600, help="optimiser steps per run")
    parser.add_argument("--passes", type=int, default=2, help="stochastic passes at evaluation (paper: 6)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)

    import torch

    from wsnodule_core.evaluation import evaluate_dataset
    from wsnodule_core.pw4medseg.infer import PwSegmenter
    from wsnodule_core.pw4medseg.train import PwTrainConfig, train_pw4medseg
    from wsnodule_core.training.checkpoint import LAST

    torch.set_num_threads(args.threads)
    segmenters = {}
    for annotation in args.annotations:
        run = args.out / annotation.replace(":", "_")
        if not (run / LAST).exists():
            started = time.monotonic()
            config = PwTrainConfig(annotation=annotation, epochs=max(args.steps // 50, 1), steps_per_epoch=50,
                                   val_every=max(args.steps // 200, 1), device="cpu")
            result = train_pw4medseg(args.data, run, config)
            print(f"{annotation}: {result.global_step} steps in {time.monotonic() - started:.0f} s, best val "
                  f"Dice {result.best_metric} at epoch {result.best_epoch}", flush=True)
        segmenters[f"PW4MedSeg ({annotation})"] = PwSegmenter(run, passes=args.passes, device="cpu")
    started = time.monotonic()
    report = evaluate_dataset(args.data, segmenters, "test", args.out / "eval", overwrite=True)
    print(f"evaluation: {time.monotonic() - started:.0f} s")
    print(report.table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
