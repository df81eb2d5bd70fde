"""The flow predictor on LiteMedSAM's encoder (``tinyvit25d``): two-class logits, a gradient that reaches
the slab's voxels (what guidance needs), a frozen encoder kept out of the weights, the CAM layer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wsnodule_core.errors import ModelConfigError
from wsnodule_core.flow.predictors import PredictorConfig, PredictorModule, TinyVitSlices
from wsnodule_core.foundation import to_model_image
from wsnodule_core.foundation.image import to_model_input

pytestmark = pytest.mark.usefixtures("one_torch_thread")
CONFIG = PredictorConfig(architecture="tinyvit25d", channels=(8,), slab=3)


def test_the_tensor_conversion_equals_the_slice_conversion_and_is_differentiable():
    hu = torch.linspace(-1200, 300, 32 * 32).reshape(1, 32, 32).requires_grad_(True)
    tensor = to_model_input(hu)
    image, _ = to_model_image(hu.detach()[0].numpy(), (1.0, 1.0))
    assert tensor.shape == (1, 3, 256, 256) and torch.allclose(tensor[0], image, atol=1e-5)
    tensor.sum().backward()
    assert hu.grad is not None and hu.grad.abs().sum() > 0


def test_guidance_gradient_reaches_the_slab_and_the_frozen_encoder_learns_nothing(lite_medsam):
    model = PredictorModule(TinyVitSlices(CONFIG, encoder=lite_medsam.image_encoder), config=CONFIG).eval()
    x = (torch.rand(1, 1, 8, 32, 32, generator=torch.Generator().manual_seed(0)) * 0.5).requires_grad_(True)
    logit = model.nodule_logit(x)
    assert model(x).shape == (1, 2)
    logit.sum().backward()
    per_slice = x.grad[0, 0].abs().sum(dim=(1, 2))
    assert torch.all(per_slice[3:6] > 0) and torch.all(per_slice[:3] == 0) and torch.all(per_slice[6:] == 0)
    assert all(p.grad is None for p in model.net.encoder.parameters())
    assert model.net.fc.weight.grad is not None
    assert model.cam_layer == "net.lift" and dict(model.named_modules())["net.lift"] is model.net.lift


def test_a_frozen_encoder_stays_out_of_the_weights_and_they_load_back(lite_medsam):
    first = PredictorModule(TinyVitSlices(CONFIG, encoder=lite_medsam.image_encoder), config=CONFIG)
    state = first.state_dict()
    assert state and not any(".encoder." in k for k in state)
    again = PredictorModule(TinyVitSlices(CONFIG, encoder=lite_medsam.image_encoder), config=CONFIG)
    again.load_state_dict(state, strict=True)
    assert all(torch.equal(state[k], again.state_dict()[k]) for k in state)


def test_a_patch_thinner_than_the_slab_is_refused(lite_medsam):
    net = TinyVitSlices(PredictorConfig(architecture="tinyvit25d", channels=(8,), slab=5),
                        encoder=lite_medsam.image_encoder)
    with pytest.raises(ModelConfigError, match="at least 5 slices"):
        net(torch.zeros(1, 1, 3, 16, 16))
    assert np.isclose(sum(p.numel() for p in net.head.parameters()), 256 * 8 + 8)


def _sphere_patches(n: int, size: int = 16):
    from wsnodule_core.flow.patches import PatchConfig, PatchSet

    rng = np.random.default_rng(n)
    z, y, x = np.indices((size,) * 3)
    images = (0.1 + 0.03 * rng.standard_normal((n, size, size, size))).clip(0, 1)
    masks = np.zeros((n, size, size, size), np.uint16)
    labels = (np.arange(n) % 2).astype(np.int8)
    for i in np.flatnonzero(labels):
        ball = (z - size // 2) ** 2 + (y - size // 2) ** 2 + (x - size // 2) ** 2 <= 9
        images[i][ball], masks[i][ball] = 0.55, 1
    return PatchSet(images.astype(np.float16), labels, masks, np.ones(images.shape, bool), labels.astype(np.int32),
                    np.array([f"c{i}" for i in range(n)], dtype=object), np.zeros((n, 3)),
                    np.tile(np.eye(3), (n, 1, 1)), np.zeros((n, 3)), PatchConfig(size=size))


def test_a_frozen_encoder_head_trains_on_cached_embeddings_equal_to_the_full_forward(tmp_path, lite_medsam):
    from wsnodule_core.flow.predictors import (
        EmbeddingPredictor,
        PredictorTrainConfig,
        load_predictor,
        train_predictor,
    )

    train, val = _sphere_patches(6), _sphere_patches(2)
    cache = tmp_path / "cache"
    config = PredictorTrainConfig("tinyvit25d", channels=(8,), epochs=2, batch_size=2, lr=3e-3, device="cpu",
                                  embedding_cache=str(cache))
    assert config.uses_cached_embeddings and not PredictorTrainConfig(
        "tinyvit25d", fine_tune_encoder=True).uses_cached_embeddings
    result = train_predictor((train, val), tmp_path / "run", config)
    assert len(list(cache.glob("*.pt"))) == 8  # one slab slice per patch, encoded once
    assert {"val_accuracy", "val_auc"} <= set(result.history[-1])
    again = train_predictor((train, val), tmp_path / "run2", config)
    assert len(list(cache.glob("*.pt"))) == 8  # the second run reads every embedding
    first, second = result.model.state_dict(), again.model.state_dict()
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    model, _ = load_predictor(tmp_path / "run" / "last.pt", "cpu")
    assert not any(".encoder." in k for k in model.state_dict())
    images = torch.from_numpy(val.images.astype(np.float32))[:, None]
    with torch.no_grad():
        full = model(images)
        cached = EmbeddingPredictor(model.net)(model.net.embed_patches(val.images, cache=None))
    assert torch.allclose(full, cached, atol=2e-2), (full, cached)
