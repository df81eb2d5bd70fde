"""The training-free Hessian blob filter as a :class:`~wsnodule_core.segmentation.base.Segmenter`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from wsnodule_core.io.volume import Volume
from wsnodule_core.segmentation.base import (LUNGS_AUTO, Cancel, Lungs, Progress, SegmentationResult,
                                             resolve_lungs, single_output)

BLOB_KIND = "blob-filter"


def _default_config() -> Any:
    from wsnodule_core.baselines.blob_filter import BlobFilterConfig

    return BlobFilterConfig()


@dataclass(frozen=True, eq=False)
class BlobSegmenter:
    """:func:`~wsnodule_core.baselines.blob_filter.segment_blobs` in the lungs (no training or checkpoint)."""

    config: Any = field(default_factory=_default_config)
    name: str = "Hessian blob filter (no training)"
    kind: str = BLOB_KIND
    needs_lungs = True

    def segment(
        self,
        volume: Volume,
        *,
        lungs: Lungs = LUNGS_AUTO,
        progress: Progress | None = None,
        cancel: Cancel | None = None,
    ) -> SegmentationResult:
        from wsnodule_core.baselines.blob_filter import segment_blobs

        lung_mask = resolve_lungs(volume, lungs, needed=True)
        inside = np.zeros(volume.shape, bool) if lung_mask is None else lung_mask
        result = segment_blobs(volume, inside, self.config, progress=progress)
        maps = {"response": volume.with_array(np.asarray(result.response, np.float32))}
        return single_output(volume, result.mask, self.name, maps=maps, lungs=lung_mask, details=result)
