"""Any segmenter's candidates filtered by a patch classifier: keep the components it calls nodules.

:class:`ClassifiedSegmenter` runs ``inner`` (e.g. the training-free blob filter, which finds most
nodules and many false positives), cuts the flow predictor's patch (its trained size, spacing and HU
window; :func:`~wsnodule_core.flow.on_volume.cut_patch`) at each candidate's centre in world mm,
scores P(nodule) in batches and keeps the candidates with ``P >= threshold``, relabelled 1..n by
decreasing P. It composes: ``RefinedSegmenter(ClassifiedSegmenter(BlobSegmenter(), ...), lite_medsam)``
is the "blob-classify-refine" pipeline (:func:`load_blob_classify_refine`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from wsnodule_core.errors import ModelConfigError, SegmentationCancelled
from wsnodule_core.io.volume import Volume
from wsnodule_core.segmentation.base import (
    LUNGS_AUTO,
    Cancel,
    Lungs,
    Progress,
    SegmentationResult,
    check_options,
)

CLASSIFIED_KIND = "patch-classified"
#: The map of each candidate's P(nodule) (0 where no candidate or one not scored).
PROBABILITY_MAP = "candidate_probability"
#: The threshold when neither the call, the shipped entry nor the checkpoint gives one.
DEFAULT_THRESHOLD = 0.5
CLASSIFY_OPTIONS = ("threshold", "max_candidates", "batch_size", "blob_config")


@dataclass(frozen=True)
class Candidate:
    """One component of the inner mask: its ``label`` there, centre (world x, y, z mm), size, the
    score it was ranked by (blob response or voxels), P(nodule) (None: beyond ``max_candidates``,
    not scored), whether it was kept and its label in the output (0 when dropped)."""

    label: int
    centre_xyz: tuple[float, float, float]
    voxels: int
    rank_score: float
    probability: float | None
    kept: bool
    new_label: int


@dataclass(frozen=True, eq=False)
class ClassifiedDetails:
    """What :class:`ClassifiedSegmenter` decided: every candidate (inner label order), the threshold,
    what candidates were ranked by (``"response"`` or ``"voxels"``), how many were not scored because
    of ``max_candidates``, and the inner segmenter's own result."""

    candidates: tuple[Candidate, ...]
    threshold: float
    ranked_by: str
    n_unscored: int
    inner: SegmentationResult

    @property
    def kept(self) -> tuple[Candidate, ...]:
        """The kept candidates by output label (decreasing P)."""
        return tuple(sorted((c for c in self.candidates if c.kept), key=lambda c: c.new_label))


@dataclass(frozen=True, eq=False)
class ClassifiedSegmenter:
    """``inner``'s candidates kept where ``predictor`` (a flow patch predictor, logits of "nodule")
    gives ``P >= threshold`` on the ``patch_config`` patch cut at their centre.

    At most ``max_candidates`` are scored: the strongest by the inner result's ``"response"`` map when
    it has one (the blob filter's), else the largest; ``batch_size`` patches go through the predictor at
    once, on the predictor's device. ``details`` is a :class:`ClassifiedDetails`; ``maps`` are the
    inner ones plus ``"candidates"`` (every inner candidate) and :data:`PROBABILITY_MAP`.
    """

    inner: Any
    predictor: Any
    patch_config: Any = None
    threshold: float = DEFAULT_THRESHOLD
    max_candidates: int | None = 64
    batch_size: int = 16
    name: str = ""
    kind: str = CLASSIFIED_KIND

    def __post_init__(self) -> None:
        if self.patch_config is None:
            from wsnodule_core.flow.patches import PatchConfig

            object.__setattr__(self, "patch_config", PatchConfig())
        if not 0.0 <= float(self.threshold) <= 1.0:
            raise ModelConfigError(f"the candidate threshold is a probability in [0, 1], got {self.threshold}.")
        if (self.max_candidates is not None and self.max_candidates < 1) or self.batch_size < 1:
            raise ModelConfigError(f"max_candidates must be >= 1 (or None: all) and batch_size >= 1, got "
                                   f"{self.max_candidates} and {self.batch_size}.")
        if not self.name:
            object.__setattr__(self, "name", f"{self.inner.name} + patch classifier")

    @property
    def needs_lungs(self) -> bool:
        return bool(self.inner.needs_lungs)

    def segment(self, volume: Volume, *, lungs: Lungs = LUNGS_AUTO, progress: Progress | None = None,
                cancel: Cancel | None = None) -> SegmentationResult:
        first = self.inner.segment(volume, lungs=lungs, progress=progress, cancel=cancel)
        if cancel is not None and cancel():
            raise SegmentationCancelled(f"{self.name}: cancelled before the candidates were scored.")
        labels = np.asarray(first.mask.array, np.int32)
        ids, voxels, centres = components(volume, labels)
        ranked_by, rank = rank_scores(labels, ids, voxels, first.maps)
        order = np.argsort(-rank, kind="stable")
        scored = order if self.max_candidates is None else order[: self.max_candidates]
        p = np.full(len(ids), np.nan)
        p[scored] = self.score(volume, centres[scored], progress, cancel)
        kept = [i for i in np.argsort(-np.nan_to_num(p, nan=-1.0), kind="stable") if p[i] >= self.threshold]
        new_label = np.zeros(len(ids), np.int32)
        new_label[kept] = np.arange(1, len(kept) + 1)
        lookup = np.zeros(int(labels.max(initial=0)) + 1, np.int32)
        lookup[ids] = new_label
        chances = np.zeros(len(lookup), np.float32)
        chances[ids] = np.nan_to_num(p, nan=0.0)
        candidates = tuple(Candidate(int(ids[i]), tuple(float(v) for v in centres[i]), int(voxels[i]),  # type: ignore[arg-type]
                                     float(rank[i]), None if np.isnan(p[i]) else float(p[i]),
                                     bool(new_label[i]), int(new_label[i])) for i in range(len(ids)))
        details = ClassifiedDetails(candidates, float(self.threshold), ranked_by, len(ids) - len(scored), first)
        mask = volume.with_array(lookup[labels])
        maps = {**first.maps, "candidates": first.mask, PROBABILITY_MAP: volume.with_array(chances[labels])}
        return SegmentationResult(mask, {"mask": mask}, self.name, maps, first.lungs, details)

    def score(self, volume: Volume, centres_xyz: np.ndarray, progress: Progress | None = None,
              cancel: Cancel | None = None) -> np.ndarray:
        """P(nodule) of the predictor's patch at each world centre ``(n, 3)``, ``batch_size`` at a time."""
        from wsnodule_core.image.window import apply_window

        config = self.patch_config
        return patch_probabilities(volume, centres_xyz, self.predictor, int(config.size), float(config.spacing_mm),
                                   lambda hu: apply_window(hu, config.window), batch_size=self.batch_size,
                                   progress=progress, cancel=cancel, name=self.name)


def patch_probabilities(volume: Volume, centres_xyz: np.ndarray, predictor: Any, size: int, spacing_mm: float,
                        to_unit: Callable[[np.ndarray], np.ndarray], *, batch_size: int = 16,
                        progress: Progress | None = None, cancel: Cancel | None = None,
                        name: str = "the patch classifier") -> np.ndarray:
    """P(nodule) of ``predictor`` on the ``size``³ patch at ``spacing_mm`` cut at each world centre ``(n, 3)``,
    its HU mapped to the predictor's [0, 1] by ``to_unit``; ``batch_size`` patches at a time, on the
    predictor's device."""
    from wsnodule_core.flow.on_volume import cut_patch
    from wsnodule_core.flow.predictors import predict_patches

    parameter = next(predictor.parameters(), None)
    device = parameter.device if parameter is not None else "cpu"
    out = []
    starts = range(0, len(centres_xyz), batch_size)
    for k, start in enumerate(starts):
        if cancel is not None and cancel():
            raise SegmentationCancelled(f"{name}: cancelled after {start} of {len(centres_xyz)} "
                                        "candidates were scored.")
        patches = [cut_patch(volume, c, size, spacing_mm) for c in centres_xyz[start:start + batch_size]]
        images = np.stack([to_unit(np.asarray(p.array, np.float32)) for p in patches])
        out.append(predict_patches(predictor, images.astype(np.float32), device, batch_size=batch_size))
        if progress is not None:
            progress(k + 1, len(starts))
    return np.concatenate(out) if out else np.zeros(0, np.float32)

def components(volume: Volume, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(ids, voxels, centres_xyz)`` of each label present: its voxel count and its centre of mass in
    world mm (on ``volume``'s grid)."""
    ids, voxels, centres = [], [], []
    for label, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        where = np.argwhere(labels[box] == label)
        ids.append(label)
        voxels.append(len(where))
        centres.append(where.mean(axis=0) + [s.start for s in box])
    index = np.asarray(centres, float).reshape(-1, 3)
    world = volume.index_to_world(index).reshape(-1, 3) if len(index) else index
    return np.asarray(ids, np.int32), np.asarray(voxels, np.int64), world


def rank_scores(labels: np.ndarray, ids: np.ndarray, voxels: np.ndarray,
                maps: Mapping[str, Volume]) -> tuple[str, np.ndarray]:
    """What candidates are ranked by for ``max_candidates``: each one's largest ``"response"`` (the blob
    filter's map) when the inner result has it, else its voxel count."""
    if "response" in maps and len(ids):
        response = np.asarray(maps["response"].array, np.float32)
        return "response", np.asarray(ndimage.maximum(response, labels, ids), float).reshape(-1)
    return "voxels", voxels.astype(float)


def recorded_threshold(checkpoint: Any) -> float | None:
    """The ``"threshold"`` a predictor checkpoint recorded (None when it recorded none)."""
    value = (getattr(checkpoint, "raw", None) or {}).get("threshold")
    return None if value is None else float(value)


def load_blob_classify_refine(checkpoint: str | os.PathLike, device: str = "auto", *, lite_medsam: Any = None,
                              refine: bool = True, name: str | None = None, **options: Any) -> Any:
    """The "blob-classify-refine" pipeline: blob candidates -> the predictor keeps the nodules ->
    LiteMedSAM redraws them.

    Parameters
    ----------
    checkpoint
        A ``"flow-predictor"`` checkpoint (``train_predictor``'s ``best.pt``); its recorded patch
        protocol (``trained_patch_config``) cuts the patches.
    device
        Where the predictor (and LiteMedSAM, when loaded here) runs.
    lite_medsam
        A loaded LiteMedSAM (default: loaded from the installed wheel); unused when ``refine`` is False.
    refine
        False: the classified blob candidates as the blob filter drew them (no LiteMedSAM).
    name
        The segmenter's name.
    **options
        ``threshold`` (default: the checkpoint's recorded ``"threshold"``, else
        :data:`DEFAULT_THRESHOLD`), ``max_candidates``, ``batch_size``, ``blob_config`` (a
        ``BlobFilterConfig``); any other option goes to ``refine_candidates`` (``cache``,
        ``margin_mm``, ``drop_empty``...).
    """
    from wsnodule_core.flow.predictors import load_predictor, trained_patch_config
    from wsnodule_core.segmentation.blob import BlobSegmenter
    from wsnodule_core.segmentation.refined import RefinedSegmenter
    from wsnodule_core.training.device import choose_device

    torch_device = choose_device(device).device
    predictor, loaded = load_predictor(checkpoint, torch_device)
    own = {k: options.pop(k) for k in CLASSIFY_OPTIONS if k in options}
    blob = BlobSegmenter(**({"config": own.pop("blob_config")} if own.get("blob_config") is not None else {}))
    own.pop("blob_config", None)
    threshold = own.pop("threshold", None)
    if threshold is None:
        threshold = recorded_threshold(loaded)
    classified = ClassifiedSegmenter(blob, predictor, trained_patch_config(loaded),
                                     DEFAULT_THRESHOLD if threshold is None else float(threshold),
                                     name="" if refine else (name or ""), **own)
    if not refine:
        check_options(options, CLASSIFY_OPTIONS, "Blob-classify")
        return classified
    if lite_medsam is None:
        from wsnodule_core.foundation import load_lite_medsam

        lite_medsam = load_lite_medsam(str(torch_device))
    return RefinedSegmenter(classified, lite_medsam, tuple(options.items()),
                            name=name or "Hessian blob filter + patch classifier + MedSAM refine")

