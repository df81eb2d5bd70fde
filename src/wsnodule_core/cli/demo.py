"""``wsnodule demo``: a real CT segmented with the shipped models, and training from weak labels on built-in
data, end to end, with a report."""

from __future__ import annotations

import argparse
import sys

from wsnodule_core.cli.progress import StagedTextProgress


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="Run the end-to-end demo: a real CT with the shipped models, and training on built-in data.",
        description=(
            "Real CT: segment the shipped LIDC-IDRI-0001 crop with the shipped default model, the Hessian blob "
            "filter and medsam-box (its box from the reader label) and score each against the readers' label. "
            "Training: build a chest CT phantom set with real LIDC nodule shapes, train the NAM classifier from "
            "slice labels only, segment the held-out cases with NAM/R-NAM and the blob filter. Writes masks, "
            "checkpoints, metrics.json, report.md and figures; no download."
        ),
    )
    parser.add_argument("--out", default="demo-out", help="output folder (default: demo-out)")
    parser.add_argument("--skip-real", action="store_true", help="run only the training part (phantom data)")
    parser.add_argument("--skip-training", action="store_true", help="run only the real CT part")
    parser.add_argument("--recipe", default="cpu_demo", choices=["cpu_demo", "gpu_paper"],
                        help="training part's data and training recipe (default: cpu_demo, about 6 minutes on "
                             "2 CPU cores)")
    parser.add_argument("--cases", type=int, default=None, help="number of phantom cases [recipe's]")
    parser.add_argument("--size", default=None, choices=["tiny", "small", "medium", "paper"],
                        help="phantom grid preset instead of the recipe's grid")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs [recipe's]")
    parser.add_argument("--seed", type=int, default=None, help="data set seed [recipe's]")
    parser.add_argument("--device", default="auto",
                        help="real part's device: auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N, mps")
    parser.add_argument("--cache", default=None, metavar="DIR",
                        help="LiteMedSAM embedding cache of the real part (default: $WSNODULE_CACHE/lite_medsam, "
                             "else ~/.cache/wsnodule/lite_medsam); a second run reads it")
    parser.add_argument("--overwrite", action="store_true", help="replace the demo's files in --out")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    for name in ("cases", "epochs"):
        value = getattr(args, name)
        if value is not None and value < 1:
            print(f"wsnodule demo: error: --{name} must be at least 1", file=sys.stderr)
            return 2
    if args.skip_real and args.skip_training:
        print("wsnodule demo: error: --skip-real and --skip-training leave nothing to run; drop one",
              file=sys.stderr)
        return 2
    import torch

    from wsnodule_core.demo import run_demo
    from wsnodule_core.nam.recipes import get_recipe

    threads = get_recipe(args.recipe).torch_threads
    if threads:
        torch.set_num_threads(threads)  # the recipe's measured best on small CPUs (docs/nam_results.md)
    result = run_demo(args.out, real=not args.skip_real, training=not args.skip_training, recipe=args.recipe,
                      n_cases=args.cases, size=args.size, seed=args.seed, epochs=args.epochs, device=args.device,
                      cache_dir=args.cache, overwrite=args.overwrite, progress=StagedTextProgress())
    skipped = result.metrics.get("real", {}).get("skipped", {})
    for row, reason in skipped.items():
        print(f"skipped {row}: {reason}", file=sys.stderr)
    print(result.table)
    print(f"report: {result.out_dir / 'report.md'}\nmetrics: {result.out_dir / 'metrics.json'}")
    return 0
