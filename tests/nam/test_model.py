"""The multi-GAP classifier: topology, NAMs (eqs. 2 and 3), ImageNet loading, CT normalisation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from wsnodule_core.errors import CheckpointError, ModelConfigError
from wsnodule_core.nam.model import (MultiGapClassifier, MultiGapConfig, MultiGapOutput, nodule_activation_map,
                                     vgg16_backbone_state)

# torchvision vgg16 "features" indices of the 13 convolutions and their (out, in) channels
TV_CONVS = {0: (64, 3), 2: (64, 64), 5: (128, 64), 7: (128, 128), 10: (256, 128), 12: (256, 256),
            14: (256, 256), 17: (512, 256), 19: (512, 512), 21: (512, 512), 24: (512, 512), 26: (512, 512),
            28: (512, 512)}


def _model(n_gap: int, **kwargs) -> MultiGapClassifier:
    torch.manual_seed(0)
    model = MultiGapClassifier(MultiGapConfig(n_gap=n_gap, width="narrow", **kwargs)).eval()
    with torch.no_grad():  # a non-trivial FC so eq. 3 is tested on sizeable numbers
        model.fc.weight.normal_(0.0, 1.0)
        model.fc.bias.copy_(torch.tensor([0.3, -0.7]))
    return model


@pytest.mark.parametrize("n_gap", [1, 2, 3])
def test_branch_shapes_follow_vgg16_strides(n_gap):
    model = _model(n_gap)
    out = model.forward_with_maps(torch.rand(2, 1, 64, 64))
    assert isinstance(out, MultiGapOutput)
    assert out.logits.shape == (2, 2)
    # pool5 removed: conv5_3 at stride 16, conv4_3 at 8, conv3_3 at 4; narrow heads have 128 channels
    expected = [(2, 128, 4, 4), (2, 128, 8, 8), (2, 128, 16, 16)][:n_gap]
    assert [tuple(a.shape) for a in out.activations] == expected
    assert [tuple(n.shape) for n in out.nams] == [s[:1] + s[2:] for s in expected]
    assert all(float(a.min()) >= 0 for a in out.activations)  # after the head's ReLU
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 13 + n_gap
    assert model.fc.in_features == 128 * n_gap


@pytest.mark.parametrize("n_gap", [1, 2, 3])
def test_class_score_is_the_summed_nam(n_gap):
    """Eq. 3 with GAP as an average: logit_nodule = sum_b mean(NAM_b) + bias_nodule."""
    model = _model(n_gap)
    x = torch.rand(3, 1, 64, 80)
    out = model.forward_with_maps(x)
    from_maps = sum(n.mean(dim=(1, 2)) for n in out.nams) + model.fc.bias[1]
    assert torch.allclose(out.logits[:, 1], from_maps, atol=1e-5, rtol=0)
    assert torch.allclose(model(x), out.logits, atol=1e-6)
    assert float(out.logits[:, 1].abs().max()) > 0.01  # not trivially zero


def test_nam_is_the_fc_weighted_sum_of_activations():
    """Eq. 2 checked one unit at a time for the 2-GAP model's second branch."""
    model = _model(2)
    out = model.forward_with_maps(torch.rand(1, 1, 64, 64))
    weights = model.fc.weight[1, 128:]
    manual = torch.zeros_like(out.nams[1][0])
    for k in range(128):
        manual += weights[k] * out.activations[1][0, k]
    assert torch.allclose(out.nams[1][0], manual, atol=1e-5)


def test_nodule_activation_map_upsamples_bilinearly_and_sums():
    nams = (torch.tensor([[[1.0, 3.0], [1.0, 3.0]]]), torch.full((1, 4, 4), 2.0))
    out = MultiGapOutput(torch.zeros(1, 2), (), nams)
    deep = nodule_activation_map(out, (4, 4), branches=(0,))
    # align_corners=False, 2 -> 4 pixels: 1, 1.5, 2.5, 3 along x
    assert torch.allclose(deep[0, 0], torch.tensor([1.0, 1.5, 2.5, 3.0]))
    both = nodule_activation_map(out, (4, 4))
    assert torch.allclose(both, deep + 2.0)
    with pytest.raises(ModelConfigError):
        nodule_activation_map(out, (4, 4), branches=(2,))


def test_narrow_head_default_and_validation():
    assert MultiGapConfig(width="narrow").head_channels == 128
    assert MultiGapConfig().head_channels == 1024
    assert MultiGapConfig(width="narrow", head_channels=32).head_channels == 32
    with pytest.raises(ModelConfigError):
        MultiGapConfig(n_gap=4)
    with pytest.raises(ModelConfigError):
        MultiGapConfig(width="wide")
    with pytest.raises(ModelConfigError, match=r"\(B, 1, H, W\)"):
        _model(1)(torch.rand(1, 3, 32, 32))


def test_batch_norm_variant_keeps_eq3():
    model = _model(3, batch_norm=True)
    out = model.forward_with_maps(torch.rand(2, 1, 64, 64))
    assert torch.allclose(out.logits[:, 1], sum(n.mean(dim=(1, 2)) for n in out.nams) + model.fc.bias[1], atol=1e-5)


def _torchvision_state(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = {}
    for index, (out_c, in_c) in TV_CONVS.items():
        state[f"features.{index}.weight"] = torch.randn(out_c, in_c, 3, 3, generator=g) * 0.05
        state[f"features.{index}.bias"] = torch.randn(out_c, generator=g) * 0.1
    state["classifier.6.weight"] = torch.zeros(1000, 8)  # ignored (the real one is 1000 x 4096)
    return state


def test_imagenet_weights_map_onto_the_backbone(tmp_path):
    state = _torchvision_state()
    path = tmp_path / "vgg16.pth"
    torch.save(state, path)
    model = MultiGapClassifier.from_vgg16_weights(path, MultiGapConfig(n_gap=2, head_channels=8))
    for index in TV_CONVS:
        if index == 0:
            continue
        assert torch.equal(model.features[index].weight, state[f"features.{index}.weight"])
        assert torch.equal(model.features[index].bias, state[f"features.{index}.bias"])
    # conv1_1 folded: the 1-channel model equals replicating the slice to RGB and ImageNet-normalising it
    x = torch.rand(1, 1, 12, 12)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    rgb = (x.repeat(1, 3, 1, 1) - mean) / std
    expected = F.conv2d(rgb, state["features.0.weight"], state["features.0.bias"])  # interior pixels only
    got = model.features[0](x)[:, :, 1:-1, 1:-1]
    assert torch.allclose(got, expected, atol=1e-4)
    # a 3-channel model takes conv1_1 as it is
    rgb_model = MultiGapClassifier.from_vgg16_weights(state, MultiGapConfig(head_channels=8, in_channels=3))
    assert torch.equal(rgb_model.features[0].weight, state["features.0.weight"])


def test_bad_imagenet_weights_are_refused(tmp_path):
    state = _torchvision_state()
    with pytest.raises(ModelConfigError, match="vgg16"):
        MultiGapClassifier.from_vgg16_weights(state, MultiGapConfig(width="narrow"))
    del state["features.28.bias"]
    with pytest.raises(CheckpointError, match="features.28.bias"):
        vgg16_backbone_state(state)
    state = _torchvision_state()
    state["features.5.weight"] = torch.zeros(128, 64, 1, 1)
    with pytest.raises(CheckpointError, match="shape"):
        vgg16_backbone_state(state)
    with pytest.raises(CheckpointError, match="no such"):
        MultiGapClassifier.from_vgg16_weights(tmp_path / "missing.pth", MultiGapConfig(head_channels=8))
