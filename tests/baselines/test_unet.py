"""The fully supervised U-Net baseline: model, loss, training recipe, exact resume, segmentation geometry."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from wsnodule_core.baselines.unet import (UNetConfig, UNetSegmenter, UNetTrainConfig, evaluate, load_unet,
                                          negative_dice_loss, segment_volume_unet, train_unet)
from wsnodule_core.baselines.unet.train import build_model, make_optimizer
from wsnodule_core.errors import CheckpointError, ModelConfigError, OutputExistsError, SegmentationCancelled
from wsnodule_core.io.volume import Volume
from wsnodule_core.training.augment import AugmentConfig, augment_pair
from wsnodule_core.training.callbacks import TrainCallbacks
from wsnodule_core.training.checkpoint import save_checkpoint

COMPACT = UNetConfig.compact(input_size=64)


@pytest.fixture(scope="module")
def phantom_slices(tmp_path_factory):
    """Training and test slices (64 px lung-centred crops at the scan's spacing) of 3 tiny phantom cases."""
    from wsnodule_core.data.builders import build_dataset
    from wsnodule_core.data.slices import slices_from_dataset

    folder = tmp_path_factory.mktemp("unet_phantom") / "ds"
    build_dataset(folder, source="phantom", n_cases=3, size="tiny", n_shapes=20, seed=0)
    config = COMPACT.slice_config()
    return folder, slices_from_dataset(folder, "train", config), slices_from_dataset(folder, "test", config)


# --- model -----------------------------------------------------------------


def test_model_shapes_and_presets():
    torch.manual_seed(0)
    compact = UNetSegmenter(COMPACT)
    x = torch.rand(3, 1, 64, 64)
    assert compact(x).shape == (3, 1, 64, 64)
    p = compact.probability(x).detach()
    assert p.shape == (3, 1, 64, 64) and float(p.min()) >= 0.0 and float(p.max()) <= 1.0
    paper = UNetConfig.paper()
    assert paper.channels == (64, 128, 256, 512, 1024)
    assert paper.input_size == 384 and paper.downsampling == 16
    assert UNetSegmenter(paper)(torch.rand(1, 1, 32, 32)).shape == (1, 1, 32, 32)
    assert UNetConfig.from_dict(COMPACT.to_dict()) == COMPACT
    with pytest.raises(ModelConfigError, match="multiple of 8"):
        UNetConfig.compact(input_size=60)
    with pytest.raises(ModelConfigError, match="multiple of 8"):
        compact(torch.rand(1, 1, 60, 60))
    with pytest.raises(ModelConfigError, match="strides"):
        UNetConfig(channels=(8, 16), strides=(2, 2))


# --- loss --------------------------------------------------------------------


def _loss_example():
    t = math.log(3.0)  # sigmoid(+-log 3) = 0.75 / 0.25, sigmoid(0) = 0.5
    logits = torch.tensor([[t, 0.0, -t, 0.0], [-t, -t, 0.0, 0.0]]).reshape(2, 1, 2, 2)
    masks = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]).reshape(2, 1, 2, 2)
    return logits, masks


def test_loss_is_minus_the_dice_of_the_batch():
    logits, masks = _loss_example()
    # slice A: sum(pg) = 1.25, sum(p) = 2.0, sum(g) = 2; slice B: sum(pg) = 0, sum(p) = 1.5, sum(g) = 0
    assert float(negative_dice_loss(logits, masks, smooth=0.0)) == pytest.approx(-2.5 / 5.5, abs=1e-6)
    assert float(negative_dice_loss(logits, masks, smooth=1.0)) == pytest.approx(-3.5 / 6.5, abs=1e-6)
    per_slice = -(3.5 / 5.0 + 1.0 / 2.5) / 2  # mean of the two slices' Dice with smooth 1
    assert float(negative_dice_loss(logits, masks, mode="per_slice")) == pytest.approx(per_slice, abs=1e-6)
    # a perfect prediction scores -1
    assert float(negative_dice_loss((masks * 2 - 1) * 50, masks)) == pytest.approx(-1.0, abs=1e-6)
    with pytest.raises(ModelConfigError):
        negative_dice_loss(logits, masks, mode="mean")


def test_recipe_defaults_are_the_papers():
    config = UNetTrainConfig()
    assert (config.lr, config.lr_decay, config.batch_size) == (2e-4, 0.999, 20)
    assert config.model == UNetConfig.paper()
    optimizer, scheduler = make_optimizer(torch.nn.Linear(2, 1), config)
    assert isinstance(optimizer, torch.optim.Adam) and optimizer.param_groups[0]["lr"] == 2e-4
    assert scheduler.gamma == 0.999
    assert UNetTrainConfig.from_dict(UNetTrainConfig(model=COMPACT, epochs=3).to_dict()) == \
        UNetTrainConfig(model=COMPACT, epochs=3)


def test_bad_settings_are_refused(tmp_path, monkeypatch):
    with pytest.raises(ModelConfigError, match="batch_size"):
        UNetTrainConfig(batch_size=1)
    with pytest.raises(ModelConfigError, match="loss"):
        UNetTrainConfig(loss="bce")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ModelConfigError, match="one process"):
        train_unet(tmp_path / "nowhere", tmp_path / "run", _fast())
    assert not (tmp_path / "run").exists()


def test_augmentation_moves_image_and_mask_together():
    masks = torch.zeros(4, 1, 32, 32)
    masks[:, :, 10:20, 8:22] = 1.0
    x = 0.2 + 0.6 * masks
    xa, ma = augment_pair(x, masks, torch.Generator().manual_seed(0), AugmentConfig(rotate_deg=20.0))
    assert set(torch.unique(ma).tolist()) <= {0.0, 1.0}
    assert abs(float(ma.sum()) - float(masks.sum())) < 0.25 * float(masks.sum())
    assert float((xa[ma > 0] > 0.5).float().mean()) > 0.95  # bright where the mask went
    assert float((xa[ma == 0] < 0.5).float().mean()) > 0.95


# --- training ----------------------------------------------------------------


def _fast(**overrides) -> UNetTrainConfig:
    values = dict(model=COMPACT, batch_size=8, epochs=8, lr=3e-2, device="cpu", deterministic=True, seed=0,
                  augment=False, epoch_size="all")  # all 48 slices: 6 steps per epoch
    return UNetTrainConfig(**{**values, **overrides})


@pytest.fixture(scope="module")
def trained(phantom_slices, tmp_path_factory):
    """A compact U-Net trained 8 epochs (48 steps) on the phantom folder's train split; the epochs seen."""
    folder = phantom_slices[0]
    epochs_seen: list[int] = []
    # the thresholds below were measured with two torch threads; reductions differ with one, and a
    # test that ran earlier in the same process may have left one
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        result = train_unet(folder, tmp_path_factory.mktemp("unet_run") / "run", _fast(),
                            TrainCallbacks(epoch_fn=lambda e, m: epochs_seen.append(e)))
    finally:
        torch.set_num_threads(threads)
    return result, epochs_seen


@pytest.mark.slow
def test_training_raises_the_dice_and_keeps_the_best(phantom_slices, trained):
    folder, train, test = phantom_slices
    assert train.n_positive > 0 and train.n_negative > 0 and train.masks[train.labels == 1].any()
    config = _fast()
    result, epochs_seen = trained
    before = evaluate(build_model(config), train)
    after = evaluate(result.model, train)
    # from random weights p ~ 0.5 everywhere: Dice ~ 0; after 48 steps the background is dark and the
    # nodules are partly found (here soft Dice 0.0005 -> 0.06, thresholded Dice 0.005 -> 0.28)
    assert before["soft_dice"] < 0.005 and after["soft_dice"] > 5 * before["soft_dice"]
    assert after["dice"] > before["dice"] + 0.1
    history = result.history
    assert epochs_seen == list(range(1, 9)) and len(history) == 8
    assert history[-1]["train_dice"] > history[0]["train_dice"] + 0.05
    assert history[0]["lr"] == pytest.approx(3e-2 * 0.999)
    assert history[-1]["lr"] == pytest.approx(3e-2 * 0.999 ** 8)
    # this data set has no validation split: the best epoch is the one of the highest training Dice
    best = max(history, key=lambda m: m["train_dice"])
    assert result.best_epoch == best["epoch"] and result.best_metric == pytest.approx(best["train_dice"])
    model, checkpoint = load_unet(result.best_path)
    assert checkpoint.kind == "unet-baseline" and checkpoint.epoch == result.best_epoch
    assert model.config == COMPACT and not model.training
    with pytest.raises(OutputExistsError):
        train_unet(folder, result.out_dir, config)


@pytest.mark.slow
def test_resume_continues_exactly(phantom_slices, tmp_path):
    _, train, test = phantom_slices
    # augmentation on: its generator must resume too; 2 epochs of 3 steps, stopped after step 2
    config = _fast(epochs=2, augment=True, max_steps_per_epoch=3)
    full = train_unet((train, test), tmp_path / "full", config)
    steps = []

    def stop_after_second_step() -> bool:
        return len(steps) == 2

    cut = train_unet((train, test), tmp_path / "cut", config,
                     TrainCallbacks(step_fn=lambda s, t, loss: steps.append(s),
                                    stop_fn=stop_after_second_step))
    assert cut.cancelled and cut.epochs_completed == 0 and cut.global_step == 2 and cut.best_path is None
    resumed = train_unet((train, test), tmp_path / "cut", None, resume=True)
    assert not resumed.cancelled and resumed.global_step == full.global_step == 6
    for name, value in full.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name
    for a, b in zip(full.history, resumed.history):
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-12)
        assert a["val_dice"] == pytest.approx(b["val_dice"], nan_ok=True)
    assert "val_fp_slice_rate" in full.history[0]


def test_checkpoint_of_another_kind_is_refused(tmp_path):
    save_checkpoint(tmp_path / "best.pt", {"kind": "nam-multigap", "model_config": {}, "model_state": {}})
    with pytest.raises(CheckpointError, match="not the U-Net"):
        load_unet(tmp_path)


# --- segmentation ------------------------------------------------------------


class _Threshold(UNetSegmenter):
    """A stand-in U-Net whose nodule logit is high where the normalised slice exceeds 0.6 (-120 HU)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 40.0 * (x - 0.6)


def _volume():
    """Anisotropic CT with a flipped, permuted direction: lungs -800 HU, two bright blobs (100 HU)."""
    z, y, x = np.mgrid[:9, :50, :70]
    array = np.full((9, 50, 70), -1000.0, np.float32)
    lungs = (np.abs(y - 25) < 18) & (np.abs(x - 30) < 24)
    array[lungs] = -800.0
    blob_a = ((z - 3) / 2.0) ** 2 + ((y - 20) / 4.0) ** 2 + ((x - 20) / 5.0) ** 2 <= 1
    blob_b = ((z - 6) / 1.5) ** 2 + ((y - 32) / 3.0) ** 2 + ((x - 40) / 3.0) ** 2 <= 1
    array[blob_a | blob_b] = 100.0
    direction = np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    volume = Volume(array, (2.5, 0.7, 0.9), (-12.0, 40.5, 101.0), direction)
    return volume, lungs, blob_a, blob_b


def test_segmentation_lies_on_the_input_grid():
    volume, lungs, blob_a, blob_b = _volume()
    model = _Threshold(UNetConfig.compact(input_size=48))  # the crop (48 px) is smaller than the slice
    seen = []
    result = segment_volume_unet(model, volume, lungs, batch_size=4,
                                 progress=lambda d, t: seen.append((d, t)))
    for out in (result.mask, result.probability):
        assert out.shape == volume.shape and out.same_geometry(volume)
        assert out.spacing == volume.spacing and np.array_equal(out.direction, volume.direction)
    assert seen == [(4, 9), (8, 9), (9, 9)]
    labels = result.mask.array
    assert result.n_nodules == 2 and labels.dtype == np.int32
    assert np.array_equal(labels > 0, blob_a | blob_b)  # no resampling: the crop maps back exactly
    assert len(np.unique(labels[blob_a])) == 1 and len(np.unique(labels[blob_b])) == 1
    assert labels[blob_a][0] != labels[blob_b][0]
    # the probability is the network's inside the 48 px window around the lungs' box, 0 outside it
    rows, cols = np.flatnonzero(lungs[0].any(1)), np.flatnonzero(lungs[0].any(0))
    y0 = int(np.floor((rows[0] + rows[-1]) / 2 - 23.5 + 0.5))
    x0 = int(np.floor((cols[0] + cols[-1]) / 2 - 23.5 + 0.5))
    inside = np.zeros(volume.shape, bool)
    inside[:, max(y0, 0):y0 + 48, max(x0, 0):x0 + 48] = True
    prob = result.probability.array
    assert np.all(prob[~inside] == 0.0)
    expected = 1.0 / (1.0 + np.exp(-40.0 * (np.clip((volume.array + 1200.0) / 1800.0, 0, 1) - 0.6)))
    assert np.allclose(prob[inside], expected[inside], atol=1e-5)


def test_resampled_crop_and_cancel():
    volume, lungs, blob_a, blob_b = _volume()
    model = _Threshold(UNetConfig.compact(input_size=48, pixel_spacing_mm=1.2))
    result = segment_volume_unet(model, volume, Volume(lungs.astype(np.uint8), volume.spacing, volume.origin,
                                                      volume.direction), threshold=0.5)
    assert result.mask.same_geometry(volume) and result.probability.same_geometry(volume)
    truth = blob_a | blob_b
    found = result.mask.array > 0
    dice = 2 * np.logical_and(found, truth).sum() / (found.sum() + truth.sum())
    assert dice > 0.8 and result.n_nodules == 2
    with pytest.raises(SegmentationCancelled):
        segment_volume_unet(model, volume, lungs, cancel=lambda: True)


@pytest.mark.slow
def test_trained_model_segments_a_phantom_case(phantom_slices, trained):
    from wsnodule_core.data.dataset import load_dataset

    case = next(load_dataset(phantom_slices[0]).cases("train"))
    model, _ = load_unet(trained[0].best_path)
    result = segment_volume_unet(model, case.image, case.lungs, batch_size=16)
    assert result.mask.same_geometry(case.image) and result.probability.same_geometry(case.image)
    assert result.mask.metadata == case.image.metadata
    labels = result.mask.array
    assert labels.max() == result.n_nodules and set(np.unique(labels)) == set(range(result.n_nodules + 1))
    # the mask is the thresholded probability (no resampling in this crop)
    assert np.array_equal(labels > 0, result.probability.array >= 0.5)


@pytest.mark.slow
def test_real_ct_without_lungs_keeps_its_geometry():
    import os
    from pathlib import Path

    from wsnodule_core.io.readers import read_volume

    data = os.environ.get("WSNODULE_DATA")
    if not data:
        pytest.skip("WSNODULE_DATA is not set: no real chest CT to segment (CI sets it to ../shared/data)")
    volume = read_volume(Path(data) / "chest-ct" / "tcga-34-2605")
    torch.manual_seed(0)
    model = UNetSegmenter(UNetConfig.compact(input_size=256, pixel_spacing_mm=1.5))  # resampled crop
    result = segment_volume_unet(model, volume, batch_size=16)  # lungs segmented here
    for out in (result.mask, result.probability):
        assert out.same_geometry(volume) and out.metadata.series_uid == volume.metadata.series_uid
    prob = result.probability.array
    assert prob.dtype == np.float32 and 0.0 <= prob.min() and prob.max() <= 1.0
    # 256 px of 1.5 mm (384 mm) hold the 400 mm field of view's lungs but not its corners
    assert np.all(prob[:, 0, 0] == 0.0) and prob[:, 256].max() > 0
