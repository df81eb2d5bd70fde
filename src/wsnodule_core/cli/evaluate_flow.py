"""``wsnodule evaluate DATASET --predictor NAME=CKPT [--flow-prior PRIOR]``: the guidance method and the
attribution baselines, method by predictor, on the nodule patches of a data set split."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_flow_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "flow guidance (patch level): give --predictor, and --flow-prior for the guidance rows")
    group.add_argument("--predictor", action="append", default=None, metavar="[NAME=]CKPT",
                       help="a flow-predictor checkpoint (file or run folder), repeatable")
    group.add_argument("--flow-prior", type=Path, default=None, metavar="PRIOR",
                       help="a flow-prior checkpoint (wsnodule train --method flow-prior); without it only "
                            "the attribution baselines are scored")
    group.add_argument("--baselines", nargs="*", default=["cam", "gradcam", "gradcampp", "occlusion"],
                       choices=("cam", "gradcam", "gradcampp", "occlusion"), help="attribution baselines [all]")
    group.add_argument("--guidance", type=Path, default=None, metavar="JSON",
                       help="GuidanceConfig fields as JSON (e.g. the sweep's best); the flags below override it")
    group.add_argument("--t0", type=float, default=None, help="start time of the guided return path")
    group.add_argument("--n-steps", type=int, default=None, help="integration steps back from t0")
    group.add_argument("--guided-steps", type=int, default=None, help="guided steps K (the first K)")
    group.add_argument("--scale", type=float, default=None, help="guidance step size")
    group.add_argument("--rule", choices=("dps", "x0"), default=None, help="guidance rule")
    group.add_argument("--threshold-rule", default="fraction:0.5", metavar="KIND[:VALUE]",
                       help="how every map becomes a mask: fraction:F, otsu or top_percent:P [fraction:0.5]")
    group.add_argument("--floor", type=float, default=0.0,
                       help="flow only: differences below this (intensity units) are no evidence [0]")
    group.add_argument("--max-patches", type=int, default=None, help="the first N nodule patches only")
    group.add_argument("--batch-size", type=int, default=4, help="patches per batch [4]")


def threshold_rule(text: str):
    from wsnodule_core.flow.rule_search import parse_rule

    return parse_rule(text, "--threshold-rule")


def guidance_config(args: argparse.Namespace):
    import json

    from wsnodule_core.errors import ModelConfigError
    from wsnodule_core.flow.guidance import GuidanceConfig

    values = {}
    if args.guidance is not None:
        try:
            values = json.loads(Path(args.guidance).read_text())
        except (OSError, ValueError) as error:
            raise ModelConfigError(f"--guidance {args.guidance}: not a readable JSON object ({error}).") from error
    for name in ("t0", "n_steps", "guided_steps", "scale", "rule"):
        if getattr(args, name) is not None:
            values[name] = getattr(args, name)
    known = set(GuidanceConfig.__dataclass_fields__)
    unknown = sorted(set(values) - known)
    if unknown:
        raise ModelConfigError(f"--guidance: unknown field(s) {unknown}; known: {sorted(known)}.")
    if "clamp" in values and values["clamp"] is not None:
        values["clamp"] = tuple(values["clamp"])
    return GuidanceConfig(**values)


def run_flow_evaluation(args: argparse.Namespace, device, progress) -> int:
    from wsnodule_core.cli.arguments import parse_checkpoint
    from wsnodule_core.errors import ModelConfigError
    from wsnodule_core.flow.evaluate import FlowEvalConfig, evaluate_patches, write_flow_report
    from wsnodule_core.flow.patches import PatchConfig, patches_from_dataset
    from wsnodule_core.flow.predictors import load_predictor, trained_patch_config
    from wsnodule_core.flow.train_prior import load_prior

    predictors, patch_config = {}, None
    for text in args.predictor:
        name, path = parse_checkpoint(text)
        model, checkpoint = load_predictor(path, device)
        name = name or checkpoint.raw.get("model_config", {}).get("architecture", path.stem)
        if name in predictors:
            raise ModelConfigError(f"two predictors are named {name!r}; name them: --predictor NAME=CKPT.")
        config = trained_patch_config(checkpoint) or PatchConfig()
        if patch_config is not None and (config.size, config.spacing_mm) != (patch_config.size,
                                                                               patch_config.spacing_mm):
            raise ModelConfigError(f"predictor {name!r} was trained on {config.size}^3 patches at "
                                   f"{config.spacing_mm} mm, the first on {patch_config.size}^3 at "
                                   f"{patch_config.spacing_mm} mm; compare predictors of one patch protocol.")
        predictors[name], patch_config = model, config
    prior = None
    if args.flow_prior is not None:
        prior, prior_config = load_prior(args.flow_prior, device)
        if (prior_config.patch, prior_config.spacing_mm) != (patch_config.size, patch_config.spacing_mm):
            raise ModelConfigError(f"the prior was trained on {prior_config.patch}^3 patches at "
                                   f"{prior_config.spacing_mm} mm, the predictors on {patch_config.size}^3 at "
                                   f"{patch_config.spacing_mm} mm; train them on the same patch protocol.")
    split = None if args.split == "all" else args.split
    patches = patches_from_dataset(args.data, split, patch_config)
    config = FlowEvalConfig(guidance_config(args), tuple(args.baselines), threshold_rule(args.threshold_rule),
                            args.floor, args.batch_size, args.max_patches)
    evaluation = evaluate_patches(patches, predictors, prior, config, device=device, progress=progress)
    paths = write_flow_report(evaluation, args.out, overwrite=args.overwrite)
    print(paths["markdown"].read_text())
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0
