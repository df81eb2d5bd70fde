"""``wsnodule demo``: the main job on built-in data, end to end, with a report."""

from __future__ import annotations

import argparse
import sys

from wsnodule_core.cli.progress import StagedTextProgress


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="Run the end-to-end demo on built-in data (no download, CPU is fine).",
        description=(
            "Build a small chest CT phantom data set with real LIDC nodule shapes, segment every case, "
            "evaluate with the NAM paper's metrics and write masks, metrics.json, report.md and figures."
        ),
    )
    parser.add_argument("--out", default="demo-out", help="output folder (default: demo-out)")
    parser.add_argument("--cases", type=int, default=12, help="number of phantom cases (default: 12)")
    parser.add_argument("--size", default="small", choices=["tiny", "small", "medium", "paper"],
                        help="phantom grid preset (default: small)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--overwrite", action="store_true", help="replace the demo's files in --out")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from wsnodule_core.demo import run_demo

    if args.cases < 1:
        print("wsnodule demo: error: --cases must be at least 1", file=sys.stderr)
        return 2
    result = run_demo(args.out, n_cases=args.cases, size=args.size, seed=args.seed,
                      overwrite=args.overwrite, progress=StagedTextProgress())
    print(result.table)
    print(f"report: {result.out_dir / 'report.md'}\nmetrics: {result.out_dir / 'metrics.json'}")
    return 0
