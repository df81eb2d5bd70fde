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
            "Build a chest CT phantom data set with real LIDC nodule shapes, train the NAM classifier from "
            "slice labels only, segment the held-out cases with NAM/R-NAM and the Hessian blob baseline, "
            "and write checkpoints, masks, metrics.json, report.md and figures."
        ),
    )
    parser.add_argument("--out", default="demo-out", help="output folder (default: demo-out)")
    parser.add_argument("--recipe", default="cpu_demo", choices=["cpu_demo", "gpu_paper"],
                        help="data and training recipe (default: cpu_demo, about 8 minutes on 2 CPU cores)")
    parser.add_argument("--cases", type=int, default=None, help="number of phantom cases [recipe's]")
    parser.add_argument("--size", default=None, choices=["tiny", "small", "medium", "paper"],
                        help="phantom grid preset instead of the recipe's grid")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs [recipe's]")
    parser.add_argument("--seed", type=int, default=None, help="data set seed [recipe's]")
    parser.add_argument("--overwrite", action="store_true", help="replace the demo's files in --out")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    for name in ("cases", "epochs"):
        value = getattr(args, name)
        if value is not None and value < 1:
            print(f"wsnodule demo: error: --{name} must be at least 1", file=sys.stderr)
            return 2
    import torch

    from wsnodule_core.demo import run_demo
    from wsnodule_core.nam.recipes import get_recipe

    threads = get_recipe(args.recipe).torch_threads
    if threads:
        torch.set_num_threads(threads)  # the recipe's measured best on small CPUs (docs/nam_results.md)
    result = run_demo(args.out, recipe=args.recipe, n_cases=args.cases, size=args.size, seed=args.seed,
                      epochs=args.epochs, overwrite=args.overwrite, progress=StagedTextProgress())
    print(result.table)
    print(f"report: {result.out_dir / 'report.md'}\nmetrics: {result.out_dir / 'metrics.json'}")
    return 0
