"""LiteMedSAM's speed and memory on this machine's CPU (issue 15, item 6): what a CPU user waits for.

Encoder ms per slice with one torch thread and with all; slices per second in batches of 1, 4, 8;
decoder ms per box prompt on a cached embedding; ``segment_box`` on one nodule crop with an empty
and then a filled embedding cache (masks must be equal); peak resident memory of ``segment_box`` on
a slice range of the whole LIDC-IDRI-0002 CT (512 x 512 x 261). Results: docs/foundation.md.

    WSNODULE_DATA=/work/shared/data python benchmarks/foundation_speed.py [--vois-set DIR] [--slices 10]
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kB


def _timed(function, repeats: int) -> float:
    started = time.perf_counter()
    for _ in range(repeats):
        function()
    return (time.perf_counter() - started) / repeats


def main(argv: list[str] | None = None) -> int:
    import torch

    from wsnodule_core.foundation import (
        EmbeddingCache,
        decode_box,
        encode_images,
        load_lite_medsam,
        segment_box,
        to_model_image,
    )
    from wsnodule_core.io import read_volume

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vois-set", type=Path, default=Path("/tmp/real-bench/vois40"))
    parser.add_argument("--slices", type=int, default=10, help="slices of the whole-CT box [10]")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    rows: list[tuple[str, str]] = []
    model = load_lite_medsam("cpu")
    ct_root = Path(os.environ["WSNODULE_DATA"]) / "lidc-idri" / "LIDC-IDRI-0002"
    series = next(p for p in ct_root.rglob("*")
                  if p.is_dir() and any(f.suffix == ".dcm" for f in p.iterdir()))
    ct = read_volume(series)
    rows.append(("peak RSS after loading the model and the CT", f"{_rss_mb():.0f} MB"))
    z = ct.shape[0] // 2
    image, _ = to_model_image(np.asarray(ct.array[z, 128:384, 128:384]), ct.spacing[1:])
    with torch.no_grad():
        for threads in (1, os.cpu_count() or 1):
            torch.set_num_threads(threads)
            model.image_encoder(image[None])  # warm-up
            seconds = _timed(lambda: model.image_encoder(image[None]), args.repeats)
            rows.append((f"encoder, 1 slice, {threads} thread(s)", f"{seconds * 1000:.0f} ms"))
        for batch in (1, 4, 8):
            images = image[None].repeat(batch, 1, 1, 1)
            seconds = _timed(lambda: model.image_encoder(images), 1)
            rows.append((f"encoder, batch {batch}, {torch.get_num_threads()} threads",
                         f"{batch / seconds:.2f} slices/s"))
        embedding = encode_images(model, image[None])[0]
        box = np.array([100, 100, 150, 160], np.float32)
        decode_box(model, embedding, box)
        seconds = _timed(lambda: decode_box(model, embedding, box), 20)
        rows.append(("decoder, 1 box prompt, cached embedding", f"{seconds * 1000:.0f} ms"))

    from wsnodule_core.data.dataset import load_dataset

    dataset = load_dataset(args.vois_set)
    entry = next(e for e in dataset.entries("val") if e.get("nodules"))
    case = dataset.load_case(entry)
    zs, ys, xs = np.nonzero(np.asarray(case.mask.array))
    voi_box = (zs.min(), ys.min(), xs.min(), zs.max() + 1, ys.max() + 1, xs.max() + 1)
    with tempfile.TemporaryDirectory() as folder:
        cache = EmbeddingCache(folder)
        started = time.perf_counter()
        first = segment_box(case.image, voi_box, model=model, cache=cache).array
        uncached = time.perf_counter() - started
        started = time.perf_counter()
        second = segment_box(case.image, voi_box, model=model, cache=cache).array
        cached = time.perf_counter() - started
    n = int(voi_box[3] - voi_box[0])
    rows.append((f"segment_box, VOI {case.case_id} ({n} slices), empty cache", f"{uncached:.1f} s"))
    rows.append((f"segment_box, same box, filled cache (masks equal: {np.array_equal(first, second)})",
                 f"{cached:.2f} s"))

    before = _rss_mb()
    box = (z - args.slices // 2, 200, 200, z - args.slices // 2 + args.slices, 240, 240)
    started = time.perf_counter()
    segment_box(ct, box, model=model)
    rows.append((f"segment_box on LIDC-IDRI-0002 {ct.shape}, {args.slices} slices (no cache)",
                 f"{time.perf_counter() - started:.1f} s"))
    rows.append(("peak RSS after it (before: %.0f MB)" % before, f"{_rss_mb():.0f} MB"))
    print(f"LiteMedSAM on CPU ({os.cpu_count()} cores), torch {torch.__version__}\n")
    print("| Measure | Value |\n|---|---:|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
