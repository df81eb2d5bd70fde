"""The probability-informed loss: confidence-weighted focal BCE + soft Dice + w * KL."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from wsnodule_core.errors import ModelConfigError, WsnoduleError
from wsnodule_core.pw4medseg.loss import (
    LossConfig,
    LossInputError,
    ProbabilityInformedLoss,
    focal_bce,
    soft_dice_loss,
)


def soft_target(shape=(2, 1, 6, 6, 6), seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g) ** 2  # a spread of probabilities, many low


def test_default_weights_are_p_for_foreground_and_one_minus_p_for_background():
    loss = ProbabilityInformedLoss()
    p = torch.tensor([0.0, 0.2, 0.5, 0.51, 0.9, 1.0])
    torch.testing.assert_close(loss.voxel_weights(p), torch.tensor([1.0, 0.8, 0.5, 0.51, 0.9, 1.0]))
    ignore = torch.tensor([False, True, False, False, True, False])
    expected = torch.tensor([1.0, 0, 0.5, 0.51, 0, 1.0])
    torch.testing.assert_close(loss.voxel_weights(p, ignore=ignore), expected)


@pytest.mark.parametrize("use_ignore", [False, True])
def test_voxels_with_zero_weight_do_not_contribute(use_ignore):
    torch.manual_seed(0)
    target = soft_target()
    dropped = torch.rand(target.shape) < 0.4
    logits = torch.randn(target.shape)
    changed = torch.where(dropped, torch.randn(target.shape) * 5, logits)
    loss = ProbabilityInformedLoss()
    kw = {"ignore": dropped} if use_ignore else {"confidence": (~dropped).float() * torch.rand(target.shape)}
    a, parts_a = loss(logits, target, **kw)
    b, parts_b = loss(changed, target, **kw)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(parts_a["dice"], parts_b["dice"])
    # ... and they get no gradient
    logits.requires_grad_(True)
    loss(logits, target, **kw)[0].backward()
    assert logits.grad[dropped].abs().max() == 0 and logits.grad[~dropped].abs().max() > 0


def test_confidence_scales_the_classification_term():
    torch.manual_seed(1)
    target = soft_target()
    logits = torch.randn(target.shape)
    loss = ProbabilityInformedLoss(LossConfig(dice_weight=0.0, kl_weight=0.0))
    full, _ = loss(logits, target, confidence=torch.ones_like(target))
    half, _ = loss(logits, target, confidence=torch.full_like(target, 0.5))
    torch.testing.assert_close(half, 0.5 * full)


def test_unweighted_bce_is_the_mean_bce_of_the_binarised_target():
    torch.manual_seed(2)
    target = soft_target()
    logits = torch.randn(target.shape)
    loss = ProbabilityInformedLoss(LossConfig(classification="bce", confidence_weighted=False))
    _, parts = loss(logits, target)
    expected = F.binary_cross_entropy_with_logits(logits, (target > 0.5).float())
    torch.testing.assert_close(parts["classification"], expected)


def test_focal_reduces_to_bce_at_gamma_zero_and_matches_its_formula():
    torch.manual_seed(3)
    logits = torch.randn(200) * 3
    y = (torch.rand(200) > 0.5).float()
    torch.testing.assert_close(focal_bce(logits, y, gamma=0.0), F.binary_cross_entropy_with_logits(
        logits, y, reduction="none"))
    p_t = torch.where(y > 0, torch.sigmoid(logits), 1 - torch.sigmoid(logits))
    torch.testing.assert_close(focal_bce(logits, y, gamma=2.0), -(1 - p_t) ** 2 * torch.log(p_t), rtol=1e-4,
                               atol=1e-6)
    target = soft_target()
    grid_logits = torch.randn(target.shape)
    focal0 = ProbabilityInformedLoss(LossConfig(classification="focal", gamma=0.0))(grid_logits, target)[0]
    bce = ProbabilityInformedLoss(LossConfig(classification="bce", gamma=2.0))(grid_logits, target)[0]
    torch.testing.assert_close(focal0, bce)
    focal2 = ProbabilityInformedLoss(LossConfig(gamma=2.0))(grid_logits, target)[1]["classification"]
    assert focal2 < ProbabilityInformedLoss(LossConfig(classification="bce"))(grid_logits, target)[1][
        "classification"]


def test_soft_dice_is_zero_for_a_perfect_prediction():
    target = soft_target()
    logits = torch.logit(target.clamp(1e-6, 1 - 1e-6))
    _, parts = ProbabilityInformedLoss()(logits, target)
    assert float(parts["dice"]) < 1e-4
    binary = (target > 0.5).float()
    _, parts = ProbabilityInformedLoss()((binary * 2 - 1) * 30, binary)
    assert float(parts["dice"]) < 1e-6
    _, parts = ProbabilityInformedLoss()(-(binary * 2 - 1) * 30, binary)  # everything wrong
    assert float(parts["dice"]) > 0.99


def test_kl_weight_scales_and_sums_layers():
    torch.manual_seed(4)
    target = soft_target()
    logits = torch.randn(target.shape)
    kl = torch.tensor([0.2, 0.5, 0.1])
    totals = {w: ProbabilityInformedLoss(LossConfig(kl_weight=w))(logits, target, kl)
              for w in (0.0, 0.3, 0.6)}
    base = totals[0.0][0]
    torch.testing.assert_close(totals[0.3][0] - base, torch.tensor(0.3 * 0.8))
    torch.testing.assert_close(totals[0.6][0] - base, 2 * (totals[0.3][0] - base))
    torch.testing.assert_close(totals[0.3][1]["kl"], torch.tensor(0.8))
    assert float(ProbabilityInformedLoss()(logits, target)[1]["kl"]) == 0.0  # no KL given
    parts = totals[0.3][1]
    torch.testing.assert_close(parts["total"], parts["classification"] + parts["dice"] + 0.3 * parts["kl"])


def test_empty_targets():
    torch.manual_seed(5)
    target = soft_target()
    target[1] = 0.0  # second crop holds no nodule
    logits = torch.randn(target.shape, requires_grad=True)
    total, parts = ProbabilityInformedLoss()(logits, target)
    total.backward()
    assert torch.isfinite(total) and torch.isfinite(logits.grad).all()
    alone = soft_dice_loss(torch.sigmoid(logits[:1]), target[:1], ProbabilityInformedLoss().voxel_weights(
        target[:1]))
    torch.testing.assert_close(parts["dice"], alone.detach())  # the empty crop is out of the Dice mean
    zeros = torch.zeros_like(target)
    total, parts = ProbabilityInformedLoss()(torch.full_like(target, -3.0, requires_grad=True), zeros)
    assert float(parts["dice"]) == 0 and float(parts["classification"]) > 0
    total.backward()
    pooled = ProbabilityInformedLoss(LossConfig(dice_batch=True))(logits.detach(), target)[1]["dice"]
    assert 0 < float(pooled) < 1


def test_input_validation():
    loss = ProbabilityInformedLoss()
    target = soft_target()
    with pytest.raises(LossInputError, match="target has shape"):
        loss(torch.zeros(2, 1, 6, 6, 5), target)
    with pytest.raises(LossInputError, match="confidence has shape"):
        loss(torch.zeros_like(target), target, confidence=torch.ones(6, 6, 6))
    with pytest.raises(LossInputError, match="bool"):
        loss(torch.zeros_like(target), target, ignore=torch.zeros_like(target))
    with pytest.raises(LossInputError, match=r"\[0, 1\]"):
        loss(torch.zeros_like(target), target * 2)
    assert issubclass(LossInputError, WsnoduleError)
    with pytest.raises(ModelConfigError, match="classification"):
        LossConfig(classification="dice")
    with pytest.raises(ModelConfigError, match="kl_weight"):
        LossConfig(kl_weight=-1)
    assert LossConfig.from_dict(LossConfig(gamma=1.0).to_dict()) == LossConfig(gamma=1.0)
