"""``wsnodule train``: the NAM multi-GAP classifier (weak slice labels) or its 3D variant (patch labels),
the U-Net baseline, the rectified-flow prior (no labels), the flow method's patch predictor (patch
labels), or PW4MedSeg (sparse annotations).

Several GPUs (NAM and the flow prior): ``torchrun --nproc_per_node=N -m wsnodule_core.cli.main train ...``.
"""

from __future__ import annotations

import argparse

from wsnodule_core.cli.progress import print_run, training_hooks

METHODS = ("nam", "nam3d", "unet", "flow-prior", "flow-predictor", "pw4medseg")


def register(subparsers: argparse._SubParsersAction) -> None:
    from wsnodule_core.cli.train_flow_predictor import add_predictor_arguments
    from wsnodule_core.cli.train_flow_prior import add_prior_arguments
    from wsnodule_core.cli.train_nam import add_train_arguments
    from wsnodule_core.cli.train_pw4medseg import add_pw_arguments

    parser = subparsers.add_parser(
        "train", help="Train a model on a data set folder (NAM classifier, U-Net baseline, flow prior and "
                      "predictor, PW4MedSeg).",
        description=(
            "Train on the train split of a data set folder (validation: its val split) and write best.pt and "
            "last.pt into the run folder. --method nam (default) trains the multi-GAP classifier from slice "
            "labels only (weak supervision); --method nam3d the 3D multi-GAP classifier from patch labels; "
            "--method unet the fully supervised U-Net baseline from the "
            "nodule masks; --method flow-prior the 3D rectified-flow prior on unlabelled CT patches of the "
            "train split (last.pt with EMA weights); --method flow-predictor the flow method's patch "
            "predictor (nodule present or not) on patches cut from the train and val splits; --method "
            "pw4medseg the probabilistic transformer from simulated sparse annotations (--annotation). An "
            "existing run is refused unless --resume or --overwrite."
        ),
    )
    parser.add_argument("--method", choices=METHODS, default="nam", help="what to train (default nam)")
    add_train_arguments(parser)
    for action in parser._actions:  # the run folder: positional OUT or --out OUT
        if action.dest == "out" and not action.option_strings:
            action.nargs, action.default, action.metavar = "?", None, "OUT"
    parser.add_argument("--out", dest="out_option", metavar="RUN_DIR", help="run folder (same as OUT)")
    unet = parser.add_argument_group("U-Net baseline (--method unet)")
    unet.add_argument("--unet-preset", choices=("paper", "compact"), default=None,
                      help="paper: 64..1024 channels; compact: 8..64 for CPUs "
                           "[paper; compact with --width narrow]")
    unet.add_argument("--unet-loss", choices=("batch", "per_slice"), default="batch",
                      help="negative Dice over the mini-batch (paper) or averaged per slice [batch]")
    unet.add_argument("--epoch-size", choices=("balanced", "all"), default=None,
                      help="balanced: every nodule slice and as many without; all: every slice "
                           "(also --method nam) [balanced]")
    nam3d = parser.add_argument_group("3D NAM (--method nam3d; also --n-gap, --patch-size, --pixel-spacing)")
    nam3d.add_argument("--nam3d-width", choices=("narrow", "standard", "wide"), default=None,
                       help="backbone width [narrow]")
    nam3d.add_argument("--nam3d-norm", choices=("group", "batch", "none"), default=None,
                       help="normalisation layers [group]")
    nam3d.add_argument("--nam3d-optimizer", choices=("adamw", "sgd"), default=None, help="[adamw]")
    nam3d.add_argument("--weight-decay", type=float, default=None, help="[5e-4]")
    nam3d.add_argument("--positives-per-nodule", type=int, default=None,
                       help="patches per nodule (one centred, the rest jittered) [4]")
    nam3d.add_argument("--negatives-per-case", type=int, default=None, help="nodule-free lung patches per case [8]; --method nam: "
                       "at most this many nodule-free slices per case [all]")
    add_prior_arguments(parser)
    add_predictor_arguments(parser)
    add_pw_arguments(parser)
    parser.set_defaults(func=run)


def _out(args: argparse.Namespace) -> str:
    from wsnodule_core.errors import ModelConfigError

    if args.out and args.out_option and args.out != args.out_option:
        raise ModelConfigError(f"two run folders given ({args.out} and --out {args.out_option}); give one.")
    out = args.out_option or args.out
    if not out:
        raise ModelConfigError("no run folder: give --out RUN_DIR (e.g. `wsnodule train DATA --out "
                               "runs/nam1`).")
    return out


def _check_data(path: str) -> None:
    from pathlib import Path

    from wsnodule_core.errors import InvalidDatasetError

    if not Path(path).exists():
        raise InvalidDatasetError(f"{path}: no such data set folder; build one with "
                                  "`wsnodule data phantom ...`.")


#: Options that only some methods take, and those methods.
_ONLY_FOR = {"epoch_size": ("nam", "unet", "flow-predictor"), "nam3d_width": ("nam3d",),
             "nam3d_norm": ("nam3d",), "nam3d_optimizer": ("nam3d",), "weight_decay": ("nam3d", "flow-predictor"),
             "positives_per_nodule": ("nam3d",), "negatives_per_case": ("nam3d", "nam"),
             **dict.fromkeys(("architecture", "channels", "norm", "dropout", "slab", "patch_spacing", "z_smooth"),
                             ("flow-predictor",)),
             "pretrained": ("flow-predictor", "pw4medseg"),
             "nodule_free_confidence": ("pw4medseg",), "val_every": ("pw4medseg",),
             "balance_sources": ("pw4medseg",)}


def _check_method_options(args: argparse.Namespace) -> None:
    from wsnodule_core.errors import ModelConfigError

    wrong = [name for name, methods in _ONLY_FOR.items()
             if getattr(args, name, None) is not None and args.method not in methods]
    if wrong:
        flags = ", ".join("--" + name.replace("_", "-") for name in wrong)
        raise ModelConfigError(f"{flags}: not options of --method {args.method}; drop them.")


#: The grid options a resumed run must keep: flag, argument, the saved configs' key.
_FIXED_ON_RESUME = (("--image-size", "image_size", ("image_size", "input_size")),
                    ("--pixel-spacing", "pixel_spacing", ("pixel_spacing_mm",)))


def _saved_value(config: dict, keys: tuple[str, ...]):
    for key, value in config.items():
        if key in keys:
            return value
        if isinstance(value, dict) and (found := _saved_value(value, keys)) is not None:
            return found
    return None


def _check_resume_matches(args: argparse.Namespace) -> None:
    """With --resume, refuse an --image-size or --pixel-spacing other than the run's own."""
    from pathlib import Path

    from wsnodule_core.errors import ModelConfigError
    from wsnodule_core.training.checkpoint import LAST, load_checkpoint

    if not (Path(args.out) / LAST).exists():
        return  # the trainer says there is nothing to resume
    saved = load_checkpoint(Path(args.out) / LAST, mmap=True).train_config
    for flag, name, keys in _FIXED_ON_RESUME:
        given, before = getattr(args, name, None), _saved_value(saved, keys)
        if given is not None and (before is None or float(given) != float(before)):
            raise ModelConfigError(
                f"{args.out} was trained with {flag} {before if before is not None else '(not set)'}, not "
                f"{given}; a resumed run keeps its own: drop {flag}, or start a new run with another --out "
                "(or --overwrite).")


def run(args: argparse.Namespace) -> int:
    from wsnodule_core.io.writers import check_writable_folder

    args.out = _out(args)
    _check_data(args.data)
    _check_method_options(args)
    if args.method == "flow-predictor":
        from wsnodule_core.cli.train_flow_predictor import check_predictor_options

        check_predictor_options(args)
    check_writable_folder(args.out, "--out")
    if args.resume:
        _check_resume_matches(args)
    if args.method == "nam":
        from wsnodule_core.cli.train_nam import run_train

        return run_train(args)
    if args.method == "flow-prior":
        from wsnodule_core.cli.train_flow_prior import run_train_prior

        return run_train_prior(args)
    if args.method == "flow-predictor":
        from wsnodule_core.cli.train_flow_predictor import run_train_predictor

        return run_train_predictor(args)
    if args.method == "pw4medseg":
        from wsnodule_core.cli.train_pw4medseg import run_train_pw

        return run_train_pw(args)
    if args.method == "nam3d":
        return run_nam3d(args)
    return run_unet(args)


def nam3d_config_from_args(args: argparse.Namespace):
    """The :class:`Train3DConfig` of the options given (``--pixel-spacing`` = isotropic patch spacing)."""
    from wsnodule_core.errors import ModelConfigError
    from wsnodule_core.nam.patches3d import Train3DConfig

    if args.width is not None or args.vgg16_weights is not None:
        raise ModelConfigError("--width and --vgg16-weights are 2D NAM options; use --nam3d-width with "
                               "--method nam3d.")
    values = {"augment": not args.no_augment, "amp": not args.no_amp}
    for arg, name in (("n_gap", "n_gap"), ("patch_size", "patch_size"), ("batch_size", "batch_size"),
                      ("epochs", "epochs"), ("max_steps_per_epoch", "max_steps_per_epoch"), ("seed", "seed"),
                      ("positives_per_nodule", "positives_per_nodule"),
                      ("negatives_per_case", "negatives_per_case"), ("pixel_spacing", "spacing_mm"),
                      ("lr", "lr"), ("lr_decay", "lr_decay"), ("weight_decay", "weight_decay"),
                      ("nam3d_width", "width"), ("nam3d_norm", "norm"), ("nam3d_optimizer", "optimizer"),
                      ("device", "device")):
        if getattr(args, arg, None) is not None:
            values[name] = getattr(args, arg)
    return Train3DConfig(**values)


def run_nam3d(args: argparse.Namespace) -> int:
    """Train the 3D NAM classifier; with --resume the run's own settings."""
    from wsnodule_core.nam.patches3d import train_classifier_3d

    config = None if args.resume else nam3d_config_from_args(args)
    callbacks, log = training_hooks("training 3D NAM", not args.quiet)
    result = train_classifier_3d(args.data, args.out, config, callbacks, resume=args.resume,
                                 overwrite=args.overwrite, log=log)
    print_run(result, "validation accuracy")
    return 0


def unet_config_from_args(args: argparse.Namespace):
    """The :class:`UNetTrainConfig` of the shared options (``--image-size`` = crop side, ...)."""
    from wsnodule_core.baselines.unet import UNetConfig, UNetTrainConfig
    from wsnodule_core.errors import ModelConfigError

    if args.n_gap is not None or args.vgg16_weights is not None:
        raise ModelConfigError("--n-gap and --vgg16-weights are NAM options; drop them with --method unet.")
    preset = args.unet_preset or ("compact" if args.width == "narrow" else "paper")
    model_values = {"pixel_spacing_mm": args.pixel_spacing}
    if args.image_size is not None:
        model_values["input_size"] = args.image_size
    model = (UNetConfig.compact if preset == "compact" else UNetConfig.paper)(**model_values)
    values = {"model": model, "loss": args.unet_loss, "augment": not args.no_augment,
              "amp": not args.no_amp, "deterministic": args.deterministic}
    for name in ("lr", "lr_decay", "batch_size", "epochs", "max_steps_per_epoch", "epoch_size", "seed", "device"):
        if getattr(args, name) is not None:
            values[name] = getattr(args, name)
    if args.min_nodule_area is not None:
        values["min_nodule_area_mm2"] = args.min_nodule_area
    return UNetTrainConfig(**values)


def run_unet(args: argparse.Namespace) -> int:
    from wsnodule_core.baselines.unet import train_unet

    config = _resumed_unet_config(args) if args.resume else None
    config = config or unet_config_from_args(args)
    callbacks, log = training_hooks("training U-Net", not args.quiet)
    result = train_unet(args.data, args.out, config, callbacks, resume=args.resume, overwrite=args.overwrite,
                        log=log)
    print_run(result, "validation Dice")
    return 0


def _resumed_unet_config(args: argparse.Namespace):
    """With --resume: the run's own config, with the recipe options given now (e.g. more --epochs)."""
    from dataclasses import replace
    from pathlib import Path

    from wsnodule_core.baselines.unet import UNetTrainConfig
    from wsnodule_core.training.checkpoint import LAST, load_checkpoint

    if not (Path(args.out) / LAST).exists():
        return None  # train_unet says there is nothing to resume
    saved = UNetTrainConfig.from_dict(load_checkpoint(Path(args.out) / LAST).train_config)
    recipe = {n: getattr(args, n) for n in ("lr", "lr_decay", "batch_size", "epochs", "max_steps_per_epoch",
                                             "device") if getattr(args, n) is not None}
    return replace(saved, **recipe)
