"""Training the PW4MedSeg probabilistic UNETR on targets made from simulated sparse annotations.

Per training case the target is built once, on the case's own grid: sparse annotations are simulated
from the ground truth (:mod:`wsnodule_core.pw4medseg.annotations`: points, tight or loose boxes,
marked slices) and turned into a probability and a confidence map
(:func:`wsnodule_core.pw4medseg.pseudo_labels.pseudo_label`); ``"full"`` uses the ground-truth mask
with confidence 1 (the fully supervised reference with the same network). Image, target, confidence,
ground truth and lungs are then resampled to ``spacing_mm`` (the paper: 1 mm isotropic) and the image
normalised (:func:`normalise_intensity`).

A step draws ``batch_size`` crops of ``crop_size``: each from a random case; with probability
``foreground_probability`` it holds a random voxel of the pseudo-label's foreground (probability > 0.5)
at a random place (not in the outer eighth of any side: a crop always centred on the nodule teaches
the network that nodules sit in the middle of its window, and sliding-window inference then misses
them), else it is centred with probability ``background_in_lungs`` on a random lung voxel (every voxel
when the case has no lung mask) and otherwise on any voxel; then randomly flipped along each axis.
Loss: :class:`~wsnodule_core.pw4medseg.loss.ProbabilityInformedLoss` with the model's per-layer KLs.
AdamW (``lr``: 5e-4 on the CPU, the paper's 1e-4 in :meth:`PwTrainConfig.paper`; weight decay 1e-4),
linear warm-up then cosine decay per step, AMP on CUDA. Validation: Dice of the mean-probability
prediction (``val_passes`` stochastic sliding-window passes) thresholded at ``threshold`` and, with
``tune_threshold``, at each of :data:`VAL_THRESHOLDS` (the best one is recorded in the checkpoint and
used at inference), against the ground truth on the training grid. Batches are a function of
``(seed, epoch, step)`` only, so ``last.pt`` (optimiser, scheduler, scaler and RNG states) resumes to
bit-identical weights.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from scipy import ndimage

from wsnodule_core.errors import CheckpointError, ModelConfigError, TrainingDataError
from wsnodule_core.io.volume import Volume
from wsnodule_core.pw4medseg.loss import LossConfig, ProbabilityInformedLoss
from wsnodule_core.pw4medseg.model import ProbabilisticUNETR, PTransformerConfig
from wsnodule_core.training.callbacks import TrainCallbacks, as_callbacks
from wsnodule_core.training.checkpoint import (LAST, capture_rng_state, load_checkpoint, load_model,
                                               prepare_run_dir, restore_training_state, save_checkpoint)
from wsnodule_core.training.device import amp_enabled, autocast, choose_device, deterministic, grad_scaler
from wsnodule_core.training.loop import EpochLoop, RunState, optimizer_step
from wsnodule_core.training.result import RunResult, config_from_dict

KIND = "pw4medseg"
_PARTS = ("total", "classification", "dice", "kl")  # the loss parts summed over an epoch's steps
_NAMES = {"total": "loss", "classification": "classification", "dice": "dice_loss", "kl": "kl"}
INTENSITY_MODES = ("ct", "zscore", "percentile")
ANNOTATION_KINDS = ("points", "boxes", "slices", "full")
BOX_KINDS = ("tight", "loose")
CONFIDENCE_SOURCES = ("pseudo_label", "loss")
#: Probability thresholds tried on the validation cases when ``tune_threshold`` is on.
VAL_THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)


# --- intensity and grid ----------------------------------------------------------


def normalise_intensity(array: np.ndarray, mode: str = "ct", *,
                        window: tuple[float, float] = (-1000.0, 400.0),
                        percentiles: tuple[float, float] = (0.5, 99.5),
                        mask: np.ndarray | None = None) -> np.ndarray:
    """Network input (float32) from raw intensities.

    ``"ct"``: Hounsfield units, ``window`` (lo, hi) mapped linearly to [0, 1] and clipped;
    ``"zscore"``: ``(a - mean) / std`` (clipped to +-5); ``"percentile"``: the ``percentiles`` (lo, hi)
    mapped to [0, 1] and clipped. The last two assume nothing about the units (MRI-like input: any
    positive scale and offset give the same result); their statistics come from ``mask`` when given.
    """
    a = np.asarray(array, np.float32)
    if mode == "ct":
        lo, hi = (float(v) for v in window)
        return np.clip((a - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)
    values = a[np.asarray(mask, bool)] if mask is not None and np.any(mask) else a.reshape(-1)
    if mode == "zscore":
        mean, std = float(values.mean(dtype=np.float64)), float(values.std(dtype=np.float64))
        return np.clip((a - mean) / (std if std > 0 else 1.0), -5.0, 5.0).astype(np.float32)
    if mode == "percentile":
        lo, hi = (float(v) for v in np.percentile(values, percentiles))
        return np.clip((a - lo) / (hi - lo if hi > lo else 1.0), 0.0, 1.0).astype(np.float32)
    raise ModelConfigError(f"intensity normalisation must be one of {INTENSITY_MODES}, got {mode!r}.")


def resampled_shape(shape: Sequence[int], spacing: Sequence[float], new_spacing: Sequence[float]
                    ) -> tuple[int, int, int]:
    """Grid size covering the same extent at ``new_spacing`` (at least one voxel per axis)."""
    return tuple(max(1, int(round(n * s / t))) for n, s, t in zip(shape, spacing, new_spacing))


def resample_array(array: np.ndarray, spacing: Sequence[float], new_spacing: Sequence[float], *,
                   order: int = 1, shape: Sequence[int] | None = None) -> np.ndarray:
    """``array`` (z, y, x) at ``spacing`` resampled to ``new_spacing`` over the same extent.

    Voxel footprints keep their outer edge: new index ``j`` sits at old index
    ``j r + (r - 1) / 2`` with ``r = new / old`` (edges extended). ``shape`` forces the output size
    (used to go back to an input grid exactly).
    """
    ratio = np.asarray(new_spacing, float) / np.asarray(spacing, float)
    out_shape = tuple(shape) if shape is not None else resampled_shape(array.shape, spacing, new_spacing)
    if out_shape == tuple(array.shape) and np.allclose(ratio, 1.0):
        return np.asarray(array)
    source = np.asarray(array, np.float32) if order > 0 else np.asarray(array)
    return ndimage.affine_transform(source, ratio, offset=(ratio - 1.0) / 2.0, output_shape=out_shape,
                                    order=order, mode="nearest", prefilter=False)


def model_grid(volume: Volume, spacing_mm: tuple[float, float, float] | None) -> Volume:
    """``volume`` (float32, linear) on the training grid: same extent and direction at ``spacing_mm``."""
    if spacing_mm is None or np.allclose(spacing_mm, volume.spacing, atol=1e-6):
        return volume
    array = resample_array(volume.array, volume.spacing, spacing_mm)
    shift_zyx = 0.5 * (np.asarray(spacing_mm) - np.asarray(volume.spacing))
    origin = np.asarray(volume.origin) + volume.direction @ shift_zyx[::-1]
    return Volume(array, tuple(spacing_mm), tuple(origin), volume.direction.copy(), volume.metadata)


# --- configuration ---------------------------------------------------------------


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
    p / 1 - p (the paper's code). ``steps_per_epoch`` optimiser steps make an epoch; validation runs
    every ``val_every`` epochs and after the last. Use :meth:`paper` for the paper's recipe.
    """

    model: PTransformerConfig | dict | str = "compact"
    crop_size: tuple[int, int, int] | int | None = None
    spacing_mm: tuple[float, float, float] | float | None = (2.0, 2.0, 2.0)
    intensity: str = "ct"
    hu_window: tuple[float, float] = (-1000.0, 400.0)
    percentiles: tuple[float, float] = (0.5, 99.5)
    annotation: AnnotationSpec | str | dict = "points"
    pseudo_label: dict = field(default_factory=dict)
    confidence: str = "pseudo_label"
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


# --- targets ---------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class TrainingCase:
    """One case ready for cropping, on the training grid: normalised ``image``, soft ``target`` and
    ``confidence`` (float16 to halve their memory; None: the loss's own p / 1 - p), ``truth`` (ground
    truth, bool), flat indices of the ``foreground`` (target > 0.5) and of the ``region`` (lungs) where
    background crops are centred, and the value the image is padded with."""

    case_id: str
    image: np.ndarray
    target: np.ndarray
    confidence: np.ndarray | None
    truth: np.ndarray
    foreground: np.ndarray
    region: np.ndarray
    fill: float


def simulate_annotations(case, spec: AnnotationSpec, seed: int):
    """The sparse annotations of ``spec`` simulated from ``case``'s ground truth (its own grid)."""
    from wsnodule_core.pw4medseg import annotations as ann

    mask = case.mask
    if spec.kind == "points":
        return ann.simulate_points(mask, spec.n_points, seed=seed, n_background=spec.n_background_points)
    if spec.kind == "boxes":
        loose = spec.box == "loose"
        return ann.simulate_boxes(mask, margin=spec.box_margin_mm if loose else 0.0,
                                  jitter=spec.box_jitter_mm if loose else 0.0, seed=seed)
    if spec.kind == "slices":
        lungs = np.asarray(case.lungs, bool)
        candidates = lungs.any(axis=(1, 2)) if lungs.any() else None
        return ann.simulate_slices(mask, fraction=spec.slice_fraction, n_negative=spec.n_negative_slices,
                                   negative_candidates=candidates, seed=seed)
    raise ModelConfigError(f"annotation kind {spec.kind!r} has no simulation.")


def case_target(case, config: PwTrainConfig, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Probability and confidence maps (float32, the case's own grid) that ``config`` trains on."""
    truth = np.asarray(case.mask.array) > 0
    if config.annotation.kind == "full":
        return truth.astype(np.float32), np.ones(truth.shape, np.float32)
    from wsnodule_core.pw4medseg.pseudo_labels import pseudo_label

    annotations = simulate_annotations(case, config.annotation, seed)
    lungs = np.asarray(case.lungs, bool)
    label = pseudo_label(case.image, annotations, config.pseudo_label_config(),
                         lungs=lungs if lungs.any() else None)
    return (np.asarray(label.probability, np.float32), np.asarray(label.confidence, np.float32))


@dataclass(frozen=True, eq=False)
class TargetCase:
    """A training image with a ready target: e.g. a pseudo-label made from a user's own annotations.

    ``probability`` (and ``confidence``, None: the loss's p / 1 - p; ``lungs``, None: crops anywhere)
    lie on ``image``'s grid; ``mask`` (optional ground truth) is only used when the case validates.
    The run's ``annotation`` setting does not apply to it: its target is used as given.
    """

    case_id: str
    image: Volume
    probability: np.ndarray
    confidence: np.ndarray | None = None
    lungs: np.ndarray | None = None
    mask: Volume | None = None

    def __post_init__(self) -> None:
        for name in ("probability", "confidence", "lungs"):
            value = getattr(self, name)
            if value is not None and np.shape(value) != self.image.shape:
                raise TrainingDataError(f"case {self.case_id}: its {name} has shape {np.shape(value)}, the "
                                        f"image {self.image.shape}; give maps on the image's grid.")
        if self.mask is not None and not self.mask.same_geometry(self.image):
            raise TrainingDataError(f"case {self.case_id}: the mask's geometry differs from the image's.")


def prepare_case(case, config: PwTrainConfig, seed: int = 0) -> TrainingCase:
    """A :class:`~wsnodule_core.data.cases.Case` (target made from ``config.annotation``) or a
    :class:`TargetCase` (target as given) as a :class:`TrainingCase`, resampled to the training grid."""
    given = isinstance(case, TargetCase)
    if given:
        probability, confidence = np.asarray(case.probability, np.float32), case.confidence
    else:
        probability, confidence = case_target(case, config, seed)
    source = case.image
    spacing = config.spacing_mm or source.spacing

    def on_grid(array: np.ndarray, order: int) -> np.ndarray:
        return resample_array(array, source.spacing, spacing, order=order)

    lungs = np.zeros(source.shape, bool) if case.lungs is None else np.asarray(case.lungs, bool)
    image = config.normalise(on_grid(source.array, 1))
    truth_source = probability > 0.5 if case.mask is None else np.asarray(case.mask.array) > 0
    truth = on_grid(truth_source, 0).astype(bool)
    if config.annotation.kind == "full" and not given:  # the mask itself, resampled as a mask
        target, conf = truth.astype(np.float32), np.ones(truth.shape, np.float32)
    else:
        target = np.clip(on_grid(probability, 1), 0.0, 1.0).astype(np.float32)
        conf = (None if config.confidence == "loss" or confidence is None
                else np.clip(on_grid(np.asarray(confidence, np.float32), 1), 0.0, 1.0).astype(np.float32))
    region = on_grid(lungs, 0).astype(bool) if lungs.any() else np.ones(image.shape, bool)
    if not region.any():
        region = np.ones(image.shape, bool)
    index = np.int32 if image.size < 2**31 else np.int64  # voxel lists dominate the memory of a case
    return TrainingCase(str(case.case_id), image, target.astype(np.float16),
                        conf.astype(np.float16) if conf is not None else None, truth,
                        np.flatnonzero(target > 0.5).astype(index), np.flatnonzero(region).astype(index),
                        float(image.min()))


def _cases_of(data, split: str | None):
    from wsnodule_core.data.dataset import Dataset, load_dataset

    dataset = data if isinstance(data, Dataset) else load_dataset(data)
    return list(dataset.cases(split))


def _resolve_cases(data) -> tuple[list, list]:
    """(training, validation) cases from a data set (folder or loaded), a list of cases or a pair of lists."""
    from wsnodule_core.data.cases import Case
    from wsnodule_core.data.dataset import Dataset

    if isinstance(data, (str, os.PathLike, Dataset)):
        return _cases_of(data, "train"), _cases_of(data, "val")
    kinds = (Case, TargetCase)
    if isinstance(data, tuple) and len(data) == 2 and not isinstance(data[0], kinds):
        train, val = list(data[0]), list(data[1] or [])
    else:
        train, val = list(data), []
    if not all(isinstance(c, kinds) for c in train + val):
        raise TrainingDataError("give a data set folder, a list of Case (or TargetCase) objects or a "
                                "(train, val) pair of such lists to train PW4MedSeg on.")
    return train, val


# --- batches -----------------------------------------------------------------------


def _window(n: int, size: int, centre: int) -> tuple[int, int]:
    """Start in the array and the padding before, of a window of ``size`` centred near ``centre``."""
    if n <= size:
        return 0, (size - n) // 2
    return int(np.clip(centre - size // 2, 0, n - size)), 0


def _crop(array: np.ndarray, starts, pads, size, fill) -> np.ndarray:
    out = np.full(size, fill, dtype=array.dtype)
    source = tuple(slice(s, s + min(n, c)) for s, n, c in zip(starts, array.shape, size))
    target = tuple(slice(p, p + min(n, c)) for p, n, c in zip(pads, array.shape, size))
    out[target] = array[source]
    return out


def sample_batch(cases: Sequence[TrainingCase], config: PwTrainConfig, epoch: int, step: int) -> dict:
    """The crops of step ``step`` of epoch ``epoch`` (numpy arrays (B, 1, *crop)): a function of
    ``(config.seed, epoch, step)`` only, so that a resumed run sees the same batches."""
    rng = np.random.default_rng([config.seed, epoch, step, 41])
    size = config.crop_size
    images, targets, confs, padded = [], [], [], []
    for _ in range(config.batch_size):
        case = cases[int(rng.integers(len(cases)))]
        on_foreground = len(case.foreground) > 0 and rng.random() < config.foreground_probability
        if on_foreground or rng.random() < config.background_in_lungs:
            pool = case.foreground if on_foreground else case.region
            flat = int(pool[rng.integers(len(pool))])
        else:  # anywhere: the body wall, mediastinum and air must be learnt as background too
            flat = int(rng.integers(case.image.size))
        centre = np.asarray(np.unravel_index(flat, case.image.shape))
        if on_foreground:  # the voxel anywhere but the outer eighths: no "nodule in the middle" bias
            side = np.asarray(size)
            centre = centre + side // 2 - rng.integers(side // 8, side - side // 8)
        windows = [_window(n, c, int(m)) for n, c, m in zip(case.image.shape, size, centre)]
        starts, pads = [w[0] for w in windows], [w[1] for w in windows]
        crops = [_crop(case.image, starts, pads, size, case.fill),
                 _crop(case.target, starts, pads, size, 0.0),
                 _crop(case.confidence, starts, pads, size, 0.0) if case.confidence is not None else None,
                 _padding(case.image.shape, pads, size)]
        if config.flips:
            for axis in range(3):
                if rng.random() < 0.5:
                    crops = [np.flip(c, axis) if c is not None else None for c in crops]
        images.append(crops[0])
        targets.append(crops[1])
        confs.append(crops[2])
        padded.append(crops[3])
    if any(c is None for c in confs) and not all(c is None for c in confs):  # cases of both kinds mixed
        confs = [_loss_weights(t, config.loss) if c is None else c for c, t in zip(confs, targets)]

    def stack(items, dtype=None) -> np.ndarray:
        return np.ascontiguousarray(np.stack(items)[:, None], dtype=dtype)

    return {"image": stack(images), "target": stack(targets, np.float32),
            "confidence": stack(confs, np.float32) if confs[0] is not None else None, "ignore": stack(padded)}


def _padding(shape, pads, size) -> np.ndarray:
    """True where a crop of ``size`` placed with ``pads`` lies outside an array of ``shape``."""
    out = np.ones(size, bool)
    out[tuple(slice(p, p + min(n, c)) for p, n, c in zip(pads, shape, size))] = False
    return out


def _loss_weights(target: np.ndarray, loss: LossConfig) -> np.ndarray:
    """The loss's own voxel weights (p / 1 - p, or 1) for a crop without a confidence map."""
    t = np.asarray(target, np.float32)
    return np.where(t > loss.threshold, t, 1.0 - t) if loss.confidence_weighted else np.ones_like(t)


# --- model, optimiser, schedule --------------------------------------------------------


def build_model(config: PwTrainConfig) -> ProbabilisticUNETR:
    """A fresh probabilistic UNETR, initialised from ``config.seed``."""
    torch.manual_seed(config.seed)
    return ProbabilisticUNETR(config.model)


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    span = max(total - warmup, 1)
    return 0.5 * (1.0 + math.cos(math.pi * min(step - warmup, span) / span))


def make_optimizer(model: torch.nn.Module, config: PwTrainConfig):
    """AdamW and the per-step warm-up + cosine LambdaLR."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    total = config.epochs * config.steps_per_epoch
    warmup = min(int(config.warmup_steps), max(total - 1, 0))

    def factor(step: int) -> float:
        return lr_factor(step, warmup, total)

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


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


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * float(np.logical_and(a, b).sum()) / total


def validate(model: ProbabilisticUNETR, cases: Sequence[TrainingCase], config: PwTrainConfig,
             device: torch.device, use_amp: bool = False) -> dict:
    """Dice of the thresholded mean probability (``val_passes`` stochastic passes, seeded) with the
    ground truth, averaged over ``cases``: ``dice`` at ``config.threshold``, ``dice_nodule`` the same over
    cases with a nodule; with ``tune_threshold``, ``threshold`` is the one of :data:`VAL_THRESHOLDS`
    with the best mean Dice (ties: the first) and ``dice_tuned`` that Dice."""
    from wsnodule_core.pw4medseg.infer import mc_sliding_window

    if not len(cases):
        return {"dice": float("nan"), "dice_nodule": float("nan")}
    thresholds = sorted({config.threshold, *(VAL_THRESHOLDS if config.tune_threshold else ())})
    scores = np.zeros((len(cases), len(thresholds)))
    for i, case in enumerate(cases):
        mean, _ = mc_sliding_window(model, case.image, config.crop_size, passes=config.val_passes,
                                    overlap=config.val_overlap, batch_size=config.batch_size, device=device,
                                    fill=case.fill, seed=config.seed, use_amp=use_amp)
        scores[i] = [_dice(mean >= t, case.truth) for t in thresholds]
    fixed = scores[:, thresholds.index(config.threshold)]
    nodule = [s for s, case in zip(fixed, cases) if case.truth.any()]
    result = {"dice": float(fixed.mean()), "dice_nodule": float(np.mean(nodule)) if nodule else float("nan")}
    if config.tune_threshold:
        best = int(np.argmax(scores.mean(axis=0)))
        result.update(threshold=float(thresholds[best]), dice_tuned=float(scores[:, best].mean()))
    return result



# --- training ----------------------------------------------------------------------------


def train_pw4medseg(data, out_dir: str | os.PathLike, config: PwTrainConfig | None = None,
                    callbacks: TrainCallbacks | object | None = None, resume: bool = False,
                    overwrite: bool = False, *, log: Callable[[str], None] | None = None,
                    progress: Callable[[int, int], None] | None = None) -> PwTrainResult:
    """Train PW4MedSeg; write ``best.pt`` and ``last.pt`` (kind ``"pw4medseg"``) into ``out_dir``.

    Parameters
    ----------
    data
        A data set folder or loaded ``Dataset`` (train and val splits), a list of
        :class:`~wsnodule_core.data.cases.Case` or :class:`TargetCase` (training only) or a
        ``(train, val)`` pair of such lists.
    config
        The run's settings; with ``resume`` and no config, the checkpoint's own.
    callbacks
        ``on_step(step, total, loss)``, ``on_epoch(epoch, metrics)``, ``should_stop()`` (True saves
        ``last.pt`` and returns a result with ``cancelled``).
    resume, overwrite
        A folder holding checkpoints is refused unless ``resume`` (continue exactly from ``last.pt``)
        or ``overwrite`` (start again).
    log
        ``log(text)`` for one-line messages.
    progress
        ``progress(done, total)`` while the training targets are built (one per case); ``should_stop()``
        is also polled between cases (a stop there saves nothing).
    """
    from wsnodule_core.training.distributed import env_world_size

    if env_world_size() > 1:
        raise ModelConfigError("PW4MedSeg trains in one process only (no DDP); run it without torchrun "
                               "(WORLD_SIZE is set), one job per GPU.")
    callbacks = as_callbacks(callbacks)
    out = prepare_run_dir(out_dir, resume=resume, overwrite=overwrite)
    checkpoint = load_checkpoint(out / LAST) if resume else None
    if checkpoint is not None:
        if checkpoint.kind != KIND:
            raise CheckpointError(f"{out / LAST}: holds a {checkpoint.kind!r} run, not a PW4MedSeg run; give "
                                  "the PW4MedSeg run's folder.")
        saved = PwTrainConfig.from_dict(checkpoint.train_config)
        config = saved if config is None else config
        if _comparable(config) != _comparable(saved):
            raise CheckpointError(f"{out / LAST}: the run was trained with other settings than the config "
                                  "given; resume with the same config (or none: the checkpoint's own).")
    config = config or PwTrainConfig()
    choice = choose_device(config.device)
    say = log or (lambda text: None)
    say(choice.describe())
    with deterministic(config.deterministic):
        return _train(data, out, config, callbacks, checkpoint, choice.device, say, progress)


def _comparable(config: PwTrainConfig) -> dict:
    """The settings a resumed run must share with the saved one (the device may change)."""
    return {k: v for k, v in config.to_dict().items() if k != "device"}


def _prepare(data, config: PwTrainConfig, say, progress, stop: Callable[[], bool]
             ) -> tuple[list[TrainingCase], list[TrainingCase]] | None:
    """The training and validation cases, targets made; None when ``stop()`` said so in between."""
    train_cases, val_cases = _resolve_cases(data)
    if not train_cases:
        raise TrainingDataError("no training case: the train split is empty; build a data set with training "
                                "cases (`wsnodule data ...`).")
    total = len(train_cases) + len(val_cases)
    prepared = []
    for i, case in enumerate(train_cases + val_cases):
        seed = int(np.random.default_rng([config.seed, i, 7]).integers(2**31))
        prepared.append(prepare_case(case, config, seed))
        if progress is not None:
            progress(i + 1, total)
        if stop():
            return None
    train, val = prepared[:len(train_cases)], prepared[len(train_cases):]
    if not any(len(c.foreground) for c in train):
        say("warning: no training target reaches 0.5 anywhere; crops are centred at random only")
    say(f"targets ({config.annotation.describe()}): {len(train)} training, {len(val)} validation cases")
    return train, val


def _train(data, out: Path, config: PwTrainConfig, callbacks: TrainCallbacks, checkpoint, device, say,
           progress) -> PwTrainResult:
    prepared = _prepare(data, config, say, progress, callbacks.should_stop)
    train_cases, val_cases = prepared or ([], [])
    use_amp = amp_enabled(device, config.amp)
    model = build_model(config).to(device)
    optimizer, scheduler = make_optimizer(model, config)
    scaler = grad_scaler(device, use_amp)
    loss_fn = ProbabilityInformedLoss(config.loss)
    state = RunState.resumed(restore_training_state(checkpoint, model, optimizer, scheduler, scaler), checkpoint)
    if checkpoint is not None:
        say(f"resuming from {out / LAST} after epoch {state.epoch}, step {state.global_step}")
    data_info = {"train": [c.case_id for c in train_cases], "val": [c.case_id for c in val_cases],
                 "annotation": config.annotation.describe()}
    if prepared is None:
        say("stopped while building the training targets; nothing was saved")
        return state.result(out, state.epoch, True, device, model)

    def train_step(item, generator: torch.Generator) -> tuple[float, torch.Tensor]:
        epoch, step = item  # the batch depends on (seed, epoch, step) only: resume is exact
        batch = sample_batch(train_cases, config, epoch, step)
        x = torch.from_numpy(batch["image"]).to(device)
        target = torch.from_numpy(batch["target"]).to(device)
        conf = None if batch["confidence"] is None else torch.from_numpy(batch["confidence"]).to(device)
        ignore = torch.from_numpy(batch["ignore"]).to(device) if batch["ignore"].any() else None
        with autocast(device, use_amp):
            logits, kl = model(x, return_kl=True)
        loss, parts = loss_fn(logits, target, kl, confidence=conf, ignore=ignore)
        value = optimizer_step(loss, optimizer, scaler, step=state.global_step + 1, lr=config.lr)
        scheduler.step()
        return value, torch.tensor([float(parts[k]) for k in _PARTS] + [1.0], dtype=torch.float64)

    def end_epoch(epoch: int, sums: torch.Tensor) -> tuple[dict, float | None]:
        n = max(float(sums[-1]), 1.0)
        metrics = {"epoch": epoch + 1, **{f"train_{_NAMES[k]}": float(v) / n for k, v in zip(_PARTS, sums)},
                   "lr": optimizer.param_groups[0]["lr"]}
        validated = bool(val_cases) and ((epoch + 1) % config.val_every == 0 or epoch + 1 == config.epochs)
        if validated:
            val = validate(model, val_cases, config, device, use_amp)
            model.train()
            metrics.update({f"val_{k}": v for k, v in val.items()})
        score_key = "val_dice_tuned" if config.tune_threshold else "val_dice"
        return metrics, metrics.get(score_key) if validated else (None if val_cases else -metrics["train_loss"])

    def save(names: tuple[str, ...], run: RunState) -> None:
        document = {"kind": KIND, "model_config": model.config.to_dict(), "train_config": config.to_dict(),
                    **run.fields(), "model_state": model.state_dict(), "optimizer_state": optimizer.state_dict(),
                    "scheduler_state": scheduler.state_dict(), "scaler_state": scaler.state_dict(),
                    "rng": capture_rng_state(), "data": data_info,
                    "probability_threshold": next((h["val_threshold"] for h in reversed(run.history)
                                                   if "val_threshold" in h), None)}
        for name in names:
            save_checkpoint(out / name, document)

    loop = EpochLoop(config.epochs, config.steps_per_epoch,
                     lambda epoch: [(epoch, step) for step in range(config.steps_per_epoch)], train_step,
                     end_epoch, save, lambda epoch: 0, callbacks, say, out, n_sums=len(_PARTS) + 1)
    model.train()
    epochs_done, cancelled = loop.run(state)
    return state.result(out, epochs_done, cancelled, device, model)

