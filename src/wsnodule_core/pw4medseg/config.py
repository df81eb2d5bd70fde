"""PW4MedSeg run settings (:class:`PwTrainConfig`, saved in every checkpoint) and loading a trained model."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch

from wsnodule_core.errors import ModelConfigError
from wsnodule_core.pw4medseg.loss import LossConfig
from wsnodule_core.pw4medseg.model import ProbabilisticUNETR, PTransformerConfig
from wsnodule_core.image.window import NAM3D_WINDOW
from wsnodule_core.pw4medseg.preprocess import INTENSITY_MODES, normalise_intensity
from wsnodule_core.training.checkpoint import load_model
from wsnodule_core.training.result import RunResult, config_from_dict

KIND = "pw4medseg"
ANNOTATION_KINDS = ("points", "boxes", "slices", "full")
BOX_KINDS = ("tight", "loose")
CONFIDENCE_SOURCES = ("pseudo_label", "loss")


@dataclass(frozen=True)
class AnnotationSpec:
    """Which sparse annotation the targets are made from (simulated from the ground truth).

    ``kind``: ``"points"`` (``n_points`` per nodule, PW4MedSeg's farthest-point sampling, plus
    ``n_background_points``), ``"boxes"`` (``box`` ``"tight"`` or ``"loose"``: faces moved out by
    ``box_margin_mm`` +- ``box_jitter_mm``), ``"slices"`` (a ``slice_fraction`` of each nodule's axial
    slices marked, plus ``n_negative_slices`` nodule-free lung slices) or ``"full"`` (the ground-truth
    mask, confidence 1). Strings parse as ``"points:20"``, ``"boxes:loose"``, ``"slices:0.5"``, ``"full"``.
    """

    kind: str = "points"
    n_points: int = 200
    n_background_points: int = 0
    box: str = "tight"
    box_margin_mm: float = 3.0
    box_jitter_mm: float = 2.0
    slice_fraction: float = 0.5
    n_negative_slices: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ANNOTATION_KINDS:
            raise ModelConfigError(f"annotation kind must be one of {ANNOTATION_KINDS}, got {self.kind!r}.")
        if self.box not in BOX_KINDS:
            raise ModelConfigError(f"box must be one of {BOX_KINDS}, got {self.box!r}.")
        if int(self.n_points) < 1 or int(self.n_background_points) < 0 or int(self.n_negative_slices) < -1:
            raise ModelConfigError("n_points must be >= 1, n_background_points >= 0 and n_negative_slices "
                                   f">= -1 (all), got {self.n_points}, {self.n_background_points}, "
                                   f"{self.n_negative_slices}.")
        if not 0 < self.slice_fraction <= 1 or self.box_margin_mm < 0 or self.box_jitter_mm < 0:
            raise ModelConfigError(f"slice_fraction must lie in (0, 1] and box margins be >= 0, got "
                                   f"{self.slice_fraction}, {self.box_margin_mm}, {self.box_jitter_mm}.")

    @classmethod
    def parse(cls, value: "AnnotationSpec | str | dict") -> "AnnotationSpec":
        if isinstance(value, AnnotationSpec):
            return value
        if isinstance(value, dict):
            return config_from_dict(cls, value)
        kind, _, arg = str(value).strip().lower().partition(":")
        try:
            if kind == "points":
                return cls("points", n_points=int(arg)) if arg else cls("points")
            if kind == "boxes":
                return cls("boxes", box=arg or "tight")
            if kind == "slices":
                return cls("slices", slice_fraction=float(arg)) if arg else cls("slices")
        except ValueError as error:
            raise ModelConfigError(f"annotation {value!r}: cannot read {arg!r} ({error}); write e.g. "
                                   "'points:200', 'boxes:loose', 'slices:0.5' or 'full'.") from error
        return cls(kind)

    def describe(self) -> str:
        return {"points": f"points:{self.n_points}", "boxes": f"boxes:{self.box}",
                "slices": f"slices:{self.slice_fraction:g}", "full": "full"}[self.kind]


def _triple(value, name: str, kind=float) -> tuple | None:
    if value is None:
        return None
    values = (value,) * 3 if np.isscalar(value) else tuple(value)
    if len(values) != 3:
        raise ModelConfigError(f"{name} must be one number or three (z, y, x), got {value!r}.")
    return tuple(kind(v) for v in values)


@dataclass(frozen=True)
class PwTrainConfig:
    """Everything that defines a PW4MedSeg run (saved in every checkpoint); defaults: CPU-sized.

    ``model`` is a :class:`PTransformerConfig`, its dict, or a preset name (``"compact"``, ``"paper"``);
    ``crop_size`` (default the model's ``img_size``) replaces the model's ``img_size``, so the two
    always agree. ``spacing_mm`` None trains on each case's own grid. ``pseudo_label`` holds
    :class:`~wsnodule_core.pw4medseg.pseudo_labels.PseudoLabelConfig` overrides; ``confidence``
    ``"pseudo_label"`` weights voxels by the pseudo-label's confidence map, ``"loss"`` lets the loss use
    p / 1 - p (the paper's code). ``nodule_free_confidence`` (None: off) is the confidence of every voxel
    of a case known to hold no nodule (an image-level label: no nodule record and ``negatives_ok``), whose
    target is 0: without it such a case has no annotation and its background only ``far_confidence``.
    ``steps_per_epoch`` optimiser steps make an epoch; validation runs every ``val_every`` epochs and after
    the last. ``init_from`` (a PW4MedSeg checkpoint of the same network) starts from its weights instead of
    a fresh network: fine-tuning, e.g. on whole scans after crops. ``balance_sources`` draws each kind
    of source equally often (a case's ``source`` before any ``:``: e.g. the VOI set's nodule crops and
    nodule-free crops and a few whole hybrid scans merged into one set), else every case equally often. Use :meth:`paper` for the paper's recipe.
    """

    model: PTransformerConfig | dict | str = "compact"
    crop_size: tuple[int, int, int] | int | None = None
    spacing_mm: tuple[float, float, float] | float | None = (2.0, 2.0, 2.0)
    intensity: str = "ct"
    hu_window: tuple[float, float] = NAM3D_WINDOW
    percentiles: tuple[float, float] = (0.5, 99.5)
    annotation: AnnotationSpec | str | dict = "points"
    pseudo_label: dict = field(default_factory=dict)
    confidence: str = "pseudo_label"
    nodule_free_confidence: float | None = None
    loss: LossConfig | dict = field(default_factory=LossConfig)
    foreground_probability: float = 0.33
    background_in_lungs: float = 0.8
    flips: bool = True
    lr: float = 5e-4
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    epochs: int = 50
    steps_per_epoch: int = 50
    batch_size: int = 2
    val_every: int = 1
    val_passes: int = 2
    val_overlap: float = 0.25
    threshold: float = 0.5
    tune_threshold: bool = True
    seed: int = 0
    amp: bool = True
    device: str = "auto"
    deterministic: bool = False
    init_from: str | None = None
    balance_sources: bool = False

    def __post_init__(self) -> None:
        model = self.model
        if isinstance(model, str):
            if model not in ("compact", "paper"):
                raise ModelConfigError(f"model preset must be 'compact' or 'paper', got {model!r}.")
            model = PTransformerConfig.compact() if model == "compact" else PTransformerConfig.paper()
        elif isinstance(model, dict):
            model = PTransformerConfig.from_dict(model)
        crop = _triple(self.crop_size, "crop_size", int)
        if crop is not None and crop != model.img_size:
            model = replace(model, img_size=crop)
        object.__setattr__(self, "model", model)
        object.__setattr__(self, "crop_size", model.img_size)
        spacing = _triple(self.spacing_mm, "spacing_mm")
        if spacing is not None and not all(np.isfinite(s) and s > 0 for s in spacing):
            raise ModelConfigError(f"spacing_mm must be positive millimetres or None, got {self.spacing_mm}.")
        object.__setattr__(self, "spacing_mm", spacing)
        object.__setattr__(self, "annotation", AnnotationSpec.parse(self.annotation))
        if isinstance(self.loss, dict):
            object.__setattr__(self, "loss", LossConfig.from_dict(self.loss))
        object.__setattr__(self, "hu_window", tuple(float(v) for v in self.hu_window))
        object.__setattr__(self, "percentiles", tuple(float(v) for v in self.percentiles))
        object.__setattr__(self, "pseudo_label", dict(self.pseudo_label))
        if self.intensity not in INTENSITY_MODES:
            raise ModelConfigError(f"intensity must be one of {INTENSITY_MODES}, got {self.intensity!r}.")
        lo, hi = self.percentiles
        if not self.hu_window[0] < self.hu_window[1] or not 0 <= lo < hi <= 100:
            raise ModelConfigError(f"hu_window and percentiles must be increasing pairs, got "
                                   f"{self.hu_window}, {self.percentiles}.")
        if self.confidence not in CONFIDENCE_SOURCES:
            raise ModelConfigError(f"confidence must be one of {CONFIDENCE_SOURCES}, got "
                                   f"{self.confidence!r}.")
        for name in ("epochs", "steps_per_epoch", "batch_size", "val_every", "val_passes"):
            if int(getattr(self, name)) < 1:
                raise ModelConfigError(f"{name} must be at least 1, got {getattr(self, name)!r}.")
        if int(self.warmup_steps) < 0:
            raise ModelConfigError(f"warmup_steps must be >= 0, got {self.warmup_steps}.")
        if not self.lr > 0 or not self.weight_decay >= 0:
            raise ModelConfigError(f"lr must be positive and weight_decay >= 0, got {self.lr}, "
                                   f"{self.weight_decay}.")
        if not (0 <= self.foreground_probability <= 1 and 0 <= self.background_in_lungs <= 1
                and 0 <= self.val_overlap < 1):
            raise ModelConfigError(f"foreground_probability and background_in_lungs must lie in [0, 1] and "
                                   f"val_overlap in [0, 1), got {self.foreground_probability}, "
                                   f"{self.background_in_lungs}, {self.val_overlap}.")
        if self.nodule_free_confidence is not None and not 0 <= self.nodule_free_confidence <= 1:
            raise ModelConfigError(f"nodule_free_confidence must lie in [0, 1] or be None, got "
                                   f"{self.nodule_free_confidence}.")
        if not 0 < self.threshold < 1:
            raise ModelConfigError(f"threshold must lie in (0, 1), got {self.threshold}.")
        if self.annotation.kind != "full":
            self.pseudo_label_config()  # invalid overrides fail now, not after loading the data

    @classmethod
    def paper(cls, **overrides) -> "PwTrainConfig":
        """The authors' recipe (their ``main.py``): ViT-B UNETR (instance norm), 96^3 crops at 1 mm, AdamW
        1e-4, 4 crops per step (1 volume x 4 samples), half of them on the foreground, 3500 epochs of
        their 10 volumes = 35 000 steps, 50 warm-up epochs = 500 steps, sliding-window overlap 0.5; K = 6
        passes for validation."""
        values = dict(model="paper", spacing_mm=(1.0, 1.0, 1.0), lr=1e-4, warmup_steps=500, epochs=350,
                      steps_per_epoch=100, batch_size=4, val_passes=6, val_overlap=0.5, val_every=10,
                      foreground_probability=0.5, background_in_lungs=0.5)
        return cls(**{**values, **overrides})

    def pseudo_label_config(self):
        from wsnodule_core.pw4medseg.pseudo_labels import PseudoLabelConfig

        try:
            return PseudoLabelConfig(**self.pseudo_label)
        except TypeError as error:
            raise ModelConfigError(f"pseudo_label overrides {sorted(self.pseudo_label)}: {error}; use "
                                   "PseudoLabelConfig's field names.") from error

    def normalise(self, array: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        return normalise_intensity(array, self.intensity, window=self.hu_window, percentiles=self.percentiles,
                                   mask=mask)

    def to_dict(self) -> dict:
        return {**asdict(self), "model": self.model.to_dict(), "loss": self.loss.to_dict(),
                "annotation": asdict(self.annotation), "crop_size": list(self.crop_size),
                "spacing_mm": list(self.spacing_mm) if self.spacing_mm is not None else None,
                "hu_window": list(self.hu_window), "percentiles": list(self.percentiles)}

    @classmethod
    def from_dict(cls, data: dict) -> "PwTrainConfig":
        return config_from_dict(cls, data)


PwTrainResult = RunResult  # the model is a ProbabilisticUNETR


def load_pw4medseg(path: str | os.PathLike, device: str | torch.device | None = None
                   ) -> tuple[ProbabilisticUNETR, PwTrainConfig]:
    """The probabilistic UNETR of a checkpoint (``best.pt``/``last.pt`` or its run folder), in eval mode
    on ``device`` (default the CPU), and the run's :class:`PwTrainConfig` (grid, normalisation, crop);
    its ``threshold`` is the one chosen on the validation cases when the checkpoint recorded one."""
    model, checkpoint = load_model(path, KIND, lambda c: ProbabilisticUNETR(PTransformerConfig.from_dict(
        c.model_config)), "a PW4MedSeg model; give a checkpoint written by the PW4MedSeg training", device)
    return model, checkpoint_config(checkpoint)


def checkpoint_config(checkpoint) -> PwTrainConfig:
    """The :class:`PwTrainConfig` of a loaded PW4MedSeg checkpoint, its ``threshold`` the one the run
    chose on its validation cases when it recorded one."""
    config = PwTrainConfig.from_dict(checkpoint.train_config)
    chosen = checkpoint.raw.get("probability_threshold")
    return config if chosen is None else replace(config, threshold=float(chosen))
