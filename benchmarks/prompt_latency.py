"""Prompt-to-mask latency of :class:`PromptSession` on the shipped real sample (issue 17, item 2).

    OMP_NUM_THREADS=2 python benchmarks/prompt_latency.py [--repeats 5] [--device cpu]

On the LIDC-IDRI-0001 crop (``wsnodule_core.data.sample``), no disk cache: model load; the first box
on the nodule's middle slice (one encoder pass and the decoder); the same box dragged a pixel, a
positive and a negative click there (decoder only, median of ``--repeats``); pre-encoding the two
neighbouring slices (what the plugin does in a worker after a prompt); propagation both ways.
Results: docs/plugin.md ("Prompt-based correction").
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from wsnodule_core.data.sample import load_lidc_sample
from wsnodule_core.foundation import load_lite_medsam
from wsnodule_core.foundation.prompt import PromptSession
from wsnodule_core.metrics import dice_3d


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    sample = load_lidc_sample()
    truth = np.asarray(sample.label.array) > 0
    slices = np.nonzero(truth.any(axis=(1, 2)))[0]
    z = int(slices[len(slices) // 2])
    rows, cols = np.nonzero(truth[z])
    box = (rows.min() - 1, cols.min() - 1, rows.max() + 2, cols.max() + 2)
    model, load_s = _timed(lambda: load_lite_medsam(args.device))
    print(f"CT {sample.ct.shape} (z, y, x), spacing {tuple(round(s, 3) for s in sample.ct.spacing)} mm; nodule on "
          f"slices {slices.min()}-{slices.max()}; device {model.device}, torch threads {torch.get_num_threads()}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, {os.cpu_count()} CPUs")
    print(f"model load                         {load_s * 1000:7.0f} ms")
    session = PromptSession(sample.ct, model=model)  # no disk cache: every first prompt encodes
    first, first_s = _timed(lambda: session.box(z, box))
    print(f"first box on slice {z} (encode)      {first_s * 1000:7.0f} ms   encoded={first.encoded}, "
          f"2D Dice {dice_3d(first.mask, truth[z]):.3f}")
    cached = {
        "same box dragged 1 px": lambda: session.box(z, np.add(box, (1, 1, 1, 1))),
        "positive click (its click box)": lambda: session.click(z, int(rows.mean()), int(cols.mean()), True),
        "negative click": lambda: session.click(z, int(rows.min()) + 1, int(cols.mean()), False),
    }
    for name, prompt in cached.items():
        times, encoded = [], []
        for _ in range(args.repeats):
            session.box(z, box)  # cached: the clicks start from the box's mask each time
            result, seconds = _timed(prompt)
            times.append(seconds)
            encoded.append(result.encoded)
        print(f"{name:34s} {np.median(times) * 1000:7.0f} ms   (median of {args.repeats}; "
              f"encoded={any(encoded)})")
    made, warm_s = _timed(lambda: session.prewarm_neighbours(first))
    print(f"pre-encode slices {z - 1} and {z + 1} (worker)   {warm_s * 1000:7.0f} ms   ({made} encoder passes)")
    spread, spread_s = _timed(lambda: session.propagate(z, first.mask, "both"))
    stacked = np.zeros_like(truth)
    stacked[z] = first.mask
    for r in spread:
        stacked[r.z] = r.mask
    print(f"propagate both ways                {spread_s * 1000:7.0f} ms   slices {min(r.z for r in spread)}-"
          f"{max(r.z for r in spread)} ({len(spread)}), 3D Dice {dice_3d(stacked, truth):.3f}, "
          f"{session.encoder_passes} encoder passes in all")


if __name__ == "__main__":
    main()
