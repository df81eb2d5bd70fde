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
