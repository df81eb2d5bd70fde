"""Flow guidance on a whole CT as a :class:`~wsnodule_core.segmentation.base.Segmenter`.

The frozen rectified-flow prior is guided towards "no nodule" by the predictor in patches around
candidate centres, and the mask is where the CT and its healthy counterfactual differ
(:func:`~wsnodule_core.flow.on_volume.guide_at_points`). Which centres: the ones given
(``centres_xyz``, world mm, e.g. clicked by a person or from a detector), else the strongest blobs of
the training-free Hessian filter inside the lungs (a cheap first pass: guiding every patch of a chest
costs hundreds of network evaluations each). With ``min_probability`` every blob is first scored by
the predictor on its patch (one forward pass) and only those at or above it are guided, the most
probable first (as ``blob-classify-refine`` keeps its candidates): a patch without a nodule then gives
no mask instead of its largest reconstruction differences.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from wsnodule_core.errors import ModelConfigError
from wsnodule_core.flow.predictors import KIND as PREDICTOR_KIND
from wsnodule_core.io.volume import Volume
from wsnodule_core.segmentation.base import (
    LUNGS_AUTO,
    Cancel,
    Lungs,
    Progress,
    SegmentationResult,
    check_options,
    lung_volume,
    resolve_lungs,
    single_output,
)

FLOW_OPTIONS = ("centres_xyz", "max_candidates", "batch_size", "floor_hu", "rule", "guidance", "min_probability",
                "central_component")


@dataclass(frozen=True, eq=False)
class FlowSegmenter:
    """``predictor`` guides ``prior`` (``(velocity model, PriorTrainConfig)``) at candidate centres.

    ``guidance`` is a :class:`~wsnodule_core.flow.guidance.GuidanceConfig` (default: the sweep's
    choice), ``rule`` a :class:`~wsnodule_core.flow.attribution.ThresholdRule`; ``floor_hu`` ignores
    smaller differences (reconstruction noise); ``central_component`` keeps only each patch mask's piece
    at its centre. At most ``max_candidates`` blob centres are guided, ``batch_size`` patches at a time;
    with ``min_probability`` (in [0, 1]) only blobs whose patch the predictor scores at least that high,
    the most probable first (given ``centres_xyz`` are not screened).
    """

    predictor: Any
    prior: tuple[Any, Any]
    patch_config: Any = None
    guidance: Any = None
    rule: Any = None
    floor_hu: float = 0.0
    centres_xyz: Sequence[Sequence[float]] | None = None
    max_candidates: int = 16
    batch_size: int = 4
    min_probability: float | None = None
    central_component: bool = False
    name: str = "Flow guidance"
    kind: str = PREDICTOR_KIND
    needs_lungs = True

    def __post_init__(self) -> None:
        from wsnodule_core.flow.attribution import ThresholdRule
        from wsnodule_core.flow.guidance import GuidanceConfig

        if self.guidance is None:
            object.__setattr__(self, "guidance", GuidanceConfig())
        if self.rule is None:
            object.__setattr__(self, "rule", ThresholdRule())
        if self.max_candidates < 1 or self.batch_size < 1:
            raise ModelConfigError(
                f"flow guidance needs max_candidates >= 1 and batch_size >= 1, got "
                f"{self.max_candidates} and {self.batch_size}."
            )
        if self.min_probability is not None and not 0.0 <= float(self.min_probability) <= 1.0:
            raise ModelConfigError(f"min_probability is a probability in [0, 1] (or None), got "
                                   f"{self.min_probability!r}.")

    def with_options(self, **changes: Any) -> FlowSegmenter:
        check_options(changes, FLOW_OPTIONS, "Flow guidance")
        return replace(self, **changes)

    def candidate_centres(self, volume: Volume, lungs: np.ndarray | None) -> np.ndarray:
        """``(n, 3)`` world centres: the given ones, else the strongest Hessian blobs in the lungs."""
        if self.centres_xyz is not None:
            return np.asarray(self.centres_xyz, float).reshape(-1, 3)
        from scipy import ndimage

        from wsnodule_core.baselines.blob_filter import segment_blobs

        inside = np.zeros(volume.shape, bool) if lungs is None else lungs
        blobs = segment_blobs(volume, inside)
        # one candidate per 26-connected blob: the filter's labels follow its grown regions, and one region
        # (the vessel tree) can hold many separate blobs
        labels, n = ndimage.label(np.asarray(blobs.mask) > 0, np.ones((3, 3, 3), bool))
        if n == 0:
            return np.zeros((0, 3))
        strength = ndimage.maximum(np.asarray(blobs.response), labels, index=np.arange(1, n + 1))
        order = np.argsort(-np.asarray(strength)) + 1
        if self.min_probability is None:
            order = order[: self.max_candidates]
        centres = ndimage.center_of_mass(labels > 0, labels, index=order)
        world = np.array([volume.index_to_world(np.asarray(c, float)) for c in centres], float).reshape(-1, 3)
        if self.min_probability is None:
            return world
        p = self.probabilities(volume, world)
        kept = np.flatnonzero(p >= float(self.min_probability))
        return world[kept[np.argsort(-p[kept], kind="stable")][: self.max_candidates]]

    def probabilities(self, volume: Volume, centres_xyz: np.ndarray) -> np.ndarray:
        """The predictor's P(nodule) of the guidance patch at each world centre ``(n, 3)``."""
        from wsnodule_core.flow.on_volume import patch_protocol
        from wsnodule_core.segmentation.classified import patch_probabilities

        size, spacing = patch_protocol(self.prior[1], self.patch_config)
        return patch_probabilities(volume, np.asarray(centres_xyz, float).reshape(-1, 3), self.predictor, size,
                                   spacing, self.prior[1].to_model, batch_size=max(self.batch_size, 8),
                                   name=self.name)

    def segment(
        self,
        volume: Volume,
        *,
        lungs: Lungs = LUNGS_AUTO,
        progress: Progress | None = None,
        cancel: Cancel | None = None,
    ) -> SegmentationResult:
        from wsnodule_core.flow.on_volume import guide_at_points

        lung_mask = resolve_lungs(volume, lungs, needed=True)
        centres = self.candidate_centres(volume, lung_mask)
        mask = np.zeros(volume.shape, np.uint8)
        difference = np.zeros(volume.shape, np.float32)
        runs = []
        chunks = [centres[i : i + self.batch_size] for i in range(0, len(centres), self.batch_size)]
        lung_grid = lung_volume(volume, lung_mask)
        for k, chunk in enumerate(chunks):

            def chunk_progress(done: int, total: int, k: int = k) -> None:
                if progress is not None:
                    progress(k * total + done, len(chunks) * total)

            run = guide_at_points(
                volume,
                chunk,
                self.prior[0],
                self.predictor,
                self.guidance,
                self.rule,
                prior_config=self.prior[1],
                patch_config=self.patch_config,
                floor_hu=self.floor_hu,
                central=self.central_component,
                lungs=lung_grid,
                progress=chunk_progress,
                cancel=cancel,
            )
            mask = np.maximum(mask, np.asarray(run.mask.array, np.uint8))
            difference = np.maximum(difference, np.asarray(run.difference_map.array, np.float32))
            runs.append(run)
        return single_output(volume, mask > 0, self.name, maps={"difference": volume.with_array(difference)},
                             lungs=lung_mask, details={"centres_xyz": centres, "runs": runs})


def flow_segmenter(
    predictor: Any, checkpoint: Any, prior: Any, *, name: str | None = None, **options: Any
) -> FlowSegmenter:
    """A :class:`FlowSegmenter` for a predictor checkpoint and a loaded prior ``(model, config)``;
    ``guidance`` may be a GuidanceConfig, a dict of its fields or (field, value) pairs, ``rule`` a ThresholdRule or
    ``(kind, value)``."""
    from wsnodule_core.flow.attribution import ThresholdRule
    from wsnodule_core.flow.guidance import GuidanceConfig
    from wsnodule_core.flow.predictors import trained_patch_config

    if prior is None:
        raise ModelConfigError("flow guidance needs its prior: give prior_checkpoint (--flow-prior PRIOR).")
    check_options(options, FLOW_OPTIONS, "Flow guidance")
    patch_config = trained_patch_config(checkpoint)
    guidance = options.get("guidance")
    if isinstance(guidance, (dict, tuple, list)):  # a dict, or (field, value) pairs as a registry entry gives
        fields = dict(guidance)
        if fields.get("clamp") is not None:
            fields["clamp"] = tuple(fields["clamp"])
        options["guidance"] = GuidanceConfig(**fields)
    if isinstance(options.get("rule"), (tuple, list)):
        options["rule"] = ThresholdRule(*options["rule"])
    return FlowSegmenter(predictor, tuple(prior), patch_config, name=name or "Flow guidance", **options)
