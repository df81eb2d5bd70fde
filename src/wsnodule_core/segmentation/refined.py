"""Any :class:`~wsnodule_core.segmentation.base.Segmenter` whose nodules LiteMedSAM then redraws."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from wsnodule_core.io.volume import Volume
from wsnodule_core.segmentation.base import LUNGS_AUTO, Cancel, Lungs, Progress, SegmentationResult

REFINED_KIND = "medsam-refined"


@dataclass(frozen=True, eq=False)
class RefinedSegmenter:
    """``inner``'s mask with each nodule redrawn by :func:`~wsnodule_core.foundation.refine_candidates`
    (``model``: a loaded LiteMedSAM; ``options``: its keyword arguments, e.g. ``margin_mm``, ``cache``).

    The result has one output, ``"mask"`` (the refined labels); ``details`` is ``inner``'s own result.
    """

    inner: Any
    model: Any
    options: tuple[tuple[str, Any], ...] = ()
    name: str = ""
    kind: str = REFINED_KIND

    def __post_init__(self) -> None:
        if not self.name:
            object.__setattr__(self, "name", f"{self.inner.name} + MedSAM refine")

    @property
    def needs_lungs(self) -> bool:
        return bool(self.inner.needs_lungs)

    def segment(self, volume: Volume, *, lungs: Lungs = LUNGS_AUTO, progress: Progress | None = None,
                cancel: Cancel | None = None) -> SegmentationResult:
        from wsnodule_core.foundation.refine import refine_candidates

        first = self.inner.segment(volume, lungs=lungs, progress=progress, cancel=cancel)
        refined = refine_candidates(volume, first.mask, model=self.model, progress=progress, cancel=cancel,
                                    **dict(self.options))
        return SegmentationResult(refined, {"mask": refined}, self.name, dict(first.maps), first.lungs, first)
