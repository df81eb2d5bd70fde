"""NAM training options: the optimiser choice, checkpoint selection, the validation threshold."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from wsnodule_core.errors import ModelConfigError, NamSegmentationError
from wsnodule_core.metrics.classification import roc_auc
from wsnodule_core.nam.model import MultiGapClassifier
from wsnodule_core.nam.segment_config import NamConfig
from wsnodule_core.nam.train import (
    TrainConfig,
    best_threshold,
    build_model,
    checkpoint_threshold,
    make_optimizer,
    train_classifier,
)
from wsnodule_core.training.checkpoint import load_checkpoint, save_checkpoint

FAST = TrainConfig(width="narrow", head_channels=16, image_size=32, batch_size=8, epochs=2, lr=1e-2,
                   device="cpu", deterministic=True, seed=3)


@pytest.mark.parametrize("name, kind", [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam),
                                        ("adamw", torch.optim.AdamW)])
def test_optimizer_choice_keeps_the_two_lr_groups(name, kind):
    config = replace(FAST, optimizer=name, lr=1e-3, new_layer_lr_factor=10.0, weight_decay=1e-4)
    model = build_model(config)
    optimizer, scheduler = make_optimizer(model, config)
    assert type(optimizer) is kind
    lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}
    assert lrs == pytest.approx({"backbone": 1e-3, "new": 1e-2})
    assert all(g["weight_decay"] == 1e-4 for g in optimizer.param_groups)
    n_params = sum(p.numel() for g in optimizer.param_groups for p in g["params"])
    assert n_params == sum(p.numel() for p in model.parameters())
    optimizer.step()  # no gradients yet: a no-op, so the scheduler may step
    scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * config.lr_decay)


def test_bad_optimizer_and_select_metric_are_refused():
    with pytest.raises(ModelConfigError, match="optimizer must be one of"):
        TrainConfig(optimizer="rmsprop")
    with pytest.raises(ModelConfigError, match="select_metric must be one of"):
        TrainConfig(select_metric="f1")


def test_best_threshold_maximises_balanced_accuracy():
    # positives score 0.3-0.4, negatives 0.05-0.2 and one 0.35: no cut at 0.5 separates anything
    p = np.array([0.05, 0.1, 0.2, 0.35, 0.3, 0.32, 0.4])
    y = np.array([0, 0, 0, 0, 1, 1, 1])
    threshold, accuracy = best_threshold(p, y)
    assert 0.2 < threshold <= 0.3
    predicted = p >= threshold
    assert np.array_equal(predicted, p >= 0.3)
    assert accuracy == pytest.approx(0.5 * (1.0 + 3 / 4))
    # perfectly separated: the cut nearest 0.5 between the classes
    threshold, accuracy = best_threshold(np.array([0.1, 0.2, 0.8, 0.9]), np.array([0, 0, 1, 1]))
    assert accuracy == 1.0 and threshold == pytest.approx(0.5)
    # tied probabilities are never split; a missing class gives (0.5, nan)
    threshold, accuracy = best_threshold(np.array([0.6, 0.6, 0.6]), np.array([0, 1, 1]))
    assert accuracy == pytest.approx(0.5) and (threshold > 0.6 or threshold < 0.6)
    threshold, accuracy = best_threshold(np.array([0.2, 0.7]), np.array([1, 1]))
    assert threshold == 0.5 and np.isnan(accuracy)


def test_roc_auc_counts_pairs():
    assert roc_auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == pytest.approx(0.75)
    assert roc_auc(np.array([0.5, 0.5]), np.array([0, 1])) == pytest.approx(0.5)
    assert np.isnan(roc_auc(np.array([0.5, 0.6]), np.array([0, 0])))


def test_adam_run_records_threshold_and_selects_by_auc(tmp_path, disc_train, disc_val):
    config = replace(FAST, optimizer="adam", lr=1e-3, select_metric="auc")
    result = train_classifier((disc_train, disc_val), tmp_path / "run", config)
    for row in result.history:
        assert 0.0 <= row["val_auc"] <= 1.0 and 0.0 <= row["val_threshold"] <= 1.0
        assert row["val_tuned_balanced_accuracy"] >= row["val_balanced_accuracy"] - 1e-9
    best_row = max(result.history, key=lambda r: r["val_auc"])
    assert result.best_epoch == best_row["epoch"] and result.best_metric == pytest.approx(best_row["val_auc"])
    best = load_checkpoint(result.best_path)
    assert best.train_config["optimizer"] == "adam"
    assert checkpoint_threshold(result.best_path) == pytest.approx(best_row["val_threshold"])
    config_with = NamConfig().with_checkpoint_threshold(result.best_path)
    assert config_with.probability_threshold == pytest.approx(best_row["val_threshold"])


def test_old_checkpoints_without_threshold_still_load(tmp_path, disc_train):
    result = train_classifier(disc_train, tmp_path / "run", replace(FAST, epochs=1))
    raw = dict(load_checkpoint(result.last_path).raw)
    assert raw["probability_threshold"] is None  # no validation slices: nothing chosen
    for key in ("probability_threshold",):
        raw.pop(key)
    for key in ("optimizer", "select_metric"):
        raw["train_config"].pop(key)
    old = save_checkpoint(tmp_path / "old.pt", raw)
    assert checkpoint_threshold(old) is None
    assert NamConfig(probability_threshold=0.4).with_checkpoint_threshold(old).probability_threshold == 0.4
    config = TrainConfig.from_dict(load_checkpoint(old).train_config)
    assert config.optimizer == "sgd" and config.select_metric == "balanced_accuracy"
    from wsnodule_core.nam.model import load_classifier

    model, _ = load_classifier(old, device="cpu")
    assert isinstance(model, MultiGapClassifier)


def test_probability_threshold_must_be_a_probability():
    with pytest.raises(NamSegmentationError, match="probability_threshold"):
        NamConfig(probability_threshold=1.5)


def test_batch_norm_recalibration_averages_unaugmented_batches():
    from wsnodule_core.nam.train import recalibrate_batch_norm

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1), torch.nn.BatchNorm2d(2))
    model[1].running_mean.fill_(5.0)
    images = torch.rand(12, 6, 6, dtype=torch.float16)
    assert recalibrate_batch_norm(model.eval(), images, n_batches=3, batch_size=4, seed=1,
                                  device=torch.device("cpu")) == 12
    with torch.no_grad():
        features = model[0](images.float()[:, None])
    # three equal batches of the same 12 images: the running mean is their overall channel mean
    assert torch.allclose(model[1].running_mean, features.mean(dim=(0, 2, 3)), atol=1e-5)
    assert model[1].momentum == 0.1 and not model.training  # settings and mode restored
    assert recalibrate_batch_norm(torch.nn.Conv2d(1, 1, 1), images, 3, 4, 1, torch.device("cpu")) == 0
    with pytest.raises(ModelConfigError, match="bn_recalibration_batches"):
        TrainConfig(bn_recalibration_batches=-1)


def test_training_with_recalibration_keeps_exact_resume(tmp_path, disc_train, disc_val):
    config = replace(FAST, epochs=2, bn_recalibration_batches=2)
    full = train_classifier((disc_train, disc_val), tmp_path / "full", config)
    train_classifier((disc_train, disc_val), tmp_path / "part", replace(config, epochs=1))
    resumed = train_classifier((disc_train, disc_val), tmp_path / "part", config, resume=True)
    for key, value in full.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    assert full.history[-1]["val_auc"] == pytest.approx(resumed.history[-1]["val_auc"])


def test_augmentation_and_hard_tile_flags_reach_the_config():
    import argparse

    from wsnodule_core.cli.train_nam import add_train_arguments, config_from_args

    parser = add_train_arguments(argparse.ArgumentParser())
    args = parser.parse_args(["data", "out", "--shift-fraction", "0.3", "--rotate-deg", "15", "--flip-ud",
                              "--pixel-spacing", "0.75", "--hard-tiles-from", "g1/best.pt",
                              "--hard-tiles-per-scan", "40", "--unsafe-negatives"])
    config = config_from_args(args)
    assert config.unsafe_negatives and config.slice_config().use_unsafe_negatives
    assert (config.shift_fraction, config.rotate_deg, config.flip_ud) == (0.3, 15.0, True)
    assert (config.hard_tiles_from, config.hard_tiles_per_scan) == ("g1/best.pt", 40)
    plain = config_from_args(parser.parse_args(["data", "out"]))
    assert plain.flip_ud is False and plain.slice_config().use_unsafe_negatives is False


def test_hard_tiles_need_a_pixel_spacing_and_a_classifier_of_the_same_crop(tmp_path, disc_train, disc_val):
    with pytest.raises(ModelConfigError, match="--pixel-spacing"):
        TrainConfig(hard_tiles_from="g1/best.pt")
    with pytest.raises(ModelConfigError, match="must be >= 0"):
        TrainConfig(pixel_spacing_mm=0.75, hard_tiles_from="g1/best.pt", hard_tiles_per_scan=-1)
    train_classifier((disc_train, disc_val), tmp_path / "g1", replace(FAST, epochs=1))
    from wsnodule_core.errors import TrainingDataError
    from wsnodule_core.nam.train import _resolve_data

    other = replace(FAST, image_size=48, pixel_spacing_mm=0.75, hard_tiles_from=str(tmp_path / "g1" / "best.pt"))
    with pytest.raises(TrainingDataError, match="same crop"):
        _resolve_data(tmp_path / "no-data-needed", other)  # refused before any data is read
    with pytest.raises(TrainingDataError, match="in memory"):
        _resolve_data((disc_train, disc_val), other)
