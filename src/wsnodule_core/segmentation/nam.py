"""NAM / R-NAM (2D multi-GAP) and the 3D NAM as :class:`~wsnodule_core.segmentation.base.Segmenter`."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from wsnodule_core.errors import ModelConfigError
from wsnodule_core.io.volume import Volume
from wsnodule_core.nam.model import KIND as NAM_KIND
from wsnodule_core.nam.model3d import KIND_3D
from wsnodule_core.nam.tile_grid import TILED_LUNG_CROP_PX
from wsnodule_core.segmentation.base import (LUNGS_AUTO, Cancel, Lungs, Progress, SegmentationResult,
                                             check_options, lung_volume, resolve_lungs, single_output)

NAM_OUTPUTS = ("fine", "coarse")


def nam_config_for_checkpoint(checkpoint: Any, base: Any = None, **overrides: Any):
    """The :class:`~wsnodule_core.nam.segment_config.NamConfig` a NAM checkpoint segments with.

    Start from ``base`` (default ``NamConfig()``), take the checkpoint's own training crop (side and
    pixel spacing) and the slice threshold its validation chose, then apply ``overrides``. A classifier
    trained with hard whole-scan tiles (``--hard-tiles-from``) is slid over a lung crop of
    :data:`TILED_LUNG_CROP_PX` in tiles of its crop (:mod:`wsnodule_core.nam.tiles`).
    """
    from wsnodule_core.nam.segment_config import NamConfig

    values: dict[str, Any] = {}
    train = getattr(checkpoint, "train_config", None) or {}
    if train.get("image_size"):
        values["input_size"] = int(train["image_size"])
        if train.get("hard_tiles_from"):  # a tile classifier (trained on whole-scan tiles) slides in tiles
            values.update(tile_size=int(train["image_size"]), input_size=TILED_LUNG_CROP_PX)
    if "pixel_spacing_mm" in train:
        values["crop_pixel_spacing_mm"] = (
            None if train["pixel_spacing_mm"] is None else float(train["pixel_spacing_mm"])
        )
    threshold = (getattr(checkpoint, "raw", None) or {}).get("probability_threshold")
    if threshold is not None:
        values["probability_threshold"] = float(threshold)
    check_options(overrides, _field_names(NamConfig), "NAM")
    return replace(base or NamConfig(), **{**values, **overrides})


def _field_names(config_class: type) -> list[str]:
    return [f.name for f in fields(config_class)]


@dataclass(frozen=True, eq=False)
class NamSegmenter:
    """NAM/R-NAM on a CT (:func:`~wsnodule_core.nam.pipeline.segment_volume`): outputs ``coarse`` and
    ``fine``; ``output`` picks the one that is the result's ``mask``.

    With ``multi_gap_model``: the paper's multi-GAP segmentation (``model`` is the 1-GAP classifier that
    picks the nodule slices and screens, the multi-GAP NAM narrows the scope).
    """

    model: Any
    config: Any
    multi_gap_model: Any = None
    output: str = "fine"
    name: str = "1-GAP"
    kind: str = NAM_KIND
    batch_size: int = 8

    def __post_init__(self) -> None:
        if self.output not in NAM_OUTPUTS:
            raise ModelConfigError(f"NAM output must be one of {NAM_OUTPUTS}, got {self.output!r}.")

    needs_lungs = True

    def with_options(self, **changes: Any) -> "NamSegmenter":
        """A copy with NamConfig fields (and ``output``) changed."""
        output = changes.pop("output", self.output)
        from wsnodule_core.nam.segment_config import NamConfig

        check_options(changes, _field_names(NamConfig), "NAM")
        return replace(self, config=replace(self.config, **changes), output=output)

    def segment(
        self,
        volume: Volume,
        *,
        lungs: Lungs = LUNGS_AUTO,
        progress: Progress | None = None,
        cancel: Cancel | None = None,
    ) -> SegmentationResult:
        from wsnodule_core.nam.pipeline import segment_volume

        lung_mask = resolve_lungs(volume, lungs, needed=True)
        result = segment_volume(
            self.model,
            volume,
            lungs=lung_mask,
            config=self.config,
            multi_gap_model=self.multi_gap_model,
            progress=progress,
            cancel=cancel,
            batch_size=self.batch_size,
        )
        outputs = {"coarse": result.coarse, "fine": result.fine}
        maps = {"nam": result.nam, "scope": result.scope, "candidates": result.candidates}
        if result.multi_nam is not None:
            maps["multi_nam"] = result.multi_nam
        return SegmentationResult(
            outputs[self.output], outputs, self.name, maps, lung_volume(volume, lung_mask), result
        )


@dataclass(frozen=True, eq=False)
class Nam3DSegmenter:
    """The 3D NAM slid over the lungs (:func:`~wsnodule_core.nam.segment3d.segment_volume_3d`)."""

    model: Any
    patch_size: int
    spacing_mm: float
    params: Any
    name: str = "3D NAM"
    kind: str = KIND_3D
    needs_lungs = True

    def segment(
        self,
        volume: Volume,
        *,
        lungs: Lungs = LUNGS_AUTO,
        progress: Progress | None = None,
        cancel: Cancel | None = None,
    ) -> SegmentationResult:
        from wsnodule_core.nam.segment3d import segment_volume_3d

        lung_mask = resolve_lungs(volume, lungs, needed=True)
        result = segment_volume_3d(
            self.model,
            volume,
            lung_mask,
            patch_size=self.patch_size,
            spacing_mm=self.spacing_mm,
            params=self.params,
            progress=progress,
            cancel=cancel,
        )
        return single_output(volume, result.labels, self.name, lungs=lung_mask, details=result)


def nam3d_segmenter(
    model: Any, checkpoint: Any, *, name: str | None = None, **options: Any
) -> Nam3DSegmenter:
    """A :class:`Nam3DSegmenter` with the patch size, spacing and window of the model's training."""
    from wsnodule_core.nam.segment3d import Segment3DParams

    train = getattr(checkpoint, "train_config", None) or {}
    check_options(options, [*_field_names(Segment3DParams), "patch_size", "spacing_mm"], "3D NAM")
    patch_size = int(options.pop("patch_size", train.get("patch_size", 32)))
    spacing_mm = float(options.pop("spacing_mm", train.get("spacing_mm", 1.0)))
    if "window" in train and "window" not in options:
        options["window"] = tuple(train["window"])
    return Nam3DSegmenter(
        model, patch_size, spacing_mm, Segment3DParams(**options), name or f"3D {model.config.n_gap}-GAP"
    )
