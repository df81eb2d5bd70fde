"""Embeddings encoded once: the disk cache gives back what the encoder gave, without the encoder."""

from __future__ import annotations

import pytest
import torch

from wsnodule_core.foundation import EmbeddingCache, default_cache_dir, encode_images

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_cached_embeddings_equal_fresh_ones_and_skip_the_encoder(lite_medsam, tmp_path):
    images = torch.rand(2, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    calls = []
    hook = lite_medsam.image_encoder.register_forward_hook(lambda module, args, out: calls.append(len(args[0])))
    try:
        cache = EmbeddingCache(tmp_path / "cache")
        fresh = encode_images(lite_medsam, images, cache=cache)
        again = encode_images(lite_medsam, images, cache=cache)
        plain = encode_images(lite_medsam, images[:1])
    finally:
        hook.remove()
    assert calls == [2, 1]  # the second call read both from disk
    assert fresh.shape == (2, 256, 64, 64) and len(list((tmp_path / "cache").glob("*.pt"))) == 2
    assert torch.allclose(again, fresh, atol=2e-3 * float(fresh.abs().max()))  # stored as float16
    assert torch.allclose(plain[0], fresh[0], atol=1e-5)


def test_a_half_written_file_is_recomputed_and_keys_follow_the_input(tmp_path):
    cache = EmbeddingCache(tmp_path)
    image = torch.zeros(3, 256, 256)
    key = cache.key(image)
    assert key != cache.key(image + 1e-3) and key == cache.key(image.clone())
    (tmp_path / f"{key}.pt").write_bytes(b"\x80 truncated")
    assert cache.get(key) is None


def test_the_cache_folder_can_be_moved(monkeypatch, tmp_path):
    monkeypatch.setenv("WSNODULE_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c" / "lite_medsam"
    monkeypatch.delenv("WSNODULE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert default_cache_dir() == tmp_path / "x" / "wsnodule" / "lite_medsam"
