"""LiteMedSAM box prompts on real LIDC VOIs: 3D Dice of its masks against the majority-vote masks
(issue 15, item 2), beside a threshold in the same box.

    WSNODULE_DATA=/work/shared/data OMP_NUM_THREADS=1 python benchmarks/foundation_box_prompts.py [--split val] [--n 12]

Prompts from the reference mask: one 3D box (``segment_box``); each slice's own box
(``segment_slice_boxes`` without carrying); one box on the nodule's widest slice, carried
(``segment_slice_boxes``); and, with no model, HU > -500 inside the 3D box. The first ``--n`` VOIs
of ``--split`` patients (``patient_split``). Results: docs/foundation.md.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from wsnodule_core.data.builders.splits import patient_split
from wsnodule_core.data.lidc.vois import load_voi, read_voi_table
from wsnodule_core.foundation import load_lite_medsam, segment_box, segment_slice_boxes


def _dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    return 2.0 * np.count_nonzero(prediction & truth) / (np.count_nonzero(prediction) + np.count_nonzero(truth))


def scores(model, image, truth: np.ndarray) -> dict[str, float]:
    zs, ys, xs = np.nonzero(truth)
    lo, hi = np.array([zs.min(), ys.min(), xs.min()]), np.array([zs.max(), ys.max(), xs.max()]) + 1
    boxes = {int(z): (int(ys[zs == z].min()), int(xs[zs == z].min()), int(ys[zs == z].max()) + 1,
                      int(xs[zs == z].max()) + 1) for z in np.unique(zs)}
    widest = max(boxes, key=lambda z: np.count_nonzero(truth[z]))
    inside = tuple(slice(a, b) for a, b in zip(lo, hi))
    threshold = np.zeros_like(truth)
    threshold[inside] = np.asarray(image.array)[inside] > -500
    return {
        "one 3D box (segment_box)": _dice(np.asarray(segment_box(image, (*lo, *hi), model=model).array) > 0, truth),
        "each slice's own box": _dice(np.asarray(segment_slice_boxes(image, boxes, model=model, propagate=False)
                                                 .array) > 0, truth),
        "one box on the widest slice, carried": _dice(np.asarray(segment_slice_boxes(
            image, {widest: boxes[widest]}, model=model).array) > 0, truth),
        "HU > -500 in the 3D box (no model)": _dice(threshold, truth),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", default="val", choices=("train", "val", "test"))
    parser.add_argument("--n", type=int, default=12)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = load_lite_medsam("cpu")
    vois = [v for v in read_voi_table() if patient_split(v.patient_id) == args.split][: args.n]
    started, rows = time.time(), []
    for voi in vois:
        image, mask = load_voi(voi)
        rows.append(scores(model, image, np.asarray(mask.array) > 0))
    print(f"{len(vois)} {args.split} VOIs, {time.time() - started:.0f} s\n\n| prompt | 3D Dice (mean ± SD) |\n|---|---:|")
    for name in rows[0]:
        values = [row[name] for row in rows]
        print(f"| {name} | {np.mean(values):.2f} ± {np.std(values):.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
