"""``wsnodule train --method flow-prior``: the options of the rectified-flow prior and its run."""

from __future__ import annotations

import argparse
import os

#: Options of the NAM/U-Net recipes that mean nothing to the prior (it counts steps, not epochs).
_NOT_FOR_PRIOR = ("n_gap", "width", "vgg16_weights", "epochs", "lr_decay", "image_size", "min_nodule_area",
                  "max_steps_per_epoch", "annotation", "crop_size", "intensity")


def add_prior_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("rectified-flow prior (--method flow-prior)")
    group.add_argument("--flow-preset", choices=("compact", "gpu"), default="compact",
                       help="compact: 3-level UNet, 32^3 patches at 1.5 mm (CPU); gpu: 4 levels with "
                            "attention, 64^3 at 1 mm [compact]")
    group.add_argument("--steps", type=int, default=None, help="optimiser steps in all [preset]")
    group.add_argument("--steps-per-epoch", type=int, default=None,
                       help="steps between checkpoints and reports (also pw4medseg: steps per epoch) [preset]")
    group.add_argument("--patch-size", type=int, default=None,
                       help="patch edge in voxels (also nam3d, flow-predictor) [preset; flow-predictor: 32]")
    group.add_argument("--ema-decay", type=float, default=None, help="EMA decay of the saved weights [preset]")
    group.add_argument("--t-sampling", choices=("uniform", "logit-normal"), default=None,
                       help="how training times are drawn [uniform]")
    group.add_argument("--splits", nargs="+", default=None, metavar="SPLIT",
                       help="data set splits whose volumes the prior trains on [train]")


def prior_config_from_args(args: argparse.Namespace):
    """The :class:`PriorTrainConfig` of the preset with the options given; with ``--resume``, the
    run's own settings with a new ``--steps`` (train longer) or ``--device``."""
    from dataclasses import replace
    from pathlib import Path

    from wsnodule_core.errors import ModelConfigError
    from wsnodule_core.flow.train_prior import PriorTrainConfig
    from wsnodule_core.training.checkpoint import LAST, load_checkpoint

    if args.resume:
        if not (Path(args.out) / LAST).exists():
            return None  # train_prior says there is nothing to resume
        saved = PriorTrainConfig.from_dict(load_checkpoint(Path(args.out) / LAST).train_config)
        return replace(saved, **{name: getattr(args, name) for name in ("steps", "device")
                                 if getattr(args, name, None) is not None})

    given = [name for name in _NOT_FOR_PRIOR if getattr(args, name, None) is not None]
    if given:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        raise ModelConfigError(f"{flags}: not options of --method flow-prior (it trains for --steps); drop them.")
    changes = {name: getattr(args, name) for name in ("steps", "steps_per_epoch", "patch_size", "ema_decay",
                                                      "t_sampling", "warmup_steps", "lr", "batch_size", "seed",
                                                      "device", "splits")
               if getattr(args, name, None) is not None}
    if getattr(args, "pixel_spacing", None) is not None:
        changes["spacing_mm"] = args.pixel_spacing
    if args.no_amp:
        changes["amp"] = False
    if args.deterministic:
        changes["deterministic"] = True
    return PriorTrainConfig.for_preset(args.flow_preset, **changes)


def run_train_prior(args: argparse.Namespace) -> int:
    """Train the prior on the data set's train split, with a text progress bar; 0 on success."""
    from wsnodule_core.cli.progress import training_hooks
    from wsnodule_core.flow.train_prior import train_prior

    main_process = os.environ.get("RANK", "0") == "0"
    callbacks, log = training_hooks("training the flow prior", not args.quiet and main_process)
    result = train_prior(args.data, args.out, prior_config_from_args(args), callbacks, resume=args.resume,
                         overwrite=args.overwrite, log=log)
    if main_process:
        print(f"trained {result.global_step} steps on {result.device}; prior (EMA weights) in {result.last_path}")
    return 0
