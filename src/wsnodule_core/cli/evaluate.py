"""``wsnodule evaluate``: the NAM paper's Table 1 and Fig. 3 for checkpoints on a data set split."""

from __future__ import annotations

import argparse
from pathlib import Path

from wsnodule_core.cli.arguments import parse_checkpoint
from wsnodule_core.cli.progress import TextProgress


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate", help="Evaluate trained checkpoints on a data set folder (Table 1, Fig. 3).",
        description=(
            "Segment every case of a split of a data set folder with each checkpoint and write the NAM "
            "paper's Table 1 (coarse and fine rows per NAM checkpoint, a row per U-Net) and Fig. 3: "
            "OUT/metrics.json, OUT/report.md, OUT/fig3_size.png (and OUT/masks/ with --save-masks). "
            "With a 1-GAP checkpoint among them, 2-/3-GAP checkpoints run the paper's multi-GAP "
            "segmentation (1-GAP slice detection and screening, multi-GAP scope) unless --no-combine. "
            "With --predictor (and --flow-prior) instead: the flow-guidance method against CAM, Grad-CAM, "
            "Grad-CAM++ and occlusion on the split's nodule patches (OUT/report.md, metrics.json, "
            "counterfactuals.png)."
        ),
    )
    parser.add_argument("data", type=Path, metavar="DATASET_DIR", help="data set folder (dataset.json)")
    parser.add_argument("--checkpoint", action="append", default=None, metavar="[NAME=]CKPT",
                        help="a checkpoint (file or run folder): NAM, 3D NAM, U-Net or PW4MedSeg, repeatable; NAME names its "
                             "rows (default '<n>-GAP' for NAM, 'U-net')")
    parser.add_argument("--split", default="test", choices=("train", "val", "test", "all"),
                        help="cases to evaluate (default test)")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="folder for the report")
    parser.add_argument("--no-combine", action="store_true",
                        help="run each 2-/3-GAP checkpoint alone, not with the 1-GAP model")
    parser.add_argument("--two-nodules", action="store_true", help="NAM: segment the top two blobs per slice")
    parser.add_argument("--slices", choices=("lungs", "all"), default="lungs",
                        help="slices counted in the slice-level metrics: those holding lung (default) or all")
    parser.add_argument("--save-masks", action="store_true",
                        help="write every predicted mask under OUT/masks/")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default auto)")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier report in OUT")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    from wsnodule_core.cli.evaluate_flow import add_flow_arguments

    add_flow_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from wsnodule_core.data.dataset import load_dataset
    from wsnodule_core.errors import InvalidDatasetError
    from wsnodule_core.evaluation import evaluate_dataset, load_segmenters
    from wsnodule_core.io.writers import check_writable_folder
    from wsnodule_core.training.device import choose_device

    if not args.data.exists():
        raise InvalidDatasetError(f"{args.data}: no such data set folder; build one with "
                                  "`wsnodule data ...`.")
    load_dataset(args.data)  # a bad folder fails before the models load
    check_writable_folder(args.out, "--out")
    if bool(args.checkpoint) == bool(args.predictor):
        from wsnodule_core.errors import ModelConfigError

        raise ModelConfigError("give --checkpoint (Table 1 of NAM/U-Net checkpoints) or --predictor (flow "
                               "guidance and attribution baselines on patches), not both and not neither.")
    choice = choose_device(args.device)
    print(choice.describe())
    if args.predictor:
        from wsnodule_core.cli.evaluate_flow import run_flow_evaluation

        return run_flow_evaluation(args, choice.device, None if args.quiet else TextProgress("evaluating"))
    segmenters = load_segmenters([parse_checkpoint(c) for c in args.checkpoint], device=str(choice.device),
                                 combine=not args.no_combine,
                                 nam_overrides={"top_k": 2} if args.two_nodules else None)
    report = evaluate_dataset(args.data, segmenters, None if args.split == "all" else args.split, args.out,
                              None if args.quiet else TextProgress("evaluating"), slices=args.slices,
                              save_masks=args.save_masks, overwrite=args.overwrite)
    print(report.table)
    for name in ("report", "metrics", "figure"):
        print(f"{name}: {report.files[name]}")
    return 0
