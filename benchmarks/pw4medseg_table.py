"""Issue 7's comparison on a CPU: PW4MedSeg trained from each kind of simulated sparse annotation
against the same network trained with the full masks, on the test split of a data set.

    python benchmarks/pw4medseg_table.py --data DATASET --out /tmp/pw_table [--steps 3000] [--passes 2]
        [--config '{"lr": 5e-4}'] [--mri-like 0.01 300 --intensity zscore] [--train-only]

Trains one run per annotation (``--annotations``, default full, points:10, boxes:tight, slices:0.5)
with ``PwTrainConfig`` (CPU defaults plus the JSON ``--config`` overrides), then evaluates every run
with ``evaluate_dataset`` (the NAM paper's slice metrics and the 3D Dice / MSD); prints the table and
the best validation Dice and threshold of each run, and writes OUT/eval/. Runs already in OUT are
reused, so two invocations with different ``--annotations`` and ``--train-only`` can train side by side
(one per core) before a last one evaluates them all.

``--val-from-train N`` holds N training cases out as validation cases when the data set has no
validation split (a hybrid set of two real series: one training and one test patient), so that the
threshold can still be chosen on cases the network did not train on.

``--mri-like SCALE OFFSET`` first writes a copy of the data set with every image mapped to
``image * SCALE + OFFSET`` (no Hounsfield units left: air at about 290, soft tissue at 300), to show
a normalisation that does not assume HU (``--intensity zscore`` or ``percentile``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path


def mri_like_copy(source: Path, target: Path, scale: float, offset: float) -> Path:
    """A copy of the data set folder ``source`` whose images are ``image * scale + offset`` (float32)."""
    import numpy as np

    from wsnodule_core.io.readers import read_volume
    from wsnodule_core.io.writers import write_volume

    if (target / "dataset.json").exists():
        return target
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("images"))
    for case in json.loads((source / "dataset.json").read_text())["cases"]:
        volume = read_volume(source / case["image"])
        mapped = volume.with_array((np.asarray(volume.array, np.float32) * scale + offset).astype(np.float32))
        write_volume(mapped, target / case["image"])
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="data set folder (dataset.json)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--annotations", nargs="+", default=["full", "points:10", "boxes:tight", "slices:0.5"])
    parser.add_argument("--steps", type=int, default=3000, help="optimiser steps per run")
    parser.add_argument("--val-every", type=int, default=1000, help="validate every this many steps")
    parser.add_argument("--passes", type=int, default=2, help="stochastic passes at evaluation (paper: 6)")
    parser.add_argument("--config", default="{}", help="JSON overrides of PwTrainConfig")
    parser.add_argument("--intensity", default=None, help="ct, zscore or percentile (default: the config's)")
    parser.add_argument("--mri-like", nargs=2, type=float, metavar=("SCALE", "OFFSET"), default=None)
    parser.add_argument("--val-from-train", type=int, default=0, metavar="N",
                        help="without a validation split: hold out N training cases for validation")
    parser.add_argument("--train-only", action="store_true", help="train the runs, do not evaluate")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)

    import torch

    from wsnodule_core.data.dataset import load_dataset
    from wsnodule_core.evaluation import evaluate_dataset
    from wsnodule_core.segmentation import load_segmenter
    from wsnodule_core.pw4medseg.config import PwTrainConfig
    from wsnodule_core.pw4medseg.train import train_pw4medseg
    from wsnodule_core.training.checkpoint import LAST, load_checkpoint

    torch.set_num_threads(args.threads)
    data = args.data
    if args.mri_like is not None:
        data = mri_like_copy(args.data, args.out / "data_mri_like", *args.mri_like)
    training: tuple[list, list] | None = None  # loaded only when a run is to be trained

    def training_cases() -> tuple[list, list]:
        nonlocal training
        if training is None:
            dataset = load_dataset(data)
            training = (list(dataset.cases("train")), list(dataset.cases("val")))
            if not training[1] and args.val_from_train:
                n = args.val_from_train
                training = (training[0][:-n], training[0][-n:])
                print(f"validation: {[c.case_id for c in training[1]]} (held out of the training split)")
        return training

    overrides = json.loads(args.config)
    if args.intensity:
        overrides["intensity"] = args.intensity
    steps_per_epoch = 50
    epochs = max(args.steps // steps_per_epoch, 1)
    segmenters, summary = {}, {}
    for annotation in args.annotations:
        run = args.out / annotation.replace(":", "_")
        if not (run / LAST).exists():
            started = time.monotonic()
            config = PwTrainConfig(**{"device": "cpu", **overrides, "annotation": annotation, "epochs": epochs,
                                      "steps_per_epoch": steps_per_epoch,
                                      "val_every": max(args.val_every // steps_per_epoch, 1)})
            result = train_pw4medseg(training_cases(), run, config)
            print(f"{annotation}: {result.global_step} steps in {time.monotonic() - started:.0f} s", flush=True)
        last = load_checkpoint(run / LAST)
        validated = [h for h in last.history if "val_dice" in h]
        keys = ("epoch", "val_dice", "val_threshold", "val_dice_tuned")
        summary[annotation] = {"val": [{k: h.get(k) for k in keys} for h in validated],
                               "train_config": last.train_config}
        print(annotation, "validation:", summary[annotation]["val"], flush=True)
        name = f"PW4MedSeg ({annotation})"
        segmenters[name] = load_segmenter(run, "cpu", name=name, passes=args.passes)
    if args.train_only:
        return 0
    started = time.monotonic()
    report = evaluate_dataset(data, segmenters, "test", args.out / "eval", overwrite=True)
    print(f"evaluation: {time.monotonic() - started:.0f} s")
    print(report.table)
    (args.out / "eval" / "runs.json").write_text(json.dumps(summary, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
