"""The image encoder's embeddings, batched, and kept on disk so a second prompt costs only the decoder.

The cache is a folder of ``<key>.pt`` files (float16 ``(256, 64, 64)``, 2 MB each) keyed by the SHA-256
of the model input and the checkpoint's: the same slice crop, window and letterbox give the same
key on every machine. Its folder: ``$WSNODULE_CACHE/lite_medsam`` when set, else
``$XDG_CACHE_HOME/wsnodule/lite_medsam`` (``~/.cache/wsnodule/lite_medsam``); delete it freely.
"""

from __future__ import annotations

import hashlib
import os
import types
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from wsnodule_core.foundation.lite_medsam import CHECKPOINT_SHA256, EMBEDDING_SHAPE, ENCODER_BATCH, LiteMedSam


def default_cache_dir() -> Path:
    """``$WSNODULE_CACHE/lite_medsam``, else ``$XDG_CACHE_HOME/wsnodule/lite_medsam`` (``~/.cache``)."""
    if os.environ.get("WSNODULE_CACHE"):
        return Path(os.environ["WSNODULE_CACHE"]) / "lite_medsam"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "wsnodule" / "lite_medsam"


class EmbeddingCache:
    """Embeddings on disk under ``folder`` (default :func:`default_cache_dir`), keyed by their input."""

    def __init__(self, folder: str | os.PathLike | None = None) -> None:
        self.folder = Path(folder) if folder is not None else default_cache_dir()

    @staticmethod
    def key(image: torch.Tensor) -> str:
        digest = hashlib.sha256(CHECKPOINT_SHA256.encode())
        digest.update(image.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
        return digest.hexdigest()

    def get(self, key: str) -> torch.Tensor | None:
        path = self.folder / f"{key}.pt"
        if not path.is_file():
            return None
        try:
            return torch.load(path, map_location="cpu", weights_only=True).float()
        except Exception:  # noqa: BLE001 - an unreadable file (a killed run's, another torch's) is recomputed
            return None

    def put(self, key: str, embedding: torch.Tensor) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        partial = self.folder / f"{key}.{os.getpid()}.tmp"
        torch.save(embedding.detach().to("cpu", torch.float16).clone(), partial)
        partial.replace(self.folder / f"{key}.pt")


@torch.no_grad()
def encode_images(model: LiteMedSam, images: torch.Tensor, *, batch_size: int = ENCODER_BATCH,
                  cache: EmbeddingCache | None = None, progress: Callable[[int, int], None] | None = None
                  ) -> torch.Tensor:
    """Embeddings ``(n, 256, 64, 64)`` (on the model's device) of inputs ``(n, 3, 256, 256)``; cached
    ones are read, the others encoded ``batch_size`` at a time and written to ``cache``."""
    keys = [EmbeddingCache.key(image) for image in images] if cache is not None else [None] * len(images)
    found = {i: cache.get(k) for i, k in enumerate(keys)} if cache is not None else {}
    todo = [i for i in range(len(images)) if found.get(i) is None]
    out: list[torch.Tensor | None] = [found.get(i) for i in range(len(images))]
    for start in range(0, len(todo), batch_size):
        chunk = todo[start:start + batch_size]
        embedded = model.image_encoder(images[chunk].to(model.device))
        for i, embedding in zip(chunk, embedded):
            out[i] = embedding
            if cache is not None:
                cache.put(keys[i], embedding)
        if progress is not None:
            progress(min(start + batch_size, len(todo)), len(todo))
    return torch.stack([e.to(model.device, torch.float32) for e in out]) if out else \
        torch.zeros((0, 256, 64, 64), device=model.device)


@torch.no_grad()
def embed_arrays(encoder: torch.nn.Module, arrays: np.ndarray, to_input: Callable[[torch.Tensor], torch.Tensor], *,
                 cache: EmbeddingCache | None = None, chunk: int = 8,
                 progress: Callable[[int, int], None] | None = None,
                 encode: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """Embeddings (float16, CPU) ``(n, k, 256, 64, 64)`` of ``arrays`` ``(n, ...)`` (a model's own inputs,
    e.g. slices or patches in [0, 1]): ``chunk`` at a time to the encoder's device, ``to_input`` makes each
    item's ``k`` encoder inputs ``(chunk * k, 3, 256, 256)``, read from / written to ``cache``. The
    encoder runs in eval mode and gets its training flag back (training heads on cached embeddings).
    ``encode`` (inputs -> ``(chunk * k, C, h, w)``) replaces the embedding with other features of the
    encoder (it caches them itself); the result is then ``(n, k, C, h, w)``."""
    device = next(encoder.parameters()).device
    model = types.SimpleNamespace(image_encoder=encoder, device=device)  # what encode_images uses
    was_training = encoder.training
    encoder.eval()
    out = []
    try:
        for start in range(0, len(arrays), chunk):
            x = torch.from_numpy(np.asarray(arrays[start:start + chunk], np.float32)).to(device)
            inputs = to_input(x)
            embedded = encode(inputs) if encode is not None else encode_images(model, inputs, cache=cache)
            out.append(embedded.to("cpu", torch.float16).reshape(len(x), -1, *embedded.shape[1:]))
            if progress is not None:
                progress(min(start + chunk, len(arrays)), len(arrays))
    finally:
        encoder.train(was_training)
    return torch.cat(out) if out else torch.zeros((0, 1, *EMBEDDING_SHAPE), dtype=torch.float16)
