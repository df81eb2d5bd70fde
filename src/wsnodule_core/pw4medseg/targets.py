"""PW4MedSeg training targets, per case on its own grid, then on the training grid.

Sparse annotations are simulated from the ground truth (:mod:`wsnodule_core.pw4medseg.annotations`:
points, tight or loose boxes, marked slices) and turned into a probability and a confidence map
(:func:`wsnodule_core.pw4medseg.pseudo_labels.pseudo_label`); ``"full"`` uses the ground-truth mask
with confidence 1 (the fully supervised reference with the same network). A :class:`TargetCase`
brings its own target (e.g. a pseudo-label of a user's annotations). :func:`prepare_case` puts image,
target, confidence, ground truth and lungs on the training grid (:mod:`.preprocess`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from wsnodule_core.errors import ModelConfigError, TrainingDataError
from wsnodule_core.image.resample import resample_array
from wsnodule_core.io.volume import Volume
from wsnodule_core.pw4medseg.config import AnnotationSpec, PwTrainConfig


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
    source_kind: str = ""


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
    if config.nodule_free_confidence is not None and is_known_nodule_free(case):
        return np.zeros(truth.shape, np.float32), np.full(truth.shape, config.nodule_free_confidence, np.float32)
    from wsnodule_core.pw4medseg.pseudo_labels import pseudo_label

    annotations = simulate_annotations(case, config.annotation, seed)
    lungs = np.asarray(case.lungs, bool)
    label = pseudo_label(case.image, annotations, config.pseudo_label_config(),
                         lungs=lungs if lungs.any() else None)
    return (np.asarray(label.probability, np.float32), np.asarray(label.confidence, np.float32))


def is_known_nodule_free(case) -> bool:
    """True for a case whose image-level label says "no nodule" (no nodule record, and its background is
    trustworthy: ``negatives_ok``), e.g. the VOI set's nodule-free lung crops."""
    return not getattr(case, "nodules", ()) and bool(getattr(case, "negatives_ok", False))


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
        return resample_array(array, source.spacing, spacing, interpolator="linear" if order else "nearest")

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
                        float(image.min()), str(getattr(case, "source", "") or "").split(":")[0])


def _cases_of(data, split: str | None):
    from wsnodule_core.data.dataset import Dataset, load_dataset

    dataset = data if isinstance(data, Dataset) else load_dataset(data)
    return list(dataset.cases(split))


def resolve_cases(data) -> tuple[list, list]:
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
