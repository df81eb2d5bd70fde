"""The fully supervised U-Net baseline as a :class:`~wsnodule_core.segmentation.base.Segmenter`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from wsnodule_core.baselines.unet.train import KIND as UNET_KIND
from wsnodule_core.io.volume import Volume
from wsnodule_core.segmentation.base import (LUNGS_AUTO, Cancel, Lungs, Progress, SegmentationResult,
                                             resolve_lungs, single_output)


@dataclass(frozen=True, eq=False)
class UnetBaselineSegmenter:
    """:func:`~wsnodule_core.baselines.unet.segment_volume_unet` on a lung-centred crop of each slice."""

    model: Any
    threshold: float = 0.5
    name: str = "U-net"
    kind: str = UNET_KIND
    needs_lungs = True

    def segment(
        self,
        volume: Volume,
        *,
        lungs: Lungs = LUNGS_AUTO,
        progress: Progress | None = None,
        cancel: Cancel | None = None,
    ) -> SegmentationResult:
        from wsnodule_core.baselines.unet import segment_volume_unet

        lung_mask = resolve_lungs(volume, lungs, needed=True)
        result = segment_volume_unet(
            self.model, volume, lung_mask, threshold=self.threshold, progress=progress, cancel=cancel
        )
        return single_output(volume, result.mask, self.name, maps={"probability": result.probability},
                             lungs=lung_mask, details=result)
