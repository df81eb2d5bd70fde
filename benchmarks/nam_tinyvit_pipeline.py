"""The NAM on LiteMedSAM's encoder over a whole CT (issue 15, item 6): the pipeline's time against its bare
encoder passes, and its peak resident memory on a 512 x 512 x 300 CT.

    WSNODULE_DATA=/work/shared/data python benchmarks/nam_tinyvit_pipeline.py [--slices 40] [--full]

The CT is LIDC-IDRI-0002 (512 x 512 x 261), mirrored at its caudal end to 300 slices (a memory and speed
test: what the slices hold does not change the work, except how many are nodule slices). The head is
untrained, so the nodule slices are chosen by the threshold: none (classification and assembly only), or
every slice (each one through scope, ICM and R-NAM screening: the worst case). Ratio = the pipeline's
seconds / the seconds spent inside the encoder's forward passes in the same run (timed around them, so a
loaded machine slows both alike). ``--full``: also ``segment_volume`` on all
300 slices in a fresh process (its peak RSS, with a tenth of the slices as nodule slices; with
``--stub-encoder`` the encoder returns zeros there, which leaves the memory of everything else). Lungs come from
``segment_lungs`` (timed apart). Results: docs/foundation.md.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np


def _rss_mb() -> float:
    """Peak resident memory of this process (VmHWM: unlike ru_maxrss, not inherited from a forking parent)."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return float(line.split()[1]) / 1024.0  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kB


def ct_300():
    from wsnodule_core.io import read_volume

    root = Path(os.environ["WSNODULE_DATA"]) / "lidc-idri" / "LIDC-IDRI-0002"
    series = next(p for p in root.rglob("*") if p.is_dir() and any(f.suffix == ".dcm" for f in p.iterdir()))
    ct = read_volume(series)
    array = np.asarray(ct.array)
    return replace(ct, array=np.concatenate([array, array[-(300 - len(array)):][::-1]]))


class EncoderTimer:
    """Seconds spent inside the encoder's forward passes (a wrapper around it, in the same run)."""

    def __init__(self, net) -> None:
        self.seconds, self.slices, inner = 0.0, 0, net.encoder.forward

        def timed(x):
            started = time.perf_counter()
            out = inner(x)
            self.seconds += time.perf_counter() - started
            self.slices += len(x)
            return out

        net.encoder.forward = timed


def model():
    import torch

    from wsnodule_core.nam.heads import MultiGapConfig
    from wsnodule_core.nam.lite_medsam_model import LiteMedSamClassifier

    torch.manual_seed(0)
    net = LiteMedSamClassifier(MultiGapConfig(backbone="lite_medsam")).eval()
    return net, EncoderTimer(net)


def run_full(threshold: float, stub: bool) -> None:
    """Child process: the whole 300-slice pipeline, its time and peak RSS (``stub``: the encoder's arithmetic
    replaced by zeros of its output's shape, so the rest of the pipeline's memory is measured in minutes)."""
    import torch

    from wsnodule_core.data.lung import segment_lungs
    from wsnodule_core.nam.pipeline import segment_volume
    from wsnodule_core.nam.segment_config import NamConfig

    torch.set_num_threads(1)
    ct = ct_300()
    lungs = segment_lungs(ct).lungs
    rss_before = _rss_mb()
    net, timer = model()
    if stub:
        generator = torch.Generator().manual_seed(0)  # varied slice probabilities: a tenth pass the threshold
        net.encoder.forward = lambda x: torch.randn((len(x), 256, 64, 64), generator=generator)
        timer.seconds = float("nan")
    if stub:  # its own probabilities: a tenth of the slices above the threshold
        generator.manual_seed(0)
        first = segment_volume(net, ct, lungs=lungs, config=NamConfig(input_size=256, probability_threshold=1.0))
        threshold = float(np.quantile(first.probability, 0.9))
        del first
        generator.manual_seed(0)
    t = time.perf_counter()
    result = segment_volume(net, ct, lungs=lungs, config=NamConfig(input_size=256, probability_threshold=threshold))
    took = time.perf_counter() - t
    print(f"FULL {ct.shape}, {int(result.is_nodule.sum())} nodule slices: {took:.0f} s, encoder {timer.seconds:.0f} s "
          f"({timer.slices} slices), pipeline / encoder {took / timer.seconds:.2f}; peak RSS {_rss_mb():.0f} MB "
          f"(after reading the CT and its lungs: {rss_before:.0f} MB)", flush=True)


def main(argv: list[str] | None = None) -> int:
    import torch

    from wsnodule_core.data.lung import segment_lungs
    from wsnodule_core.nam.pipeline import segment_volume
    from wsnodule_core.nam.segment_config import NamConfig

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=40)
    parser.add_argument("--full", action="store_true")
    parser.add_argument("--stub-encoder", action="store_true",
                        help="--full: zeros instead of the encoder's arithmetic (memory of the rest, in minutes)")
    parser.add_argument("--child-threshold", type=float, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_threshold is not None:
        run_full(args.child_threshold, args.stub_encoder)
        return 0
    torch.set_num_threads(1)
    ct = ct_300()
    t = time.perf_counter()
    lungs = segment_lungs(ct).lungs
    print(f"CT {ct.shape}, lungs {time.perf_counter() - t:.0f} s, peak RSS {_rss_mb():.0f} MB", flush=True)
    z0 = ct.shape[0] // 2 - args.slices // 2
    part = replace(ct, array=np.asarray(ct.array)[z0:z0 + args.slices], origin=tuple(ct.index_to_world((z0, 0, 0))))
    part_lungs = lungs[z0:z0 + args.slices]
    net, timer = model()
    rows = []
    for label, threshold in (("no nodule slice", 1.0), ("every slice a nodule slice", 0.0)):
        timer.seconds = timer.slices = 0
        t = time.perf_counter()
        result = segment_volume(net, part, lungs=part_lungs,
                                config=NamConfig(input_size=256, probability_threshold=threshold))
        took = time.perf_counter() - t
        rows.append(f"| {label} ({int(result.is_nodule.sum())} segmented) | {took:.1f} s | {timer.seconds:.1f} s | "
                    f"{1000 * timer.seconds / timer.slices:.0f} ms | {took / timer.seconds:.2f} |")
        print(rows[-1], flush=True)
    print(f"\n{args.slices} slices of {ct.shape}, one torch thread:\n\n| pipeline run | time | of it in the "
          "encoder | encoder per slice | pipeline / encoder |\n|---|---|---|---|---|\n" + "\n".join(rows))
    print(f"peak RSS with the {ct.shape} CT, its lungs and the real encoder: {_rss_mb():.0f} MB", flush=True)
    if args.full:
        probabilities = result.probability
        threshold = float(np.quantile(probabilities, 0.9))
        command = [sys.executable, __file__, "--child-threshold", str(threshold)]
        subprocess.run(command + (["--stub-encoder"] if args.stub_encoder else []), check=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
