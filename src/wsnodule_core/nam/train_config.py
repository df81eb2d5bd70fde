"""The settings of a NAM training run (:class:`TrainConfig`), apart from the training code so that
the command line can show its defaults without importing torch."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from wsnodule_core.errors import ModelConfigError
from wsnodule_core.training.result import config_from_dict

if TYPE_CHECKING:
    from wsnodule_core.data.slices import SliceConfig
    from wsnodule_core.nam.model import MultiGapConfig
    from wsnodule_core.training.augment import AugmentConfig

#: The paper's initial learning rates by number of GAP branches.
PAPER_LR = {1: 1e-2, 2: 2e-3, 3: 1e-3}
OPTIMIZERS = ("sgd", "adam", "adamw")
#: Validation metrics that can pick the best checkpoint (``TrainConfig.select_metric``).
SELECT_METRICS = ("balanced_accuracy", "tuned_balanced_accuracy", "auc")


MIN_IMAGE_SIZE = 32
"""Smallest slice crop (px) the multi-GAP classifier trains on: conv5_3 sees it at 1/16."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a NAM training run (saved in every checkpoint)."""

    n_gap: int = 1
    width: str = "vgg16"
    backbone: str = "vgg16"                # "vgg16" (the paper) or "lite_medsam" (LiteMedSAM's TinyViT)
    fine_tune_encoder: bool = False        # lite_medsam: train the encoder too, at the backbone LR
    cache_embeddings: bool = True          # lite_medsam, frozen: encode each slice once and train the head on
                                           # the embeddings (no augmentation then)
    embedding_cache: str | None = None     # their folder; None: foundation.default_cache_dir()
    head_channels: int | None = None       # None: the model's default (1024; narrow 128)
    batch_norm: bool | None = None         # None: BN only when training from scratch (no vgg16_weights)
    lr: float | None = None                # backbone LR; None: the paper's value for n_gap
    new_layer_lr_factor: float = 10.0
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_decay: float = 0.99                 # ExponentialLR gamma, per epoch
    optimizer: str = "sgd"                 # "sgd" (the paper, uses momentum), "adam" or "adamw"
    select_metric: str = "balanced_accuracy"  # validation metric of best.pt (SELECT_METRICS)
    bn_recalibration_batches: int = 0      # >0: re-estimate BatchNorm statistics on this many
                                           # un-augmented training batches after each epoch
    batch_size: int = 30
    epochs: int = 30
    epoch_size: str = "balanced"           # "balanced": 2 x the smaller class per epoch; "all": every slice
    max_steps_per_epoch: int | None = None
    image_size: int = 384
    pixel_spacing_mm: float | None = None  # None: the scan's own spacing (the paper)
    min_nodule_area_mm2: float = 0.0
    min_lung_fraction: float = 0.1
    negatives_per_case: int | None = None  # at most this many nodule-free slices per case (None: all)
    unsafe_negatives: bool = False         # nodule-free slices of cases marked negatives_ok=False too (a VOI
                                           # crop's slices beyond its nodule: negatives of the nodules' scanners)
    val_data: str | None = None            # validate on this data set's val split instead of the training set's
    seed: int = 0
    num_workers: int = 0
    amp: bool = True                       # CUDA only
    channels_last: bool = False
    device: str = "auto"
    deterministic: bool = False
    vgg16_weights: str | None = None       # local torchvision VGG16 state dict (ImageNet init)
    augment: bool = True
    flip_lr: bool = True
    flip_ud: bool = False
    rotate_deg: float = 10.0
    scale: float = 0.1
    shift_fraction: float = 0.08
    intensity_gain: float = 0.1
    intensity_shift: float = 0.05
    eval_batch_size: int = 64
    hard_tiles_from: str | None = None     # a tile classifier's checkpoint: add its hard negative tiles of the
    hard_tiles_per_scan: int = 1500        # nodule-free whole scans (nam.hard_tiles; needs WSNODULE_DATA)
    hard_tiles_random_per_scan: int = 300

    def __post_init__(self) -> None:
        if self.n_gap not in PAPER_LR:
            raise ModelConfigError(f"n_gap must be 1, 2 or 3, got {self.n_gap!r}.")
        if int(self.bn_recalibration_batches) < 0:
            raise ModelConfigError(
                f"bn_recalibration_batches must be >= 0, got {self.bn_recalibration_batches!r}.")
        for name in ("batch_size", "epochs", "image_size", "eval_batch_size"):
            if int(getattr(self, name)) < 1:
                raise ModelConfigError(f"{name} must be at least 1, got {getattr(self, name)!r}.")
        if int(self.image_size) < MIN_IMAGE_SIZE:
            raise ModelConfigError(
                f"image size {self.image_size} px (--image-size) is too small: the classifier's deepest "
                f"features see 1/16 of it, so give at least {MIN_IMAGE_SIZE} (the paper: 384).")
        if self.negatives_per_case is not None and int(self.negatives_per_case) < 0:
            raise ModelConfigError(f"negatives_per_case must be >= 0, got {self.negatives_per_case!r}.")
        if self.lr is not None and not self.lr > 0:
            raise ModelConfigError(f"lr must be positive, got {self.lr!r}.")
        if self.optimizer not in OPTIMIZERS:
            raise ModelConfigError(f"optimizer must be one of {list(OPTIMIZERS)}, got {self.optimizer!r}.")
        if self.backbone == "lite_medsam" and (self.vgg16_weights or self.bn_recalibration_batches):
            raise ModelConfigError("vgg16_weights and bn_recalibration_batches apply to the VGG16 backbone "
                                   "only (LiteMedSAM's encoder has its own weights and BatchNorm statistics).")
        if self.hard_tiles_from is not None and self.pixel_spacing_mm is None:
            raise ModelConfigError("hard tiles (--hard-tiles-from) need a fixed pixel spacing (--pixel-spacing): "
                                   "whole-scan tiles must have the spacing of the training crops.")
        if self.hard_tiles_per_scan < 0 or self.hard_tiles_random_per_scan < 0:
            raise ModelConfigError("hard_tiles_per_scan and hard_tiles_random_per_scan must be >= 0, got "
                                   f"{self.hard_tiles_per_scan} and {self.hard_tiles_random_per_scan}.")
        if self.select_metric not in SELECT_METRICS:
            raise ModelConfigError(f"select_metric must be one of {list(SELECT_METRICS)}, got "
                                   f"{self.select_metric!r}.")

    @property
    def uses_cached_embeddings(self) -> bool:
        """Whether training runs on precomputed embeddings (frozen LiteMedSAM encoder)."""
        return self.backbone == "lite_medsam" and not self.fine_tune_encoder and self.cache_embeddings

    @property
    def backbone_lr(self) -> float:
        return float(self.lr) if self.lr is not None else PAPER_LR[self.n_gap]

    def model_config(self) -> "MultiGapConfig":
        from wsnodule_core.nam.model import MultiGapConfig

        extra = {} if self.head_channels is None else {"head_channels": int(self.head_channels)}
        if self.backbone != "vgg16":
            return MultiGapConfig(n_gap=self.n_gap, width=self.width, batch_norm=bool(self.batch_norm),
                                  backbone=self.backbone, fine_tune_encoder=self.fine_tune_encoder, **extra)
        batch_norm = (self.vgg16_weights is None) if self.batch_norm is None else bool(self.batch_norm)
        return MultiGapConfig(n_gap=self.n_gap, width=self.width, batch_norm=batch_norm,
                              fine_tune_encoder=self.fine_tune_encoder, **extra)

    def slice_config(self) -> "SliceConfig":
        from wsnodule_core.data.slices import SliceConfig

        return SliceConfig(size=self.image_size, pixel_spacing_mm=self.pixel_spacing_mm,
                           min_nodule_area_mm2=self.min_nodule_area_mm2,
                           min_lung_fraction=self.min_lung_fraction, negatives_per_case=self.negatives_per_case,
                           use_unsafe_negatives=self.unsafe_negatives)

    def augment_config(self) -> "AugmentConfig":
        from wsnodule_core.training.augment import AugmentConfig

        return AugmentConfig(self.flip_lr, self.flip_ud, self.rotate_deg, self.scale, self.shift_fraction,
                             self.intensity_gain, self.intensity_shift)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        return config_from_dict(cls, data)
