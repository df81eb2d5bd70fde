"""NAM / R-NAM (Feng et al., MICCAI 2017): the multi-GAP slice classifier and its training.

Only the light classifier API is exported here; the segmentation modules (``scope``, ``icm``,
``rnam``, ``pipeline``) and the training entry point (``wsnodule_core.nam.train``) are imported
from their own modules.
"""

from wsnodule_core.nam.model import (MultiGapClassifier, MultiGapConfig, MultiGapOutput, nodule_activation_map,
                                     normalize_ct_slice)

__all__ = ["MultiGapClassifier", "MultiGapConfig", "MultiGapOutput", "nodule_activation_map", "normalize_ct_slice"]
