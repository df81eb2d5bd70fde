"""Lung masks of chest CT and the NAM lung-centred crop."""

from wsnodule_core.data.lung.crop import CropResult, crop_mask, lung_crop, uncrop_mask
from wsnodule_core.data.lung.segmentation import LungSegmentation, segment_lungs

__all__ = ["CropResult", "LungSegmentation", "crop_mask", "lung_crop", "segment_lungs", "uncrop_mask"]
