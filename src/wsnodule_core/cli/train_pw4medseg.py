"""``wsnodule train --method pw4medseg``: the options of the PW4MedSeg network and its run."""

from __future__ import annotations

import argparse

#: Options of the NAM recipe that mean nothing to PW4MedSeg.
_NOT_FOR_PW = ("n_gap", "width", "vgg16_weights", "lr_decay", "image_size", "min_nodule_area", "max_steps_per_epoch",
               "steps", "patch_size", "ema_decay", "t_sampling")


def add_pw_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("PW4MedSeg (--method pw4medseg)")
    group.add_argument("--pw-preset", choices=("compact", "paper"), default="compact",
                       help="compact: 4-layer probabilistic UNETR on 32^3 crops at 2 mm (CPU); paper: ViT-B "
                            "UNETR, 96^3 at 1 mm, the authors' recipe [compact]")
    group.add_argument("--annotation", default=None, metavar="KIND[:ARG]",
                       help="targets from simulated annotations: points:N, boxes:tight, boxes:loose, slices:F, "
                            "or full (the masks: the fully supervised reference) [points:200]")
    group.add_argument("--crop-size", type=int, default=None, help="crop edge in voxels [preset]")
    group.add_argument("--intensity", choices=("ct", "zscore", "percentile"), default=None,
                       help="ct: HU window; zscore/percentile: no Hounsfield units assumed (MRI) [ct]")
    group.add_argument("--warmup-steps", type=int, default=None, help="linear warm-up steps [preset]")
    group.add_argument("--pw-norm", choices=("instance", "batch"), default=None,
                       help="normalisation of the convolution blocks (the paper: instance; batch learnt "
                            "faster in CPU-sized runs, docs/pw4medseg_results.md) [compact: batch, paper: "
                            "instance]")
    group.add_argument("--foreground-probability", type=float, default=None,
                       help="share of crops that hold a voxel of the target's foreground [compact 0.33, paper 0.5]")
    group.add_argument("--nodule-free-confidence", type=float, default=None, metavar="C",
                       help="confidence of every voxel of a case known to hold no nodule (no nodule record, "
                            "negatives_ok: e.g. the VOI set's nodule-free crops); off: such a case only has "
                            "the pseudo-label's far confidence [off]")
    group.add_argument("--val-every", type=int, default=None, metavar="N",
                       help="validate every N epochs (and after the last) [1]")
    group.add_argument("--balance-sources", action="store_true", default=None,
                       help="draw each kind of source equally often (a case's source before ':', e.g. VOI "
                            "crops, nodule-free crops, whole hybrid scans of a `wsnodule data merge` set) "
                            "[off: every case equally often]")
    group.add_argument("--background-in-lungs", type=float, default=None,
                       help="share of the other crops centred in the lungs, the rest anywhere [compact 0.8, paper 0.5]")


def pw_config_from_args(args: argparse.Namespace):
    """The :class:`PwTrainConfig` of the preset with the options given (None with ``--resume``: the
    run's own)."""
    from wsnodule_core.errors import ModelConfigError
    from wsnodule_core.pw4medseg.config import PwTrainConfig

    given = [name for name in _NOT_FOR_PW if getattr(args, name, None) is not None]
    if given:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        raise ModelConfigError(f"{flags}: not options of --method pw4medseg; drop them.")
    if args.resume:
        return None
    values = {name: getattr(args, name) for name in ("annotation", "crop_size", "intensity", "warmup_steps",
                                                      "epochs", "lr", "batch_size", "seed", "device",
                                                      "foreground_probability", "background_in_lungs",
                                                      "nodule_free_confidence", "val_every", "balance_sources")
              if getattr(args, name, None) is not None}
    if args.pw_norm is not None:
        from wsnodule_core.pw4medseg.model import PTransformerConfig

        preset = PTransformerConfig.paper if args.pw_preset == "paper" else PTransformerConfig.compact
        values["model"] = preset(norm_name=args.pw_norm)
    if getattr(args, "steps_per_epoch", None) is not None:  # shared with --method flow-prior
        values["steps_per_epoch"] = args.steps_per_epoch
    if getattr(args, "pixel_spacing", None) is not None:
        values["spacing_mm"] = args.pixel_spacing
    if getattr(args, "pretrained", None) is not None:
        from pathlib import Path

        from wsnodule_core.errors import CheckpointError

        path = Path(args.pretrained).expanduser()
        if not path.is_file():
            raise CheckpointError(f"--pretrained {args.pretrained}: no such checkpoint; give the best.pt or "
                                  "last.pt of a PW4MedSeg run to fine-tune.")
        values["init_from"] = str(path)
    if args.no_amp:
        values["amp"] = False
    if args.deterministic:
        values["deterministic"] = True
    return PwTrainConfig.paper(**values) if args.pw_preset == "paper" else PwTrainConfig(**values)


def run_train_pw(args: argparse.Namespace) -> int:
    """Train on the data set's train split (validation: its val split); 0 on success."""
    from wsnodule_core.cli.progress import print_run, training_hooks
    from wsnodule_core.pw4medseg.train import train_pw4medseg

    callbacks, log = training_hooks("training PW4MedSeg", not args.quiet)
    result = train_pw4medseg(args.data, args.out, pw_config_from_args(args), callbacks, resume=args.resume,
                             overwrite=args.overwrite, log=log)
    print_run(result, "validation Dice")
    return 0
