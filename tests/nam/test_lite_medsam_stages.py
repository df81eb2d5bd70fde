"""2-/3-GAP on the LiteMedSAM backbone (heads on earlier TinyViT stages), the features cache at inference,
and the slice choices of real-data training, on a tiny stand-in with TinyViT's structure (fast; the real
encoder is checked against it in test_lite_medsam_backbone.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from wsnodule_core.data.slices import SliceConfig, slices_from_arrays
from wsnodule_core.errors import ModelConfigError
from wsnodule_core.foundation import EmbeddingCache
from wsnodule_core.io.volume import Volume
from wsnodule_core.nam.heads import MultiGapConfig
from wsnodule_core.nam.lite_medsam_model import (
    STAGE_CHANNELS,
    LiteMedSamClassifier,
    cached_stages,
    encoder_stages,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class _Tokens(nn.Module):
    """Tokens (B, side^2, out) from tokens or an image, average-pooled to ``side``."""

    def __init__(self, channels_in: int, channels_out: int, side: int) -> None:
        super().__init__()
        self.proj, self.side = nn.Linear(channels_in, channels_out), side

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 3:  # tokens: back to an image
            b, n, c = x.shape
            s = int(round(n ** 0.5))
            x = x.view(b, s, s, c).permute(0, 3, 1, 2)
        x = nn.functional.adaptive_avg_pool2d(x, self.side)
        return self.proj(x.flatten(2).transpose(1, 2))


class StubTinyVit(nn.Module):
    """TinyViT's shapes at a 256-px input: stage 0 -> 128^2 x 128, stage 1 -> 64^2 x 160, then 320, neck 256."""

    def __init__(self) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.layers = nn.ModuleList([_Tokens(8, 128, 128), _Tokens(128, 160, 64), _Tokens(160, 320, 64),
                                     _Tokens(320, 320, 64)])
        self.neck = nn.Conv2d(320, 256, 1)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # as TinyViT's forward_features
        self.calls += 1
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x)
        return self.neck(x.view(len(x), 64, 64, -1).permute(0, 3, 1, 2))


@pytest.fixture
def stub():
    torch.manual_seed(0)
    return StubTinyVit().eval()


def test_the_stages_stack_after_the_embedding_it_equals(stub):
    x = torch.rand(2, 3, 256, 256)
    with torch.no_grad():
        embedding = stub(x)
        for n_gap in (2, 3):
            features = encoder_stages(stub, x, n_gap)
            assert features.shape == (2, sum(STAGE_CHANNELS[:n_gap]), 64, 64)
            assert torch.allclose(features[:, :256], embedding, atol=1e-6)
        assert torch.equal(encoder_stages(stub, x, 3)[:, :416], encoder_stages(stub, x, 2))


def test_cached_features_are_read_back_and_serve_fewer_branches(stub, tmp_path):
    cache = EmbeddingCache(tmp_path)
    x = torch.rand(3, 3, 256, 256)
    fresh = cached_stages(stub, x, 3, cache)
    calls = stub.calls
    for n_gap in (1, 2, 3):
        again = cached_stages(stub, x, n_gap, cache)
        assert torch.allclose(again, fresh[:, :sum(STAGE_CHANNELS[:n_gap])], atol=2e-3)  # float16 on disk
    assert stub.calls == calls  # all from the cache
    assert len(list(tmp_path.glob("*.pt"))) == 6  # the embedding and the earlier stages of each image
    cached_stages(stub, torch.rand(1, 3, 256, 256), 1, cache)
    assert len(list(tmp_path.glob("*.pt"))) == 7  # 1-GAP stores the embedding only


@pytest.mark.parametrize("n_gap", [1, 2, 3])
def test_multi_gap_heads_keep_eq3_and_a_head_only_state(stub, n_gap, tmp_path):
    torch.manual_seed(1)
    model = LiteMedSamClassifier(MultiGapConfig(backbone="lite_medsam", n_gap=n_gap, head_channels=8),
                                 encoder=stub).eval()
    with torch.no_grad():
        model.fc.weight.normal_(0.0, 1.0)
        out = model.forward_with_maps(torch.rand(2, 1, 96, 96))
    assert len(out.nams) == n_gap and all(n.shape == (2, 64, 64) for n in out.nams)
    summed = sum(n.mean(dim=(1, 2)) for n in out.nams)
    assert torch.allclose(out.logits[:, 1] - model.fc.bias[1], summed, atol=1e-5)  # eq. 3
    assert not [k for k in model.state_dict() if k.startswith("encoder.")]
    with pytest.raises(ModelConfigError, match=f"{n_gap}-GAP head takes features"):
        model.activations(torch.zeros(1, 100, 64, 64))


def test_a_cached_classifier_encodes_each_slice_once(stub, tmp_path):
    model = LiteMedSamClassifier(MultiGapConfig(backbone="lite_medsam", n_gap=2, head_channels=8),
                                 encoder=stub).eval()
    model.embedding_cache = EmbeddingCache(tmp_path)
    x = torch.rand(3, 1, 64, 64)
    with torch.no_grad():
        first = model(x)
        calls = stub.calls
        second = model(x)
    assert stub.calls == calls and torch.allclose(first, second, atol=1e-2)


def _volume(nz: int = 12) -> tuple[Volume, np.ndarray, np.ndarray]:
    image = np.full((nz, 40, 40), -900, np.int16)
    lungs = np.zeros(image.shape, bool)
    lungs[:, 8:32, 6:34] = True
    nodules = np.zeros(image.shape, np.uint8)
    nodules[3:5, 18:22, 18:22] = 1
    return Volume(image, (2.5, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3)), lungs, nodules


def test_negatives_per_case_and_unsafe_slices():
    volume, lungs, nodules = _volume()
    every = slices_from_arrays("c1", volume, lungs, config=SliceConfig(size=32), nodule_mask=nodules)
    assert every.n_positive == 2 and every.n_negative == 10
    safe = slices_from_arrays("c1", volume, lungs, config=SliceConfig(size=32), nodule_mask=nodules,
                              unsafe_slices=(8, 9, 10))
    assert safe.n_negative == 7 and not set(safe.slice_index[safe.labels == 0]) & {8, 9, 10}
    capped = [slices_from_arrays(case, volume, lungs, config=SliceConfig(size=32, negatives_per_case=4),
                                 nodule_mask=nodules, unsafe_slices=(8, 9, 10)) for case in ("c1", "c1", "c2")]
    assert [c.n_negative for c in capped] == [4, 4, 4] and all(c.n_positive == 2 for c in capped)
    picked = [set(c.slice_index[c.labels == 0]) for c in capped]
    assert picked[0] == picked[1] and not picked[0] & {8, 9, 10}  # drawn by case id: reproducible


def test_real_data_training_options_on_the_command_line():
    from wsnodule_core.cli.main import build_parser
    from wsnodule_core.cli.train_nam import config_from_args

    argv = ["train", "data", "out", "--method", "nam", "--backbone", "lite_medsam", "--n-gap", "3",
            "--val-data", "other", "--negatives-per-case", "6", "--head-channels", "32", "--optimizer", "adam",
            "--select-metric", "auc"]
    config = config_from_args(build_parser().parse_args(argv))
    assert (config.n_gap, config.val_data, config.negatives_per_case, config.head_channels) == (3, "other", 6, 32)
    assert (config.optimizer, config.select_metric) == ("adam", "auc")
    assert config.slice_config().negatives_per_case == 6
    assert config.model_config().head_channels == 32


def test_unsafe_slices_of_a_lesion_mask():
    from wsnodule_core.data.hybrid import tumour_boxes_of, unsafe_slices

    lesion = np.zeros((10, 4, 4), bool)
    lesion[4:6, 1, 1] = True
    assert unsafe_slices(lesion) == (3, 4, 5, 6) and unsafe_slices(lesion, 0) == (4, 5)
    lesion[0, 0, 0] = True
    assert unsafe_slices(lesion)[:2] == (0, 1)
    plain = Volume(np.zeros((2, 4, 4), np.int16), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3))
    assert tumour_boxes_of(plain) == ()  # not a Lung-PET-CT-Dx series
