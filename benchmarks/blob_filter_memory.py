"""The Hessian blob filter on a whole CT: time and peak resident memory of ``segment_blobs`` on
LIDC-IDRI-0002 (512 x 512 x 261), each in a fresh process (the default pipeline's first step).

    WSNODULE_DATA=/work/shared/data python benchmarks/blob_filter_memory.py [--slab 32]

Prints the peak RSS after reading the CT and its lungs, and after the filter. Results: docs/segmentation.md.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path


def _peak_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return float(line.split()[1]) / 1024.0
    return float("nan")


def main(argv: list[str] | None = None) -> int:
    import torch

    from wsnodule_core.baselines.blob_filter import segment_blobs
    from wsnodule_core.data.lung import segment_lungs
    from wsnodule_core.io import read_volume

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args(argv)
    torch.set_num_threads(1)
    root = Path(os.environ["WSNODULE_DATA"]) / "lidc-idri" / "LIDC-IDRI-0002"
    series = next(p for p in root.rglob("*") if p.is_dir() and any(f.suffix == ".dcm" for f in p.iterdir()))
    ct = read_volume(series)
    lungs = segment_lungs(ct).lungs
    before = _peak_mb()
    started = time.perf_counter()
    result = segment_blobs(ct, lungs)
    print(f"{ct.shape}: {result.n_nodules} blobs in {time.perf_counter() - started:.0f} s; peak RSS after reading "
          f"and lungs {before:.0f} MB, after the filter {_peak_mb():.0f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
