"""Time NAM/R-NAM segmentation of a 512 x 512 x N volume against one batched classifier pass.

The classifier is a checkpoint (``--checkpoint``) or, by default, a randomly initialised narrow
``MultiGapClassifier`` (channels / 8). With random weights the NAMs are meaningless, but the costs
are real: the forward pass, and per nodule slice the ICM, the candidate filling and one batched
R-NAM forward per slice. Since a random model classifies slices about at chance, the benchmark
reports the ratio both at the given threshold and with every slice segmented (threshold 0, the
worst case). With the narrow network the forward pass is ~64x cheaper than VGG16's, so the ratio
overstates the overhead of a paper-sized model.

Usage::

    python benchmarks/nam_segment_benchmark.py [--slices 24] [--checkpoint PATH | --width vgg16]
        [--device auto]

With ``WSNODULE_DATA`` set and ``--real``, the first series under ``$WSNODULE_DATA/chest-ct`` is
used instead of the phantom (its first ``--slices`` slices).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import torch


def _volume(args):
    from wsnodule_core.data.lung import segment_lungs
    from wsnodule_core.data.phantom import make_phantom
    from wsnodule_core.io.volume import Volume

    data = os.environ.get("WSNODULE_DATA")
    if args.real and data:
        from wsnodule_core.io import read_volume

        folders = sorted(p for p in (Path(data) / "chest-ct").glob("*") if p.is_dir())
        volume = read_volume(folders[0])
        start = max(0, volume.shape[0] // 2 - args.slices // 2)
        volume = Volume(volume.array[start : start + args.slices], volume.spacing,
                        tuple(volume.index_to_world([start, 0, 0])), volume.direction, volume.metadata)
        return volume, segment_lungs(volume).lungs, f"real series {folders[0].name}"
    phantom = make_phantom(shape=(args.slices, 512, 512), spacing=(2.5, 0.7, 0.7), seed=0)
    return phantom.volume, phantom.lungs, "phantom"


def _model(args, device):
    if args.checkpoint:
        from wsnodule_core.nam.model import load_classifier

        model, _ = load_classifier(args.checkpoint, device=device)
        return model, f"checkpoint {args.checkpoint}"
    from wsnodule_core.nam.model import MultiGapClassifier, MultiGapConfig

    torch.manual_seed(0)
    head = 128 if args.width == "narrow" else 1024
    model = MultiGapClassifier(MultiGapConfig(n_gap=1, width=args.width, head_channels=head))
    model = model.to(device).eval()
    return model, f"{args.width} 1-GAP MultiGapClassifier, random init"


def _forward_only(model, volume, lungs, config, batch_size, device) -> float:
    from wsnodule_core.data.lung import lung_crop
    from wsnodule_core.image.window import NAM_WINDOW, apply_window

    crop = lung_crop(volume, lungs, size=config.input_size).volume.array
    _sync(device)
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, crop.shape[0], batch_size):
            hu = torch.as_tensor(np.asarray(crop[i : i + batch_size], np.float32)).to(device)
            x = apply_window(hu, NAM_WINDOW)
            model.forward_with_maps(x[:, None])
    _sync(device)
    return time.perf_counter() - start


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=24)
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--width", choices=("narrow", "vgg16"), default="narrow",
                        help="size of the random model when no checkpoint is given")
    parser.add_argument("--real", action="store_true",
                        help="use $WSNODULE_DATA/chest-ct instead of the phantom")
    args = parser.parse_args(argv)

    from wsnodule_core.nam.pipeline import NamConfig, segment_volume

    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    volume, lungs, source = _volume(args)
    model, described = _model(args, device)
    print(f"volume: {source}, shape {volume.shape}, spacing {volume.spacing}; "
          f"model: {described}; device {device}")

    base = NamConfig()
    _forward_only(model, volume, lungs, base, args.batch_size, device)  # warm-up
    t_forward = min(_forward_only(model, volume, lungs, base, args.batch_size, device) for _ in range(2))
    print(f"one batched forward pass over {volume.shape[0]} slices: {t_forward:.2f} s")
    for label, threshold in (("threshold %.2f" % args.threshold, args.threshold), ("every slice", 0.0)):
        config = NamConfig(probability_threshold=threshold)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        _sync(device)
        start = time.perf_counter()
        result = segment_volume(model, volume, lungs=lungs, config=config, batch_size=args.batch_size)
        _sync(device)
        elapsed = time.perf_counter() - start
        n_pos = int(result.is_nodule.sum())
        line = (f"segment_volume ({label}): {elapsed:.2f} s, {n_pos} nodule slices, "
                f"ratio to the forward pass {elapsed / t_forward:.2f}")
        if n_pos:
            line += f", {(elapsed - t_forward) / n_pos * 1000:.0f} ms per nodule slice beyond it"
        if device.type == "cuda":
            line += f", CUDA peak {torch.cuda.max_memory_allocated(device) / 2**20:.0f} MiB"
        print(line)
    tracemalloc.start()
    segment_volume(model, volume, lungs=lungs, config=NamConfig(probability_threshold=0.0),
                   batch_size=args.batch_size)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak traced (numpy/python) memory of segment_volume, every slice: {peak / 2**20:.0f} MiB; "
          f"process peak RSS {rss:.0f} MiB (input volume {volume.array.nbytes / 2**20:.0f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
