"""Flow patch predictors: output shapes, the 2.5D model's planes, training on an easy task, checkpoints,
exact resume, local pretrained weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from wsnodule_core.errors import CheckpointError, ModelConfigError, OutputExistsError
from wsnodule_core.flow.patches import PatchConfig, PatchSet
from wsnodule_core.flow.predictors import (
    Orthogonal25D,
    Predictor,
    PredictorConfig,
    PredictorModule,
    PredictorTrainConfig,
    build_predictor,
    evaluate_predictor,
    load_predictor,
    predict_patches,
    train_predictor,
    two_class_logits,
)
from wsnodule_core.training.callbacks import TrainCallbacks
from wsnodule_core.training.checkpoint import save_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CNN_ARCHITECTURES = ("cnn3d", "ortho25d")  # tinyvit25d (LiteMedSAM): tests/flow/test_tinyvit_predictor.py


def sphere_patches(n: int, size: int = 16, seed: int = 0) -> PatchSet:
    """``n`` noisy cubes at lung level, every second one with a bright sphere (label 1) near the centre."""
    rng = np.random.default_rng(seed)
    z, y, x = np.indices((size,) * 3)
    images = (0.1 + 0.03 * rng.standard_normal((n, size, size, size))).clip(0, 1)
    masks = np.zeros((n, size, size, size), np.uint16)
    labels = (np.arange(n) % 2).astype(np.int8)
    for i in np.flatnonzero(labels):
        c = rng.integers(size // 2 - 2, size // 2 + 2, 3)
        ball = (z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2 <= rng.integers(2, 4) ** 2
        images[i][ball] = 0.55
        masks[i][ball] = 1
    return PatchSet(images.astype(np.float16), labels, masks, np.ones((n, size, size, size), bool),
                    labels.astype(np.int32), np.array([f"c{i}" for i in range(n)], dtype=object),
                    np.zeros((n, 3)), np.tile(np.eye(3), (n, 1, 1)), np.zeros((n, 3)), PatchConfig(size=size))


SMALL = dict(channels=(8, 16), batch_size=8, lr=3e-3, device="cpu")


@pytest.fixture(scope="module")
def spheres():
    return sphere_patches(48, seed=1), sphere_patches(24, seed=2)


@pytest.mark.parametrize("architecture", CNN_ARCHITECTURES)
def test_two_logits_for_several_sizes(architecture):
    model = build_predictor(PredictorConfig(architecture, channels=(4, 8, 16)), seed=0).eval()
    assert isinstance(model, Predictor)
    for shape in [(1, 16, 16, 16), (3, 24, 24, 24), (2, 32, 32, 32), (2, 16, 20, 24)]:
        with torch.no_grad():
            out = model(torch.rand(shape[0], 1, *shape[1:]))
        assert out.shape == (shape[0], 2) and torch.isfinite(out).all()
    assert model.cam_layer in dict(model.named_modules()) and model.fc_layer in dict(model.named_modules())


class _OneLogit(nn.Module):
    def __init__(self, squeeze: bool):
        super().__init__()
        self.squeeze = squeeze

    def forward(self, x):
        z = x.mean(dim=(1, 2, 3, 4)) * 4 - 1
        return z if self.squeeze else z[:, None]


@pytest.mark.parametrize("squeeze", [True, False])
def test_wrapper_normalises_single_logits(squeeze):
    model = PredictorModule(_OneLogit(squeeze))
    x = torch.rand(5, 1, 8, 8, 8)
    z = x.mean(dim=(1, 2, 3, 4)) * 4 - 1
    logits = model(x)
    assert logits.shape == (5, 2)
    assert torch.allclose(torch.softmax(logits, 1)[:, 1], torch.sigmoid(z), atol=1e-6)
    assert torch.allclose(model.nodule_logit(x), z, atol=1e-6)
    assert torch.allclose(model.probability(x), torch.sigmoid(z), atol=1e-6)


def test_wrapper_refuses_other_outputs_and_unknown_layers():
    with pytest.raises(ModelConfigError, match=r"\[B, 2\]"):
        PredictorModule(nn.Flatten())(torch.rand(2, 1, 2, 2, 2))
    with pytest.raises(ModelConfigError, match="no layer"):
        PredictorModule(_OneLogit(True), cam_layer="features")


@pytest.mark.parametrize("slab", [1, 3])
def test_ortho25d_sees_only_the_three_central_planes(slab):
    model = Orthogonal25D(PredictorConfig("ortho25d", channels=(4, 8), slab=slab)).eval()
    x = torch.rand(2, 1, 16, 16, 16)
    changed = x.clone()
    keep = torch.zeros_like(x, dtype=torch.bool)
    central = slice(8 - slab // 2, 8 + slab // 2 + 1)
    keep[:, :, central], keep[:, :, :, central], keep[:, :, :, :, central] = True, True, True
    changed[~keep] = torch.rand(int((~keep).sum()))
    with torch.no_grad():
        assert torch.allclose(model(x), model(changed), atol=1e-6)
        for voxel in [(8 + slab // 2, 3, 3), (3, 8 - slab // 2, 3), (3, 3, 8 + slab // 2)]:  # one per slab
            moved = changed.clone()
            moved[(slice(None), 0, *voxel)] += 0.5
            assert not torch.allclose(model(x), model(moved), atol=1e-6)
        # pooling the lifted volume = the pooled plane features side by side (checked below)
        maps = [model.encoder(p) for p in model.planes(x)]
        lifted = model.lift(*maps).mean(dim=(2, 3, 4))
        assert torch.allclose(lifted, torch.cat([m.mean(dim=(2, 3)) for m in maps], 1), atol=1e-6)
    # guidance gradients reach the central slabs only
    wrapped = PredictorModule(model)
    x.requires_grad_(True)
    wrapped.nodule_logit(x).sum().backward()
    assert torch.all(x.grad[~keep] == 0) and torch.count_nonzero(x.grad[keep]) > 0.9 * int(keep.sum())


@pytest.mark.parametrize("architecture", CNN_ARCHITECTURES)
def test_training_learns_bright_spheres(tmp_path, spheres, architecture):
    train, val = spheres
    untrained = evaluate_predictor(build_predictor(PredictorConfig(architecture, channels=(8, 16)), seed=0),
                                   val)
    config = PredictorTrainConfig(architecture, epochs=3, **SMALL)
    steps = []
    result = train_predictor((train, val), tmp_path / "run", config,
                             TrainCallbacks(lambda s, t, loss: steps.append(loss)))
    assert len(steps) == 3 * (48 // 8) and result.epochs_completed == 3 and not result.cancelled
    assert untrained["accuracy"] <= 0.75
    assert result.history[-1]["val_accuracy"] >= 0.9
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    p = predict_patches(result.model, val.images)
    assert p[val.labels == 1].mean() > p[val.labels == 0].mean() + 0.3


def test_checkpoint_round_trip(tmp_path, spheres):
    train, val = spheres
    result = train_predictor((train, val), tmp_path / "run",
                             PredictorTrainConfig("ortho25d", epochs=2, **SMALL))
    model, checkpoint = load_predictor(tmp_path / "run" / "last.pt")
    assert checkpoint.kind == "flow-predictor" and checkpoint.epoch == 2
    assert checkpoint.raw["patch_config"] == train.config.to_dict()
    assert PredictorConfig.from_dict(checkpoint.model_config).architecture == "ortho25d"
    x = torch.from_numpy(val.images[:6].astype(np.float32))[:, None]
    with torch.no_grad():
        assert torch.equal(model(x), result.model(x))
    best, _ = load_predictor(tmp_path / "run")  # the folder: best.pt
    assert isinstance(best, PredictorModule)
    save_checkpoint(tmp_path / "other.pt", {"kind": "nam-multigap", "model_state": {}})
    with pytest.raises(CheckpointError, match="not a flow predictor"):
        load_predictor(tmp_path / "other.pt")


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_resume_is_exact_and_folders_are_protected(tmp_path, spheres):
    train, val = spheres
    config = PredictorTrainConfig("cnn3d", channels=(4, 8), epochs=2, batch_size=8, lr=3e-3, device="cpu")
    full = train_predictor((train, val), tmp_path / "full", config)
    one = PredictorTrainConfig(**{**config.to_dict(), "epochs": 1})
    train_predictor((train, val), tmp_path / "split", one)
    resumed = train_predictor((train, val), tmp_path / "split", config, resume=True)
    calls = []
    cut = train_predictor((train, val), tmp_path / "cut", config,
                          TrainCallbacks(stop_fn=lambda: calls.append(1) or len(calls) == 8))
    assert cut.cancelled and cut.global_step == 8
    again = train_predictor((train, val), tmp_path / "cut", None, resume=True)
    for other in (resumed, again):
        assert other.global_step == full.global_step
        for key, value in _state(full.model).items():
            assert torch.equal(value, _state(other.model)[key]), key
    with pytest.raises(OutputExistsError, match="resume"):
        train_predictor((train, val), tmp_path / "full", config)
    with pytest.raises(CheckpointError, match="same model settings"):
        train_predictor((train, val), tmp_path / "full",
                        PredictorTrainConfig(**{**config.to_dict(), "architecture": "ortho25d"}), resume=True)


def test_pretrained_weights_come_from_a_local_file(tmp_path):
    source = build_predictor(PredictorConfig("cnn3d", channels=(4, 8)), seed=1)
    torch.save(source.net.state_dict(), tmp_path / "weights.pt")  # keys without the "net." prefix
    weights = str(tmp_path / "weights.pt")
    loaded = build_predictor(PredictorConfig("cnn3d", channels=(4, 8), pretrained_path=weights), seed=2)
    fresh = build_predictor(PredictorConfig("cnn3d", channels=(4, 8)), seed=2)
    x = torch.rand(2, 1, 16, 16, 16)
    with torch.no_grad():
        assert torch.allclose(loaded(x), source(x)) and not torch.allclose(fresh(x), source(x))
    with pytest.raises(CheckpointError, match="no such weights file"):
        build_predictor(PredictorConfig(pretrained_path=str(tmp_path / "missing.pt")))
    with pytest.raises(CheckpointError, match="fits"):
        build_predictor(PredictorConfig("ortho25d", channels=(3, 5), pretrained_path=weights))


def test_config_validation():
    with pytest.raises(ModelConfigError, match="architecture"):
        PredictorConfig("vit")
    with pytest.raises(ModelConfigError, match="slab"):
        PredictorConfig("ortho25d", slab=2)
    with pytest.raises(ModelConfigError, match="norm"):
        PredictorTrainConfig(norm="layer")
    with pytest.raises(ModelConfigError, match="batch_size"):
        PredictorTrainConfig(batch_size=0)
    with pytest.raises(ModelConfigError, match="too small"):
        train_predictor(sphere_patches(8, size=8), "unused",
                        PredictorTrainConfig(channels=(4, 8, 16, 32), device="cpu"))


def test_z_smoothing_is_part_of_the_model_and_survives_its_checkpoint(tmp_path, spheres):
    from wsnodule_core.flow.predictors import smooth_along_z

    x = torch.zeros(2, 1, 21, 4, 4)
    x[:, :, 10] = 1.0
    smooth = smooth_along_z(x, 2.0)
    assert torch.allclose(smooth.sum(dim=2), x.sum(dim=2), atol=1e-5)  # mass kept along z
    assert torch.allclose(smooth[:, :, :, 0, 0, None, None].expand_as(smooth), smooth)  # nothing mixes in-plane
    assert float(smooth[0, 0, 10, 0, 0]) < 0.25 and float(smooth[0, 0, 12, 0, 0]) > 0.1
    train, val = spheres
    config = PredictorTrainConfig("cnn3d", epochs=1, z_smooth=1.5, **SMALL)
    result = train_predictor((train, val), tmp_path / "run", config)
    model, _ = load_predictor(tmp_path / "run" / "last.pt", "cpu")
    assert model.config.z_smooth == 1.5
    patch = torch.from_numpy(val.images[:2].astype(np.float32))[:, None]
    with torch.no_grad():
        assert torch.allclose(model(patch), two_class_logits(model.net(smooth_along_z(patch, 1.5))), atol=1e-5)
        assert torch.allclose(model(patch), result.model.eval()(patch), atol=1e-5)
    with pytest.raises(ModelConfigError, match="z_smooth"):
        PredictorConfig(z_smooth=-1)
