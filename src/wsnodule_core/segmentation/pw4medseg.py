"""PW4MedSeg (K stochastic sliding-window passes) as a :class:`~wsnodule_core.segmentation.base.Segmenter`."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from wsnodule_core.errors import ModelConfigError
from wsnodule_core.io.volume import Volume
from wsnodule_core.nodules import drop_small_components
from wsnodule_core.pw4medseg.config import KIND as PW_KIND
from wsnodule_core.segmentation.base import (LUNGS_AUTO, Cancel, Lungs, Progress, SegmentationResult,
                                             check_options, resolve_lungs, single_output)

PW_OPTIONS = ("passes", "threshold", "overlap", "batch_size", "seed", "lung_margin_mm", "min_diameter_mm")


@dataclass(frozen=True, eq=False)
class PwSegmenter:
    """A trained PW4MedSeg network: ``mask`` labels one nodule per 26-connected component of the mean
    probability at or above ``threshold`` (None: the one its validation chose, ``config.threshold``);
    maps ``probability`` (mean of the passes) and ``uncertainty`` (their spread).

    ``lung_margin_mm`` not None keeps only what lies within that distance of the lungs (the paper does
    not restrict; off by default, and the lungs are then not segmented). ``min_diameter_mm`` drops the
    components of a smaller equivalent sphere diameter (0: keep all; the paper has no such step).
    """

    model: Any
    config: Any
    passes: int = 6
    threshold: float | None = None
    overlap: float = 0.25
    batch_size: int = 2
    seed: int | None = 0
    lung_margin_mm: float | None = None
    min_diameter_mm: float = 0.0
    name: str = "PW4MedSeg"
    kind: str = PW_KIND

    def __post_init__(self) -> None:
        if self.threshold is None:
            object.__setattr__(self, "threshold", float(self.config.threshold))
        if not self.min_diameter_mm >= 0:
            raise ModelConfigError(f"min_diameter_mm must be >= 0 mm, got {self.min_diameter_mm}.")
        if self.passes < 1:
            raise ModelConfigError(f"PW4MedSeg needs at least one pass, got passes={self.passes}.")

    @property
    def needs_lungs(self) -> bool:
        return self.lung_margin_mm is not None

    def with_options(self, **changes: Any) -> "PwSegmenter":
        check_options(changes, PW_OPTIONS, "PW4MedSeg")
        return replace(self, **changes)

    def predict(self, volume: Volume, *, progress: Progress | None = None, cancel: Cancel | None = None):
        """The raw :class:`~wsnodule_core.pw4medseg.infer.Prediction` (mean, spread, thresholded mask)."""
        from wsnodule_core.pw4medseg.infer import predict_volume

        return predict_volume(
            self.model,
            volume,
            self.config,
            passes=self.passes,
            overlap=self.overlap,
            batch_size=self.batch_size,
            threshold=self.threshold,
            seed=self.seed,
            progress=progress,
            cancel=cancel,
        )

    def segment(
        self,
        volume: Volume,
        *,
        lungs: Lungs = LUNGS_AUTO,
        progress: Progress | None = None,
        cancel: Cancel | None = None,
    ) -> SegmentationResult:
        lung_mask = resolve_lungs(volume, lungs, needed=self.needs_lungs)
        prediction = self.predict(volume, progress=progress, cancel=cancel)
        mask = np.asarray(prediction.mask.array) > 0
        if self.lung_margin_mm is not None and lung_mask is not None and lung_mask.any():
            from scipy import ndimage

            distance = ndimage.distance_transform_edt(~lung_mask, sampling=volume.spacing)
            mask &= distance <= self.lung_margin_mm
        if self.min_diameter_mm > 0:
            mask = drop_small_components(mask, volume.spacing, self.min_diameter_mm)
        maps = {"probability": prediction.probability, "uncertainty": prediction.uncertainty}
        return single_output(volume, mask, self.name, maps=maps, lungs=lung_mask, details=prediction)
