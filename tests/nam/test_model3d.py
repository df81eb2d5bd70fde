"""The 3D multi-GAP classifier: eq. 3 in 3D, shapes, NAM upsampling, training on phantom patches,
exact resume and checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wsnodule_core.errors import CheckpointError, ModelConfigError
from wsnodule_core.nam.model3d import (MultiGap3DClassifier, MultiGap3DConfig, MultiGap3DOutput,
                                       load_classifier_3d, nodule_activation_map_3d)
from wsnodule_core.nam.patches3d import (PatchSet3D, Train3DConfig, build_model_3d, evaluate_3d,
                                         patches_from_dataset, train_classifier_3d)
from wsnodule_core.training.augment import augment_patches
from wsnodule_core.training.callbacks import TrainCallbacks
from wsnodule_core.training.sampler import BalancedBatchSampler

NARROW3 = dict(width="narrow", channels=(4, 8, 16), head_channels=8)


@pytest.mark.parametrize("n_gap", [1, 2, 3])
@pytest.mark.parametrize("norm", ["group", "batch", "none"])
def test_eq3_nodule_logit_is_sum_of_nam_means_plus_bias(n_gap, norm):
    torch.manual_seed(n_gap)
    model = MultiGap3DClassifier(MultiGap3DConfig(n_gap=n_gap, norm=norm, **NARROW3)).eval()
    with torch.no_grad():
        model.fc.bias.copy_(torch.tensor([0.3, -0.7]))
        out = model.forward_with_maps(torch.rand(3, 1, 16, 16, 24))
        expected = sum(nam.double().mean(dim=(1, 2, 3)) for nam in out.nams) - 0.7
        assert torch.allclose(out.logits[:, 1].double(), expected, atol=1e-5)
        # eq. 2 by hand for the deepest branch: NAM = sum_k w_k a_k
        w = model.fc.weight[1, : model.config.head_channels]
        by_hand = (out.activations[0] * w[None, :, None, None, None]).sum(dim=1)
        assert torch.allclose(out.nams[0], by_hand, atol=1e-5)
        assert torch.allclose(model(torch.zeros(1, 1, 16, 16, 24)), model.forward_with_maps(
            torch.zeros(1, 1, 16, 16, 24)).logits)


@pytest.mark.parametrize("size", [(16, 16, 16), (8, 24, 32), (32, 16, 8)])
def test_shapes_for_any_size_divisible_by_the_pooling(size):
    model = MultiGap3DClassifier(MultiGap3DConfig(n_gap=3, **NARROW3)).eval()
    with torch.no_grad():
        out = model.forward_with_maps(torch.rand(2, 1, *size))
    assert isinstance(out, MultiGap3DOutput)
    assert out.logits.shape == (2, 2)
    d, h, w = size
    expected = [(2, d // 4, h // 4, w // 4), (2, d // 2, h // 2, w // 2), (2, d, h, w)]
    assert [tuple(n.shape) for n in out.nams] == expected
    assert [a.shape[1] for a in out.activations] == [8, 8, 8]
    assert nodule_activation_map_3d(out, size).shape == (2, *size)


def test_sizes_not_divisible_by_the_pooling_are_refused():
    model = MultiGap3DClassifier(MultiGap3DConfig(**NARROW3))
    with pytest.raises(ModelConfigError, match="multiple of 4"):
        model(torch.rand(1, 1, 16, 18, 16))
    with pytest.raises(ModelConfigError, match=r"\(B, 1, D, H, W\)"):
        model(torch.rand(1, 16, 16, 16))
    with pytest.raises(ModelConfigError):
        MultiGap3DConfig(n_gap=4)
    with pytest.raises(ModelConfigError):
        MultiGap3DConfig(width="huge")


def test_nam_upsampling_is_trilinear_and_sums_branches():
    deep = torch.zeros(1, 2, 2, 2)
    deep[0, 0, 0, 0] = 8.0
    fine = torch.ones(1, 4, 4, 4)
    out = MultiGap3DOutput(torch.zeros(1, 2), (), (deep, fine))
    only_deep = nodule_activation_map_3d(out, (4, 4, 4), branches=(0,))
    # align_corners=False: the corner output voxel sits on the corner input voxel's centre region -> 8
    assert float(only_deep[0, 0, 0, 0]) == pytest.approx(8.0)
    # output voxel 1 lies at input coordinate 0.25 along each axis: weight 0.75^3 on the corner
    assert float(only_deep[0, 1, 1, 1]) == pytest.approx(8.0 * 0.75**3)
    both = nodule_activation_map_3d(out, (4, 4, 4))
    assert torch.allclose(both, only_deep + 1.0)
    with pytest.raises(ModelConfigError):
        nodule_activation_map_3d(out, (4, 4, 4), branches=(2,))


def test_augmentation_is_exact_rotation_and_flip():
    x = torch.arange(2 * 4 * 4 * 4, dtype=torch.float32).reshape(2, 1, 4, 4, 4)
    out = augment_patches(x, torch.Generator().manual_seed(3))
    draws = torch.randint(0, 4, (2, 3), generator=torch.Generator().manual_seed(3)).tolist()
    for i, (k, fx, fz) in enumerate(draws):
        expected = torch.rot90(x[i], k, dims=(-2, -1))
        expected = torch.flip(expected, (-1,)) if fx % 2 else expected
        expected = torch.flip(expected, (-3,)) if fz % 2 else expected
        assert torch.equal(out[i], expected)
        assert sorted(out[i].flatten().tolist()) == sorted(x[i].flatten().tolist())


TRAIN = dict(patch_size=16, spacing_mm=2.0, channels=(8, 16, 32), batch_size=12, device="cpu", augment=False,
             lr=3e-3)


@pytest.fixture(scope="module")
def phantom_patches(phantom_dataset):
    """Train patches of the shared tiny phantom set: 16^3 voxels at 2 mm."""
    return patches_from_dataset(phantom_dataset, "train", Train3DConfig(**TRAIN).patch_config())


def test_patches_are_labelled_by_nodule_centres(phantom_dataset, phantom_patches):
    from wsnodule_core.data.dataset import load_dataset

    ps = phantom_patches
    assert ps.images.shape[1:] == (16, 16, 16) and ps.images.dtype == np.float16
    assert 0.0 <= float(ps.images.min()) and float(ps.images.max()) <= 1.0
    cases = {c.case_id: c for c in load_dataset(phantom_dataset).cases("train")}
    for label, case_id, centre in zip(ps.labels, ps.case_ids, ps.centres_xyz):
        nodules = np.array([n.centre_xyz for n in cases[case_id].nodules]).reshape(-1, 3)
        nearest = np.abs(nodules - centre).max(axis=1).min() if len(nodules) else np.inf
        # a positive's nodule centre lies in the central half: within 3 voxels of jitter + rounding per axis
        if label == 1:
            assert nearest <= 3.5 * 2.0 + 1e-6
        else:  # a negative holds no nodule voxel, so no nodule centre within half a patch
            assert nearest > 8.0
    assert ps.n_positive == 4 * sum(len(c.nodules) for c in cases.values()) and ps.n_negative > 0


@pytest.mark.slow
def test_training_a_narrow_model_reduces_the_loss(phantom_patches, tmp_path):
    config = Train3DConfig(**TRAIN, epochs=4)
    before = evaluate_3d(build_model_3d(config), phantom_patches)["loss"]
    steps = []
    result = train_classifier_3d((phantom_patches, None), tmp_path / "run", config,
                                 TrainCallbacks(step_fn=lambda s, t, loss: steps.append(loss)))
    after = evaluate_3d(result.model, phantom_patches)
    assert before == pytest.approx(np.log(2), abs=0.02)  # an untrained model says 50/50
    assert after["loss"] < 0.8 * before
    assert len(steps) == result.global_step == 4 * len(BalancedBatchSampler(phantom_patches.labels, 12))
    assert result.best_path.exists() and result.last_path.exists()
    model, checkpoint = load_classifier_3d(tmp_path / "run" / "last.pt")
    assert checkpoint.train_config["spacing_mm"] == 2.0 and not model.training
    x = torch.from_numpy(phantom_patches.images[:4]).float()[:, None]
    with torch.no_grad():
        assert torch.allclose(model(x), result.model(x), atol=1e-6)


def test_resume_after_a_stop_is_exact(phantom_patches, tmp_path):
    config = Train3DConfig(**{**TRAIN, "augment": True}, epochs=2, max_steps_per_epoch=2)
    straight = train_classifier_3d(phantom_patches, tmp_path / "a", config)
    stopped = train_classifier_3d(phantom_patches, tmp_path / "b", config,
                                  TrainCallbacks(stop_fn=lambda: True))
    assert stopped.cancelled and stopped.global_step == 1
    with pytest.raises(Exception, match="resume"):
        train_classifier_3d(phantom_patches, tmp_path / "b", config)
    resumed = train_classifier_3d(phantom_patches, tmp_path / "b", resume=True)
    assert resumed.global_step == straight.global_step == 4 and not resumed.cancelled
    for (name, a), (_, b) in zip(straight.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(a, b), name


def test_load_refuses_a_2d_checkpoint(tmp_path):
    from wsnodule_core.training.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "x.pt", {"kind": "nam-multigap", "model_config": {}})
    with pytest.raises(CheckpointError, match="not the 3D NAM"):
        load_classifier_3d(tmp_path / "x.pt")
    assert isinstance(PatchSet3D.concatenate([], Train3DConfig(**TRAIN).patch_config()).images, np.ndarray)

