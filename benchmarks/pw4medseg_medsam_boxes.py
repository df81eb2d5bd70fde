"""PW4MedSeg pseudo-labels from tight 3D boxes: the intensity box prior against LiteMedSAM's probability.

Dice of the hard pseudo-label (``p > 0.5``) with each VOI's reference mask, on the first ``--n``
nodule crops of a split of a ``wsnodule data lidc-vois`` set (val by default: nothing here is tuned
on test). The lung mask of each crop confines the intensity prior, as in training.

    WSNODULE_DATA=/work/shared/data OMP_NUM_THREADS=1 python benchmarks/pw4medseg_medsam_boxes.py \\
        --vois-set DIR [--split val] [--n 15]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    import torch

    from wsnodule_core.data.dataset import load_dataset
    from wsnodule_core.foundation import load_lite_medsam
    from wsnodule_core.pw4medseg.annotations import simulate_boxes
    from wsnodule_core.pw4medseg.pseudo_labels import PseudoLabelConfig, pseudo_label

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vois-set", type=Path, required=True)
    parser.add_argument("--split", default="val")
    parser.add_argument("--n", type=int, default=15)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    dataset = load_dataset(args.vois_set)
    entries = [e for e in dataset.entries(args.split) if e.get("nodules")][: args.n]
    model = load_lite_medsam("cpu")
    configs = {"intensity prior": (PseudoLabelConfig(), None),
               "LiteMedSAM": (PseudoLabelConfig(box_source="medsam"), model)}
    print("| case | voxels | " + " | ".join(configs) + " |\n|---|---:|" + "---:|" * len(configs))
    scores: dict[str, list[float]] = {name: [] for name in configs}
    seconds = dict.fromkeys(configs, 0.0)
    for entry in entries:
        case = dataset.load_case(entry)
        truth = np.asarray(case.mask.array) > 0
        annotations = simulate_boxes(case.mask)
        lungs = np.asarray(case.lungs, bool) if case.lungs is not None and np.any(case.lungs) else None
        row = []
        for name, (config, net) in configs.items():
            started = time.monotonic()
            mask = pseudo_label(case.image, annotations, config, lungs, model=net).mask()
            seconds[name] += time.monotonic() - started
            dice = 2 * float((mask & truth).sum()) / max(int(mask.sum() + truth.sum()), 1)
            scores[name].append(dice)
            row.append(f"{dice:.3f}")
        print(f"| {case.case_id} | {int(truth.sum())} | " + " | ".join(row) + " |", flush=True)
    means = (f"{np.mean(v):.3f} ± {np.std(v):.3f}" for v in scores.values())
    print("| mean ± SD | | " + " | ".join(means) + " |")
    print("| median | | " + " | ".join(f"{np.median(v):.3f}" for v in scores.values()) + " |")
    per_case = (f"{seconds[n] / max(len(entries), 1):.1f}" for n in configs)
    print("| s per case | | " + " | ".join(per_case) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
