"""The guidance method against the attribution baselines, per nodule patch, method by predictor.

Every method turns a nodule patch into a map on the patch grid (the flow: ``|x - x_cf|``; the
baselines: CAM, Grad-CAM, Grad-CAM++, occlusion), every map becomes a mask by the same
:class:`~wsnodule_core.flow.attribution.ThresholdRule` inside the lungs, and each mask is scored
against the patch's nodule voxels: Dice and mean surface distance (mm). The table is the paper's:
mean Dice and median MSD for each method and predictor.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from wsnodule_core.errors import ModelConfigError, SegmentationCancelled
from wsnodule_core.flow.attribution import AttributionConfig, ThresholdRule, attribution_maps, mask_from_map
from wsnodule_core.flow.guidance import GuidanceConfig, difference_mask, guide
from wsnodule_core.flow.patches import PatchSet
from wsnodule_core.metrics import dice_3d, mean_surface_distance_mm

FLOW = "flow guidance"
BASELINES = {"cam": "CAM", "gradcam": "Grad-CAM", "gradcampp": "Grad-CAM++", "occlusion": "occlusion"}


@dataclass(frozen=True)
class FlowEvalConfig:
    """What is compared and how: the guidance settings, the baselines, one threshold rule for all."""

    guidance: GuidanceConfig = field(default_factory=GuidanceConfig)
    baselines: tuple[str, ...] = ("cam", "gradcam", "gradcampp", "occlusion")
    rule: ThresholdRule = field(default_factory=ThresholdRule)
    floor: float = 0.0             # flow only: |x - x_cf| below this is no evidence (intensity units)
    batch_size: int = 4
    max_patches: int | None = None  # the first N nodule patches (quick runs)
    examples: int = 4              # patches kept for the figure

    def __post_init__(self) -> None:
        unknown = [b for b in self.baselines if b not in BASELINES]
        if unknown:
            raise ModelConfigError(f"unknown baseline(s) {unknown}; choose from {sorted(BASELINES)}.")
        if self.batch_size < 1 or (self.max_patches is not None and self.max_patches < 1) or self.examples < 0:
            raise ModelConfigError("batch_size and max_patches must be >= 1 and examples >= 0, got "
                                   f"{self.batch_size}, {self.max_patches}, {self.examples}.")

    def to_dict(self) -> dict:
        return {"guidance": self.guidance.to_dict(), "baselines": list(self.baselines),
                "rule": asdict(self.rule), "floor": self.floor, "batch_size": self.batch_size,
                "max_patches": self.max_patches}


@dataclass(frozen=True, eq=False)
class FlowEvaluation:
    """Per-patch scores of every (method, predictor) pair, the summary rows and figure examples."""

    rows: list[dict]                                # method, predictor, n, dice mean/sd/median, msd median
    scores: dict[tuple[str, str], dict[str, list[float]]]  # (method, predictor) -> {"dice": [...], "msd": [...]}
    examples: dict[str, np.ndarray]                 # image, truth, lungs, and per predictor: counterfactual, maps
    config: FlowEvalConfig
    patches: dict


def _score(masks: np.ndarray, truth: np.ndarray, spacing: float) -> tuple[list[float], list[float]]:
    dice = [dice_3d(m, t) for m, t in zip(masks, truth)]
    msd = [mean_surface_distance_mm(m, t, (spacing,) * 3) if m.any() else math.inf for m, t in zip(masks, truth)]
    return dice, msd


def _summary(method: str, predictor: str, dice: Sequence[float], msd: Sequence[float]) -> dict:
    d = np.asarray(dice, float)
    m = np.asarray(msd, float)
    return {"method": method, "predictor": predictor, "n": int(d.size), "dice_mean": float(d.mean()),
            "dice_sd": float(d.std()), "dice_median": float(np.median(d)), "msd_median_mm": float(np.median(m)),
            "empty_masks": int(np.isinf(m).sum())}


def evaluate_patches(patches: PatchSet, predictors: Mapping[str, nn.Module], velocity_model: nn.Module | None,
                     config: FlowEvalConfig = FlowEvalConfig(), *, device: torch.device | str = "cpu",
                     progress: Callable[[int, int], None] | None = None,
                     cancel: Callable[[], bool] | None = None) -> FlowEvaluation:
    """Score flow guidance (when ``velocity_model`` is given) and the baselines on the nodule patches.

    ``patches`` in the prior's [0, 1] window (:mod:`wsnodule_core.flow.patches`); only its positive
    patches are used. ``predictors`` maps a name to a trained patch classifier. ``progress(done,
    total)`` counts (predictor, method) passes; ``cancel()`` is checked between batches.
    """
    if not predictors:
        raise ModelConfigError("no predictor given: the methods explain a trained patch classifier; train one "
                               "with wsnodule_core.flow.predictors.train_predictor.")
    positives = patches.subset(patches.labels == 1)
    if config.max_patches is not None:
        positives = positives.subset(np.arange(min(config.max_patches, len(positives))))
    if len(positives) == 0:
        raise ModelConfigError("the patch set holds no nodule patch; evaluate on a split with nodules.")
    device = torch.device(device)
    images = np.asarray(positives.images, np.float32)
    truth, lungs = positives.nodule_masks, np.asarray(positives.lungs, bool)
    spacing = float(positives.config.spacing_mm)
    methods = ([FLOW] if velocity_model is not None else []) + [BASELINES[b] for b in config.baselines]
    total, done = len(predictors) * len(methods), 0
    scores: dict[tuple[str, str], dict[str, list[float]]] = {}
    keep = min(config.examples, len(positives))
    examples = {"image": images[:keep], "truth": truth[:keep], "lungs": lungs[:keep]}

    def stopped() -> bool:
        return cancel is not None and bool(cancel())

    for name, predictor in predictors.items():
        predictor = predictor.to(device).eval()
        if velocity_model is not None:
            masks, counterfactuals = [], []
            for start in range(0, len(images), config.batch_size):
                if stopped():
                    raise SegmentationCancelled(f"evaluation cancelled at {name}, flow guidance, patch {start}.")
                x = torch.from_numpy(images[start:start + config.batch_size])[:, None].to(device)
                result = guide(velocity_model, predictor, x, config.guidance, keep_trajectory=False,
                               seeds=[config.guidance.seed + start + i for i in range(len(x))])
                masks.append(difference_mask(result.difference, lungs[start:start + len(x)], config.rule,
                                             floor=config.floor))
                counterfactuals.append(result.counterfactual[:, 0].numpy())
            masks_all = np.concatenate(masks)
            scores[(FLOW, name)] = dict(zip(("dice", "msd"), _score(masks_all, truth, spacing)))
            examples[f"{name}/counterfactual"] = np.concatenate(counterfactuals)[:keep]
            examples[f"{name}/{FLOW}"] = masks_all[:keep]
            done += 1
            if progress is not None:
                progress(done, total)
        for baseline in config.baselines:
            maps = attribution_maps(predictor, images, AttributionConfig(method=baseline), device=device,
                                    batch_size=config.batch_size, cancel=cancel)
            masks_all = mask_from_map(maps, lungs, config.rule)
            scores[(BASELINES[baseline], name)] = dict(zip(("dice", "msd"), _score(masks_all, truth, spacing)))
            examples[f"{name}/{BASELINES[baseline]}"] = masks_all[:keep]
            done += 1
            if progress is not None:
                progress(done, total)
    rows = [_summary(method, name, s["dice"], s["msd"]) for (method, name), s in scores.items()]
    return FlowEvaluation(rows, scores, examples, config, positives.describe())


def flow_table(evaluation: FlowEvaluation) -> str:
    """Markdown: a row per method, per predictor a column "Dice mean ± SD / median MSD (mm)"."""
    predictors = list(dict.fromkeys(r["predictor"] for r in evaluation.rows))
    methods = list(dict.fromkeys(r["method"] for r in evaluation.rows))
    by_key = {(r["method"], r["predictor"]): r for r in evaluation.rows}
    lines = ["| Method | " + " | ".join(f"{p}: Dice | {p}: median MSD (mm)" for p in predictors) + " |",
             "|---|" + "---:|---:|" * len(predictors)]
    for method in methods:
        cells = []
        for predictor in predictors:
            row = by_key.get((method, predictor))
            if row is None:
                cells += ["-", "-"]
                continue
            msd = "inf" if math.isinf(row["msd_median_mm"]) else f"{row['msd_median_mm']:.1f}"
            cells += [f"{row['dice_mean']:.3f} ± {row['dice_sd']:.3f}", msd]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_flow_report(evaluation: FlowEvaluation, out_dir: str | Path, *, overwrite: bool = False,
                      title: str = "Flow guidance against attribution baselines") -> dict[str, Path]:
    """``metrics.json``, ``report.md`` and ``counterfactuals.png`` in ``out_dir`` (never over earlier
    files unless ``overwrite``)."""
    from wsnodule_core.reports import to_json
    from wsnodule_core.io.writers import write_atomically

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "metrics.json", "markdown": out / "report.md", "figure": out / "counterfactuals.png"}
    if not overwrite:
        from wsnodule_core.errors import OutputExistsError

        taken = [str(p) for p in paths.values() if p.exists()]
        if taken:
            raise OutputExistsError(f"{', '.join(taken)} already exist; choose another folder or pass overwrite.")
    to_json({"rows": evaluation.rows, "config": evaluation.config.to_dict(), "patches": evaluation.patches,
             "per_patch": {f"{m} / {p}": s for (m, p), s in evaluation.scores.items()}},
            paths["json"], overwrite=True)
    n = evaluation.patches.get("n", 0)
    text = (f"# {title}\n\n{n} nodule patches of {evaluation.patches['config']['size']}^3 voxels at "
            f"{evaluation.patches['config']['spacing_mm']} mm; masks by the rule {asdict(evaluation.config.rule)} "
            f"inside the lungs; Dice and mean surface distance against every nodule voxel of the patch "
            f"(median MSD is inf when more than half of the masks are empty).\n\n{flow_table(evaluation)}\n")
    write_atomically(paths["markdown"], True, lambda tmp: tmp.write_text(text))
    _figure(evaluation, paths["figure"])
    return paths


def _figure(evaluation: FlowEvaluation, path: Path) -> None:
    from matplotlib.figure import Figure

    ex = evaluation.examples
    keys = [k for k in ex if "/" in k]
    n = len(ex["image"])
    if n == 0:
        return
    columns = ["image", "truth"] + keys
    fig = Figure(figsize=(1.6 * len(columns), 1.7 * n), dpi=110)
    axes = fig.subplots(n, len(columns), squeeze=False)
    for i in range(n):
        z = int(np.argmax(ex["truth"][i].sum(axis=(1, 2)))) if ex["truth"][i].any() else ex["image"][i].shape[0] // 2
        for j, key in enumerate(columns):
            ax = axes[i][j]
            ax.axis("off")
            if key.endswith("counterfactual"):
                ax.imshow(ex[key][i][z], cmap="gray", vmin=0.0, vmax=0.6)
            else:
                ax.imshow(ex["image"][i][z], cmap="gray", vmin=0.0, vmax=0.6)
                if key != "image":
                    overlay = np.ma.masked_where(~np.asarray(ex[key][i][z], bool), np.ones_like(ex["image"][i][z]))
                    ax.imshow(overlay, cmap="autumn", alpha=0.6, vmin=0, vmax=1)
            if i == 0:
                ax.set_title(key.replace("/", "\n"), fontsize=6)
    fig.savefig(path)
