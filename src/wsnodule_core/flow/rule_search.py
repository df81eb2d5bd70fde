"""The threshold search every map-based method gets on validation patches (flow guidance and baselines alike).

A method's maps (flow: ``|x - x_cf|``; CAM, Grad-CAM, Grad-CAM++, occlusion: their attribution maps)
become masks by a :class:`~wsnodule_core.flow.attribution.ThresholdRule` inside the lungs; which rule is
a choice made on validation patients. :func:`score_rules` tries every rule of a grid (and, for maps on
an absolute scale such as the flow's difference, a few floors below which a value is no evidence) and
ranks them by mean Dice against the patches' nodule masks, so each method is given the same search.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from wsnodule_core.errors import ModelConfigError
from wsnodule_core.flow.attribution import ThresholdRule, keep_central, mask_from_map
from wsnodule_core.metrics import dice_3d

#: The rules tried by default: fractions of the maximum, Otsu, and the top share of lung voxels.
DEFAULT_RULES: tuple[ThresholdRule, ...] = (
    *(ThresholdRule("fraction", v) for v in (0.2, 0.3, 0.4, 0.5, 0.6, 0.7)),
    ThresholdRule("otsu"),
    *(ThresholdRule("top_percent", v) for v in (0.5, 1.0, 2.0, 4.0, 8.0)),
)


@dataclass(frozen=True)
class RuleScore:
    """One rule (and floor) on a set of patches: mean Dice, the share of patches whose mask touches the
    nodule (``hit_rate``), the share of empty masks and the mean mask size in voxels."""

    rule: ThresholdRule
    floor: float
    central: bool
    dice_mean: float
    dice_median: float
    hit_rate: float
    empty_rate: float
    mask_voxels: float
    n: int

    def to_dict(self) -> dict:
        return {"rule": rule_text(self.rule), "floor": self.floor, "central": self.central,
                "dice_mean": self.dice_mean,
                "dice_median": self.dice_median, "hit_rate": self.hit_rate, "empty_rate": self.empty_rate,
                "mask_voxels": self.mask_voxels, "n": self.n}


def rule_text(rule: ThresholdRule) -> str:
    """``"otsu"`` or ``"KIND:VALUE"`` (what ``--threshold-rule`` takes)."""
    return rule.kind if rule.kind == "otsu" else f"{rule.kind}:{rule.value:g}"


def parse_rule(text: str, what: str = "threshold rule") -> ThresholdRule:
    """The inverse of :func:`rule_text`; ``what`` names the input in the error (e.g. a command-line flag)."""
    kind, _, value = str(text).partition(":")
    try:
        return ThresholdRule(kind, float(value)) if value else ThresholdRule(kind)
    except ValueError as error:
        raise ModelConfigError(f"{what} {text!r}: expected KIND or KIND:VALUE, e.g. fraction:0.5.") from error


def masks_for_rule(maps: np.ndarray, lungs: np.ndarray | None, rule: ThresholdRule, floor: float = 0.0,
                   central: bool = False) -> np.ndarray:
    """Masks ``(n, D, H, W)`` of ``maps`` by ``rule`` inside ``lungs``, values below ``floor`` set to 0 first;
    with ``central`` only each mask's piece at (or nearest to) the patch centre (:func:`keep_central`)."""
    values = np.asarray(maps, np.float32)
    if floor > 0:
        values = np.where(values >= floor, values, 0.0).astype(np.float32)
    masks = mask_from_map(values, lungs, rule)
    return keep_central(masks) if central else masks


def score_masks(masks: np.ndarray, truth: np.ndarray) -> dict[str, np.ndarray]:
    """Per patch: Dice, whether the mask touches the nodule, whether it is empty, its size."""
    masks, truth = np.asarray(masks, bool), np.asarray(truth, bool)
    flat_m, flat_t = masks.reshape(len(masks), -1), truth.reshape(len(truth), -1)
    return {"dice": np.array([dice_3d(m, t) for m, t in zip(masks, truth)], float),
            "hit": (flat_m & flat_t).any(axis=1), "empty": ~flat_m.any(axis=1),
            "voxels": flat_m.sum(axis=1).astype(float)}


def score_rules(maps: np.ndarray, truth: np.ndarray, lungs: np.ndarray | None = None,
                rules: Sequence[ThresholdRule] = DEFAULT_RULES, floors: Sequence[float] = (0.0,),
                centrals: Sequence[bool] = (False,)) -> list[RuleScore]:
    """Every ``(rule, floor, central)`` on the patches, best first (mean Dice, then fewer empty masks, then
    order given).

    Parameters
    ----------
    maps, truth
        ``(n, D, H, W)`` maps and the patches' nodule masks.
    lungs
        ``(n, D, H, W)`` lung crops (None: the whole patch counts).
    rules, floors, centrals
        The grid; a floor is in the maps' own units (use ``(0.0,)`` for maps scaled per patch); ``central``
        True keeps only each mask's piece at the patch centre (patches centred on a candidate).
    """
    maps = np.asarray(maps, np.float32)
    truth = np.asarray(truth, bool)
    if maps.ndim != 4 or maps.shape != truth.shape or not len(maps):
        raise ModelConfigError(f"maps and truth must be non-empty (n, D, H, W) arrays of one shape; got "
                               f"{maps.shape} and {truth.shape}.")
    if not rules or not floors or not centrals:
        raise ModelConfigError("score_rules needs at least one rule, one floor and one central setting.")
    scored = []
    for central in centrals:
        for floor in floors:
            for rule in rules:
                s = score_masks(masks_for_rule(maps, lungs, rule, float(floor), bool(central)), truth)
                scored.append(RuleScore(rule, float(floor), bool(central), float(s["dice"].mean()),
                                        float(np.median(s["dice"])), float(s["hit"].mean()),
                                        float(s["empty"].mean()), float(s["voxels"].mean()), len(maps)))
    order = sorted(range(len(scored)), key=lambda i: (-scored[i].dice_mean, scored[i].empty_rate, i))
    return [scored[i] for i in order]
