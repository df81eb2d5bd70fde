"""Time the annotators' export and the recovery files on a full-size mask (512 x 512 x 300, seven box
nodules spread over the scan, one of them not in the model's mask): the merged label map and table
with per-nodule edited flags, writing label map + CSV, and saving / finding / reading a recovery.

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/annotation_export_speed.py
"""

from __future__ import annotations

import os
import tempfile
import time

import numpy as np

from wsnodule_core.data.annotation_export import annotation_export, write_annotation_export
from wsnodule_core.data.recovery import ct_identity, find_recovery, read_recovery, write_recovery
from wsnodule_core.io.volume import Volume


def timed(label: str, fn):
    start = time.perf_counter()
    result = fn()
    print(f"{label}: {time.perf_counter() - start:.2f} s")
    return result


def main() -> None:
    shape = (300, 512, 512)
    ct = Volume(np.full(shape, -800, np.int16), (1.0, 0.7, 0.7), (-180.0, -180.0, -300.0))
    mask = np.zeros(shape, np.int32)
    for z, y, x in np.random.default_rng(0).integers((20, 60, 60), (280, 450, 450), (6, 3)):
        mask[z - 4 : z + 4, y - 6 : y + 6, x - 6 : x + 6] = 1
    model = mask.astype(np.uint8)
    mask[10:12, 10:12, 10:12] = 1  # painted by hand
    with tempfile.TemporaryDirectory() as folder:
        os.environ["WSNODULE_CACHE"] = folder
        timed("ct_identity", lambda: ct_identity(ct))
        export = timed("annotation_export (model mask given)",
                       lambda: annotation_export(ct.with_array(mask), source_method="bench", model_mask=model))
        timed("write_annotation_export (.nii.gz + .csv)",
              lambda: write_annotation_export(export.labels, export.rows, f"{folder}/annotation.nii.gz"))
        timed("write_recovery", lambda: write_recovery(mask, ct, layer_name="nodules"))
        found = timed("find_recovery", lambda: find_recovery(ct))
        timed("read_recovery", lambda: read_recovery(found, ct))
    print("edited:", [row.edited for row in export.rows])


if __name__ == "__main__":
    main()
