"""The probabilistic self-attention (PMSA) and the probabilistic UNETR."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from wsnodule_core.errors import ModelConfigError
from wsnodule_core.pw4medseg.model import (
    ProbabilisticSelfAttention,
    ProbabilisticTransformerBlock,
    ProbabilisticUNETR,
    PTransformerConfig,
    gaussian_kl,
)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one thread is faster than several on a shared CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_config(**overrides) -> PTransformerConfig:
    base = dict(img_size=(16, 16, 16), patch_size=8, hidden_size=16, num_layers=2, num_heads=2, mlp_dim=32,
                feature_size=4)
    return PTransformerConfig.compact(**{**base, **overrides})


def brute_force(attn: ProbabilisticSelfAttention, x: torch.Tensor, eps: torch.Tensor | None):
    """PMSA as written in the paper: the [q_i; k_j] concatenation materialised, one head at a time."""
    q, k, v = attn.split_qkv(x)
    b, h, n, d = q.shape
    pair = torch.cat([q.unsqueeze(3).expand(b, h, n, n, d), k.unsqueeze(2).expand(b, h, n, n, d)], dim=-1)
    params = attn.pair_proj(pair)  # (B, H, N, N, 2 * pair_heads)
    heads = [params[:, i, :, :, 2 * (i if attn.pair_heads > 1 else 0):][..., :2] for i in range(h)]
    params = torch.stack(heads, dim=1)
    mu, logvar = params[..., 0], params[..., 1]
    logits = mu if eps is None else mu + torch.exp(0.5 * logvar) * eps
    out = torch.softmax(logits, dim=-1) @ v
    out = attn.out_proj(out.transpose(1, 2).reshape(b, n, h * d))
    prior = (q @ k.transpose(-1, -2)) / math.sqrt(d)
    kl = kl_divergence(Normal(mu, torch.exp(0.5 * logvar)), Normal(prior, attn.prior_std)).mean()
    return out, kl, mu, logvar


@pytest.mark.parametrize("per_head", [False, True])
@pytest.mark.parametrize("prior_std", [1.0, 0.5])
def test_pmsa_equals_brute_force_concatenation(per_head, prior_std):
    torch.manual_seed(0)
    attn = ProbabilisticSelfAttention(12, 3, prior_std=prior_std, per_head_pair_linear=per_head)
    attn = attn.double().eval()
    with torch.no_grad():
        attn.pair_proj.weight.mul_(3.0)  # make mu and sigma clearly non-trivial
    x = torch.randn(2, 7, 12, dtype=torch.float64)
    with torch.no_grad():
        out, kl = attn(x, stochastic=False)
        ref, ref_kl, mu, _ = brute_force(attn, x, None)
        torch.testing.assert_close(out, ref)
        torch.testing.assert_close(kl, ref_kl)
        torch.manual_seed(5)
        out_s, kl_s = attn(x, stochastic=True)
        torch.manual_seed(5)
        ref_s, _, _, _ = brute_force(attn, x, torch.randn_like(mu))
        torch.testing.assert_close(out_s, ref_s)
        torch.testing.assert_close(kl_s, ref_kl)  # the KL does not depend on the sample
        assert not torch.allclose(out_s, out)


def test_deterministic_mode_is_softmax_of_mu_times_v():
    torch.manual_seed(1)
    attn = ProbabilisticSelfAttention(8, 2).train()  # training mode, sampling switched off
    x = torch.randn(1, 5, 8)
    with torch.no_grad():
        out, _ = attn(x, stochastic=False)
        q, k, v = attn.split_qkv(x)
        mu, _ = attn.pair_parameters(q, k)
        expected = attn.out_proj((torch.softmax(mu, -1) @ v).transpose(1, 2).reshape(1, 5, 8))
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("s", [1.0, 0.3, 2.0])
def test_gaussian_kl_closed_form(s):
    torch.manual_seed(2)
    prior = torch.randn(4, 6, dtype=torch.float64)
    zero = gaussian_kl(prior.clone(), torch.full_like(prior, math.log(s * s)), prior, s)
    assert torch.allclose(zero, torch.zeros_like(zero), atol=1e-12)
    mu = prior + torch.randn_like(prior)
    logvar = torch.randn_like(prior)
    kl = gaussian_kl(mu, logvar, prior, s)
    expected = kl_divergence(Normal(mu, torch.exp(0.5 * logvar)), Normal(prior, s))
    torch.testing.assert_close(kl, expected)
    assert (kl > 0).all()
    # the variance alone (means equal) also costs
    assert (gaussian_kl(prior, torch.full_like(prior, math.log(s * s) + 0.5), prior, s) > 0).all()


@pytest.mark.parametrize("s", [1.0, 0.5])
def test_layer_kl_zero_when_mu_is_the_prior_and_sigma_is_s(s):
    attn = ProbabilisticSelfAttention(8, 2, prior_std=s)
    with torch.no_grad():
        attn.qkv.weight.zero_()  # q = k = 0: the prior mean q.k / sqrt(d) is 0 everywhere
        attn.pair_proj.weight.zero_()
        attn.pair_proj.bias.copy_(torch.tensor([0.0, math.log(s * s)]))  # mu = 0, sigma = s
    _, kl = attn(torch.randn(2, 9, 8))
    assert abs(kl.item()) < 1e-6
    with torch.no_grad():
        attn.pair_proj.bias.copy_(torch.tensor([0.7, math.log(s * s)]))
    _, kl = attn(torch.randn(2, 9, 8))
    assert kl.item() == pytest.approx(0.5 * 0.7 ** 2 / s ** 2, rel=1e-5)


def test_sampling_only_when_stochastic():
    torch.manual_seed(3)
    block = ProbabilisticTransformerBlock(8, 16, 2)
    x = torch.randn(1, 6, 8)
    with torch.no_grad():
        block.eval()
        assert torch.equal(block(x)[0], block(x)[0])
        assert not torch.allclose(block(x, stochastic=True)[0], block(x, stochastic=True)[0])
        block.train()
        assert not torch.allclose(block(x)[0], block(x)[0])
        assert torch.equal(block(x, stochastic=False)[0], block(x, stochastic=False)[0])


def test_unetr_stochastic_passes_and_mc_predict():
    torch.manual_seed(4)
    model = ProbabilisticUNETR(tiny_config()).eval()
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
        assert not torch.allclose(model(x, stochastic=True), model(x, stochastic=True))
    mean, std = model.mc_predict(x, passes=3)
    assert mean.shape == std.shape == x.shape
    assert float(std.max()) > 0 and 0 <= float(mean.min()) and float(mean.max()) <= 1


@pytest.mark.parametrize("shape", [(16, 16, 16), (24, 32, 16)])
def test_any_token_count(shape):
    torch.manual_seed(5)
    model = ProbabilisticUNETR(tiny_config())
    x = torch.randn(2, 1, *shape)
    logits, kl = model(x, return_kl=True)
    assert logits.shape == x.shape
    assert kl.shape == (2,) and torch.isfinite(kl).all() and (kl >= 0).all()


def test_input_size_errors_say_which_sizes_work():
    model = ProbabilisticUNETR(tiny_config())
    with pytest.raises(ModelConfigError, match="multiple of the patch size 8"):
        model(torch.randn(1, 1, 16, 20, 16))
    with pytest.raises(ModelConfigError, match="expects"):
        model(torch.randn(1, 2, 16, 16, 16))


def test_gradient_reaches_every_parameter():
    torch.manual_seed(6)
    model = ProbabilisticUNETR(tiny_config(num_layers=4, patch_size=16, img_size=(32, 32, 32))).train()
    logits, kl = model(torch.randn(1, 1, 32, 32, 48), return_kl=True)  # not the training size
    ((logits - 0.3) ** 2).mean().add(kl.sum()).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


def test_skips_follow_unetr():
    assert PTransformerConfig.paper().skip_layers == (3, 6, 9)
    assert PTransformerConfig.paper(num_layers=8).skip_layers == (2, 4, 6)
    assert tiny_config(num_layers=4).skip_layers == (1, 2)  # patch 8: 3 up-sampling stages, 2 skips
    model = ProbabilisticUNETR(tiny_config(num_layers=4))
    assert len(model.skip_encoders) == 2 and len(model.decoders) == 3


def test_config_validation_and_round_trip():
    with pytest.raises(ModelConfigError, match="power of two"):
        PTransformerConfig(patch_size=12)
    with pytest.raises(ModelConfigError, match="multiples of patch_size"):
        PTransformerConfig(img_size=(96, 96, 40))
    with pytest.raises(ModelConfigError, match="divisible"):
        PTransformerConfig(hidden_size=100, num_heads=12)
    config = PTransformerConfig.compact(img_size=48, per_head_pair_linear=True)
    assert config.img_size == (48, 48, 48)
    assert PTransformerConfig.from_dict(config.to_dict()) == config
