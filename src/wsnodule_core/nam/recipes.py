"""Named NAM configurations: the data set, slice, training and segmentation settings that go together.

A :class:`NamRecipe` bundles everything a run needs: how to build the (phantom) data set
(:class:`DataParams`, the keyword arguments of :func:`wsnodule_core.data.builders.build_dataset`),
how to train (:class:`~wsnodule_core.nam.train.TrainConfig`, which also fixes the slice crop:
:meth:`NamRecipe.slice_config`) and how to segment (:class:`~wsnodule_core.nam.segment_config.NamConfig`,
with the crop matching the training crop). Measured numbers: ``docs/nam_results.md``.

* ``cpu_demo``: a narrow 1-GAP model from scratch (BatchNorm) on 2.5 mm phantom slices, lung crops
  of 128 px at 2.2 mm; sized to train in about 3.5 minutes on a 2-core CPU (one torch thread:
  3-4x faster than two on the shared machine).
* ``gpu_paper``: the paper's values (VGG16 from ImageNet weights, 384 crops at the scan's spacing,
  SGD at 1e-2 for 1-GAP, batch 30) on a paper-sized phantom grid; GPU only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from wsnodule_core.data.slices import SliceConfig
from wsnodule_core.errors import ModelConfigError
from wsnodule_core.nam.scope import ScopeParams
from wsnodule_core.nam.segment_config import NamConfig
from wsnodule_core.nam.train import TrainConfig


@dataclass(frozen=True)
class DataParams:
    """Keyword arguments of :func:`~wsnodule_core.data.builders.build_dataset` for a phantom set.

    ``shape``/``spacing`` (z, y, x) override the ``size`` preset when both are given.
    """

    n_cases: int = 12
    size: str = "small"
    shape: tuple[int, int, int] | None = None
    spacing: tuple[float, float, float] | None = None
    nodules_per_case: tuple[int, int] = (0, 3)
    n_shapes: int | None = 60
    min_diameter_mm: float = 3.0
    seed: int = 0

    def build_kwargs(self) -> dict[str, Any]:
        """The arguments to pass to ``build_dataset(out_dir, **kwargs)``."""
        kwargs: dict[str, Any] = {"source": "phantom", "n_cases": self.n_cases, "seed": self.seed,
                                  "nodules_per_case": tuple(self.nodules_per_case),
                                  "n_shapes": self.n_shapes, "min_diameter_mm": self.min_diameter_mm}
        if self.shape is not None and self.spacing is not None:
            kwargs.update(shape=tuple(self.shape), spacing=tuple(self.spacing))
        else:
            kwargs["size"] = self.size
        return kwargs


@dataclass(frozen=True)
class NamRecipe:
    """A named, documented NAM configuration (data + training + segmentation)."""

    name: str
    description: str
    data: DataParams
    train: TrainConfig
    segment: NamConfig = field(default_factory=NamConfig)
    torch_threads: int | None = None  # None: leave torch's default

    def __post_init__(self) -> None:
        if self.segment.input_size != self.train.image_size or (
                self.segment.crop_pixel_spacing_mm != self.train.pixel_spacing_mm):
            raise ModelConfigError(
                f"recipe {self.name!r}: the segmentation crop ({self.segment.input_size} px at "
                f"{self.segment.crop_pixel_spacing_mm} mm) must match the training crop "
                f"({self.train.image_size} px at {self.train.pixel_spacing_mm} mm).")

    def slice_config(self) -> SliceConfig:
        """The slice crop and labelling rules used in training."""
        return self.train.slice_config()

    def with_train(self, **changes: Any) -> "NamRecipe":
        """A copy with some :class:`TrainConfig` fields changed (the crop stays in sync)."""
        train = replace(self.train, **changes)
        segment = replace(self.segment, input_size=train.image_size,
                          crop_pixel_spacing_mm=train.pixel_spacing_mm)
        return replace(self, train=train, segment=segment)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "data": asdict(self.data),
                "train": self.train.to_dict(), "segment": asdict(self.segment),
                "torch_threads": self.torch_threads}


def _cpu_demo() -> NamRecipe:
    size, spacing = 128, 2.2  # 128 px x 2.2 mm = 282 mm: the phantom's lungs (~270 x 185 mm) fit
    train = TrainConfig(
        n_gap=1, width="narrow", batch_norm=True, lr=0.01, new_layer_lr_factor=10.0,
        momentum=0.9, weight_decay=5e-4, lr_decay=0.97, batch_size=16, epochs=30,
        epoch_size="balanced", max_steps_per_epoch=None, image_size=size, pixel_spacing_mm=spacing,
        min_nodule_area_mm2=30.0, device="cpu", augment=True)
    # Network pixels are 2.2 mm here, about 3x the paper's 0.7 mm: scale the pixel parameters down.
    segment = NamConfig(input_size=size, crop_pixel_spacing_mm=spacing,
                        scope=ScopeParams(smooth_sigma_px=1.0, peak_min_distance_px=4),
                        icm=replace(NamConfig().icm, min_area_px=2))
    return NamRecipe(
        name="cpu_demo",
        description=("Narrow 1-GAP NAM from scratch (BatchNorm) on 24 phantom cases of 96 x 192 x 192 "
                     "at 2.5 x 1.8 x 1.8 mm with 2-5 nodules of >= 8 mm each; 128 px lung crops at "
                     "2.2 mm; positives need >= 30 mm2 of nodule (smaller cross-sections look like "
                     "vessels at this pixel size); 30 epochs of batch 16 (40 before issue 16: the best "
                     "checkpoint was epoch 30's), one torch thread (~3.5 min on a busy 2-core CPU). Measured: best balanced validation accuracy 0.72, not "
                     "yet a useful segmenter (docs/nam_results.md)."),
        data=DataParams(n_cases=24, shape=(96, 192, 192), spacing=(2.5, 1.8, 1.8),
                        nodules_per_case=(2, 5), n_shapes=120, min_diameter_mm=8.0, seed=1),
        train=train, segment=segment, torch_threads=1)


def _gpu_paper() -> NamRecipe:
    train = TrainConfig(
        n_gap=1, width="vgg16", batch_norm=None, lr=None, new_layer_lr_factor=10.0, momentum=0.9,
        weight_decay=5e-4, lr_decay=0.99, batch_size=30, epochs=30, epoch_size="balanced",
        image_size=384, pixel_spacing_mm=None, min_nodule_area_mm2=0.0, device="auto", amp=True,
        vgg16_weights=None, augment=True)
    return NamRecipe(
        name="gpu_paper",
        description=("The paper's setting: VGG16 1-GAP (set TrainConfig.vgg16_weights to a local "
                     "ImageNet VGG16 state dict; without it BatchNorm is added), SGD LR 1e-2 "
                     "(heads 10x), decay 0.99, batch 30, 384 x 384 crops at the scan's spacing, on "
                     "paper-sized phantoms (128 x 512 x 512 at 2.5 x 0.7 x 0.7 mm). GPU only."),
        data=DataParams(n_cases=100, size="paper", nodules_per_case=(0, 3), n_shapes=None,
                        min_diameter_mm=3.0, seed=0),
        train=train, segment=NamConfig(input_size=384, crop_pixel_spacing_mm=None))


def recipe_names() -> tuple[str, ...]:
    """Names accepted by :func:`get_recipe`."""
    return tuple(_RECIPES)


def get_recipe(name: str) -> NamRecipe:
    """The recipe called ``name`` (see :func:`recipe_names`)."""
    try:
        return _RECIPES[name]()
    except KeyError:
        raise ModelConfigError(f"unknown NAM recipe {name!r}; use one of {list(_RECIPES)}.") from None


_RECIPES = {"cpu_demo": _cpu_demo, "gpu_paper": _gpu_paper}
