"""Compare the procedural phantom with the real chest CT series and draw docs/images/phantom_vs_real.png.

Usage (from the repository root)::

    WSNODULE_DATA=/path/to/shared/data python docs/scripts/phantom_figure.py [--out FILE.png]

Prints a Markdown table of the numbers quoted in docs/phantom.md. The same
measurements (simple threshold lung mask, local-SD noise estimate) are applied
to the real series and to phantoms drawn on each real series' grid with a sharp
kernel (both real series use sharp kernels: Siemens B70f, GE LUNG) and the noise
SD measured in the real series' muscle.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from matplotlib.figure import Figure
from scipy import ndimage

from wsnodule_core.data.phantom import make_phantom


def read_series(folder: Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    """HU array (z, y, x) and spacing (z, y, x) of the one DICOM series in ``folder``."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    image = reader.Execute()
    return sitk.GetArrayFromImage(image).astype(np.float32), tuple(image.GetSpacing()[::-1])


def simple_lung_mask(hu: np.ndarray, spacing) -> np.ndarray:
    """Lungs by threshold: air inside the body, the two largest 3D parts, vessels filled in per slice."""
    body = hu > -500
    body = np.stack([ndimage.binary_fill_holes(ndimage.binary_opening(s, iterations=2)) for s in body])
    air = (hu < -400) & (hu > -1500) & body
    lab, n = ndimage.label(air)
    sizes = np.bincount(lab.ravel())[1:] * np.prod(spacing) / 1e6
    keep = [i + 1 for i in np.argsort(sizes)[::-1][:2] if sizes[i] > 0.2]
    lungs = np.isin(lab, keep)
    radius = max(1, int(round(4.0 / spacing[1])))
    disk = np.hypot(*np.mgrid[-radius:radius + 1, -radius:radius + 1]) <= radius
    return np.stack([ndimage.binary_fill_holes(ndimage.binary_closing(s, disk)) for s in lungs])


def local_sd(hu: np.ndarray, region: np.ndarray, size: int = 7) -> float:
    """Median in-plane SD over ``size`` x ``size`` windows lying wholly in ``region``."""
    f = (1, size, size)
    mean = ndimage.uniform_filter(hu.astype(np.float64), f)
    var = ndimage.uniform_filter(hu.astype(np.float64) ** 2, f) - mean**2
    inside = ndimage.binary_erosion(region, np.ones(f, bool))
    return float(np.median(np.sqrt(np.maximum(var[inside], 0)))) if inside.any() else float("nan")


def measure(hu: np.ndarray, spacing, lungs: np.ndarray | None = None) -> dict[str, float]:
    lungs = simple_lung_mask(hu, spacing) if lungs is None else lungs
    body = np.stack([ndimage.binary_fill_holes(s) for s in hu > -500])
    values = hu[lungs]
    smooth = ndimage.uniform_filter(hu, (1, 9, 9))
    muscle = (smooth > 10) & (smooth < 80) & body & ~ndimage.binary_dilation(lungs, iterations=3)
    air = (hu > -1500) & (smooth < -950) & ~ndimage.binary_dilation(body, iterations=5)
    p5, p25, p50, p75, p95 = np.percentile(values, [5, 25, 50, 75, 95])
    return {
        "lung volume (L)": lungs.sum() * float(np.prod(spacing)) / 1e6,
        "lung HU p5": p5, "lung HU p25": p25, "lung HU median": p50, "lung HU p75": p75, "lung HU p95": p95,
        "lung voxels > -500 HU (%)": 100.0 * float((values > -500).mean()),
        "noise SD in muscle (HU)": local_sd(hu, muscle),
        "noise SD in air (HU)": local_sd(hu, air),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/images/phantom_vs_real.png")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    data = os.environ.get("WSNODULE_DATA")
    if not data:
        print("Set WSNODULE_DATA to the shared data folder (it holds chest-ct/).", file=sys.stderr)
        return 2
    series = sorted(p for p in (Path(data) / "chest-ct").iterdir() if p.is_dir())
    columns: dict[str, dict[str, float]] = {}
    real_slices = {}
    histograms: dict[str, np.ndarray] = {}
    phantom = None
    for folder in series:
        hu, spacing = read_series(folder)
        columns[folder.name] = measure(hu, spacing)
        lungs = simple_lung_mask(hu, spacing)
        real_slices[folder.name] = (hu[int(np.argmax(lungs.sum((1, 2))))], spacing)
        histograms[folder.name] = hu[lungs][::7]
        noise = columns[folder.name]["noise SD in muscle (HU)"]
        ph = make_phantom(hu.shape, spacing, seed=args.seed, kernel="sharp", noise_sd_hu=round(noise, 1))
        arr = ph.volume.array.astype(np.float32)
        columns[f"phantom on {folder.name} grid"] = measure(arr, spacing)
        histograms[f"phantom, {folder.name} grid"] = arr[simple_lung_mask(arr, spacing)][::7]
        columns[f"phantom ({folder.name} grid), true lung mask"] = measure(arr, spacing, ph.lungs)
        phantom = phantom or (ph, spacing)
    names = list(columns)
    print("| measure | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 1) + "|")
    for key in columns[names[0]]:
        print(f"| {key} | " + " | ".join(f"{columns[n][key]:.3g}" for n in names) + " |")

    ph, spacing = phantom
    arr = ph.volume.array
    level = int(np.argmax(ph.lungs.sum((1, 2))))
    fig = Figure(figsize=(16, 4.4))
    window = dict(cmap="gray", vmin=-1350, vmax=150, interpolation="lanczos")
    ax = fig.add_subplot(1, 4, 1)
    ax.imshow(arr[level], **window)
    ax.set_title(f"phantom, axial (seed {args.seed}, sharp kernel)")
    name, (real, _) = next(iter(real_slices.items()))
    ax = fig.add_subplot(1, 4, 2)
    ax.imshow(real, **window)
    ax.set_title(f"real: {name}, axial")
    ax = fig.add_subplot(1, 4, 3)
    row = int(ph.volume.world_to_index([0.0, 10.0, 0.0])[1])
    ax.imshow(arr[::-1, row, :], aspect=spacing[0] / spacing[2], **window)
    ax.set_title("phantom, coronal")
    for a in fig.axes:
        a.set_axis_off()
    ax = fig.add_subplot(1, 4, 4)
    bins = np.linspace(-1100, -300, 81)
    for label, values in histograms.items():
        ax.plot(0.5 * (bins[1:] + bins[:-1]), np.histogram(values, bins, density=True)[0], label=label)
    ax.set_xlabel("HU inside the lung mask")
    ax.set_yticks([])
    ax.legend(fontsize=7)
    ax.set_title("lung HU histograms")
    fig.tight_layout()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=72)
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
