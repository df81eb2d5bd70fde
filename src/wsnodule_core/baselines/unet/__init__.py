"""The fully supervised U-Net baseline of the NAM paper (Feng et al., MICCAI 2017, section 3.2)."""

from wsnodule_core.baselines.unet.model import UNetConfig, UNetSegmenter
from wsnodule_core.baselines.unet.segment import UNetSegmentation, segment_volume_unet
from wsnodule_core.baselines.unet.train import (UNetTrainConfig, UNetTrainResult, evaluate, load_unet,
                                                negative_dice_loss, train_unet)

__all__ = ["UNetConfig", "UNetSegmentation", "UNetSegmenter", "UNetTrainConfig", "UNetTrainResult",
           "evaluate", "load_unet", "negative_dice_loss", "segment_volume_unet", "train_unet"]
