"""The demo's phantom-trained NAM on real LIDC-IDRI scans it never saw: the front door (``best.pt`` and
the slice threshold its validation chose) against what the demo segmented with before issue 13 (the
last epoch at 0.5), with the training-free blob filter beside them.

    python benchmarks/real_front_door_check.py OUT RUN_DIR LIDC_DICOM_ROOT

RUN_DIR is a NAM run folder (e.g. ``demo-out/checkpoints/nam-1gap`` of ``wsnodule demo``); the LIDC
data set with images is built in OUT/lidc from LIDC_DICOM_ROOT (``$WSNODULE_DATA/lidc-idri``).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from wsnodule_core.data.builders import build_lidc_dataset
from wsnodule_core.evaluation import evaluate_dataset
from wsnodule_core.nam.recipes import get_recipe
from wsnodule_core.segmentation import BlobSegmenter, load_segmenter

PATIENTS = ["LIDC-IDRI-0001", "LIDC-IDRI-0002"]
FRONT_DOOR = "NAM best.pt, validation threshold (front door)"
OLD_DEMO = "NAM last.pt, threshold 0.5 (old demo)"


def main(argv: list[str]) -> int:
    out, run, dicom_root = Path(argv[0]), Path(argv[1]), argv[2]
    torch.set_num_threads(1)
    data = out / "lidc"
    if not data.exists():
        build_lidc_dataset(data, patient_ids=PATIENTS, with_images=True, dicom_root=dicom_root)
    recipe = get_recipe("cpu_demo").segment
    methods = {
        FRONT_DOOR: load_segmenter(run / "best.pt", "cpu", config=recipe, name=FRONT_DOOR),
        OLD_DEMO: load_segmenter(run / "last.pt", "cpu", config=recipe, probability_threshold=0.5,
                                 name=OLD_DEMO),
        "Hessian blob filter": BlobSegmenter(name="Hessian blob filter"),
    }
    started = time.time()
    report = evaluate_dataset(data, methods, None, out / "eval", overwrite=True)
    print(f"{time.time() - started:.0f} s")
    print(report.table)
    for row, values in report.rows.items():
        d = values["detection_3d"]
        print(f"{row}: {d['tp']} of {d['tp'] + d['fn']} nodules, {d['fp_per_case']:.1f} FP per case, "
              f"TP Dice 3D {d['tp_dice_3d']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
