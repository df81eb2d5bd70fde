"""NAM training: slice data, the recipe, checkpoints, exact resume, cancellation, the CLI."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

from wsnodule_core import __version__
from wsnodule_core.errors import CheckpointError, OutputExistsError, TrainingDataError
from wsnodule_core.data.slices import SliceConfig, slices_from_arrays, slices_from_dataset, slices_from_volumes
from wsnodule_core.nam.train import TrainConfig, make_optimizer, train_classifier
from wsnodule_core.nam.train_config import PAPER_LR
from wsnodule_core.training.callbacks import TrainCallbacks
from wsnodule_core.nam.model import load_classifier
from wsnodule_core.training.checkpoint import load_checkpoint

# a fast CPU configuration: narrow 1-GAP on 32 px discs, deterministic
FAST = TrainConfig(width="narrow", head_channels=16, image_size=32, batch_size=8, epochs=3, lr=1e-2,
                   device="cpu", deterministic=True, seed=3)


def _entries(folder, split):
    return [e for e in json.loads((folder / "dataset.json").read_text())["cases"] if e["split"] == split]


def test_slices_follow_the_slice_labels(phantom_dataset):
    config = SliceConfig(size=80)  # the scan's own 3.6 mm pixels: masks are cut, not resampled
    slices = slices_from_dataset(phantom_dataset, "train", config)
    entries = _entries(phantom_dataset, "train")
    # every slice of the tiny phantom holds lung, so positives = labelled slices and negatives = the rest
    expected_pos = sum(sum(e["slice_labels"]) for e in entries)
    assert slices.n_positive == expected_pos > 0
    assert slices.n_negative == sum(len(e["slice_labels"]) - sum(e["slice_labels"]) for e in entries)
    assert slices.images.shape == (len(slices), 80, 80) and slices.images.dtype == np.float16
    assert 0.0 <= float(slices.images.min()) and float(slices.images.max()) <= 1.0
    has_mask = slices.masks.reshape(len(slices), -1).any(axis=1)
    assert np.array_equal(has_mask, slices.labels == 1)  # nodule masks ride along with positives only
    for entry in entries:
        mine = slices.case_ids == entry["case_id"]
        labels = np.asarray(entry["slice_labels"])
        assert np.array_equal(slices.labels[mine], labels[slices.slice_index[mine]])
    assert np.allclose(slices.spacing_mm, 3.6)
    resampled = slices_from_dataset(phantom_dataset, "train", SliceConfig(size=64, pixel_spacing_mm=5.0))
    assert np.array_equal(resampled.labels, slices.labels) and np.allclose(resampled.spacing_mm, 5.0)


def test_area_rule_lung_rule_and_weak_labels(phantom_dataset):
    from wsnodule_core.data.dataset import load_dataset

    case = next(load_dataset(phantom_dataset).cases("train"))
    area = (np.asarray(case.mask.array) > 0).sum(axis=(1, 2)) * case.image.spacing[1] * case.image.spacing[2]
    threshold = float(np.median(area[area > 0]))
    strict = slices_from_arrays("c", case.image, case.lungs, config=SliceConfig(size=48, min_nodule_area_mm2=threshold),
                                nodule_mask=case.mask.array)
    assert strict.n_positive == int(np.count_nonzero(area >= threshold))
    assert not set(strict.slice_index.tolist()) & set(np.flatnonzero((area > 0) & (area < threshold)).tolist())
    # lungs only in slices 5..9: negatives elsewhere are dropped, positives kept
    lungs = np.zeros_like(case.lungs)
    lungs[5:10] = case.lungs[5:10]
    weak = np.zeros(case.image.shape[0], int)
    weak[[2, 6]] = 1
    weak[7] = -1  # "leave out"
    only = slices_from_volumes([(case.image, weak, lungs)], SliceConfig(size=48))
    assert sorted(only.slice_index.tolist()) == [2, 5, 6, 8, 9]
    assert only.n_positive == 2 and not only.masks.any()


def test_split_in_memory_slices(disc_train):
    train, val = disc_train.split(0.25, seed=1)
    assert (train.n_positive, train.n_negative, val.n_positive, val.n_negative) == (24, 24, 8, 8)
    assert not set(train.slice_index.tolist()) & set(val.slice_index.tolist())
    with pytest.raises(TrainingDataError):
        disc_train.split(1.0)


def test_evaluate_reports_balanced_accuracy(disc_train):
    from wsnodule_core.nam.train import evaluate

    class AlwaysNegative(torch.nn.Module):
        def forward(self, x):
            return torch.tensor([[2.0, -1.0]]).repeat(len(x), 1)

    subset = disc_train.subset(np.r_[np.flatnonzero(disc_train.labels == 0), np.flatnonzero(disc_train.labels)[:4]])
    metrics = evaluate(AlwaysNegative(), subset, torch.device("cpu"), batch_size=7)
    assert metrics["accuracy"] == pytest.approx(32 / 36) and metrics["balanced_accuracy"] == pytest.approx(0.5)
    assert metrics["sensitivity"] == 0.0 and metrics["specificity"] == 1.0
    assert metrics["loss"] == pytest.approx(float(torch.nn.functional.cross_entropy(
        torch.tensor([[2.0, -1.0]] * 36), torch.tensor([0] * 32 + [1] * 4))), rel=1e-6)


def test_recipe_learning_rates():
    from wsnodule_core.nam.model import MultiGapClassifier

    for n_gap, lr in PAPER_LR.items():
        config = TrainConfig(n_gap=n_gap, width="narrow", head_channels=8)
        optimizer, scheduler = make_optimizer(MultiGapClassifier(config.model_config()), config)
        backbone, new = optimizer.param_groups
        assert backbone["lr"] == pytest.approx(lr) and new["lr"] == pytest.approx(10 * lr)
        assert backbone["momentum"] == 0.9 and scheduler.gamma == 0.99
        assert len(new["params"]) == 2 * n_gap + 2  # heads (weight, bias) and the FC
    assert TrainConfig().model_config().batch_norm is False or TrainConfig().vgg16_weights is None
    assert TrainConfig(vgg16_weights="x.pth").model_config().batch_norm is False


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.slow
def test_resume_is_bit_exact(tmp_path, disc_train, disc_val):
    data = (disc_train, disc_val)
    full = train_classifier(data, tmp_path / "full", FAST)
    # 1 epoch, stop; resume to 3
    train_classifier(data, tmp_path / "split", FAST.__class__(**{**FAST.to_dict(), "epochs": 1}))
    resumed = train_classifier(data, tmp_path / "split", FAST, resume=True)
    _assert_same(_state(full.model), _state(resumed.model))
    # cancelled in the middle of epoch 2, resumed to the end
    calls = {"n": 0}

    def stop() -> bool:
        calls["n"] += 1
        return calls["n"] == 12  # 8 steps per epoch: step 4 of epoch 2

    cut = train_classifier(data, tmp_path / "cut", FAST, TrainCallbacks(stop_fn=stop))
    assert cut.cancelled and cut.epochs_completed == 1 and cut.global_step == 12
    assert load_checkpoint(tmp_path / "cut" / "last.pt").raw["step_in_epoch"] == 4
    again = train_classifier(data, tmp_path / "cut", FAST, resume=True)
    _assert_same(_state(full.model), _state(again.model))
    assert again.global_step == full.global_step == 24
    ref = load_checkpoint(tmp_path / "full" / "last.pt").raw["optimizer_state"]["state"]
    got = load_checkpoint(tmp_path / "cut" / "last.pt").raw["optimizer_state"]["state"]
    assert all(torch.equal(ref[k]["momentum_buffer"], got[k]["momentum_buffer"]) for k in ref)


@pytest.mark.slow
def test_checkpoints_describe_themselves(tmp_path, disc_train, disc_val):
    steps = []
    epochs = []
    result = train_classifier((disc_train, disc_val), tmp_path / "run", FAST,
                              TrainCallbacks(lambda s, t, loss: steps.append((s, t)), lambda e, m: epochs.append(e)))
    assert steps[-1] == (24, 24) and epochs == [1, 2, 3]
    assert len(result.history) == 3 and {"train_loss", "val_accuracy", "lr"} <= set(result.history[0])
    assert result.history[1]["lr"] == pytest.approx(1e-2 * 0.99 ** 2)
    best_epoch = 1 + int(np.argmax([h["val_balanced_accuracy"] for h in result.history]))  # first of ties
    assert result.best_epoch == best_epoch
    raw = load_checkpoint(tmp_path / "run").raw  # the folder -> best.pt
    assert raw["epoch"] == best_epoch and raw["package_version"] == __version__
    assert raw["torch_version"] == str(torch.__version__) and raw["kind"] == "nam-multigap"
    assert raw["train_config"]["batch_size"] == 8 and raw["model_config"]["width"] == "narrow"
    assert {"python", "numpy", "torch_cpu", "torch_cuda"} <= set(raw["rng"])
    assert {"optimizer_state", "scheduler_state", "scaler_state", "history", "best_metric"} <= set(raw)
    model, checkpoint = load_classifier(tmp_path / "run" / "last.pt")
    assert not model.training and checkpoint.epoch == 3
    _assert_same(_state(model), _state(result.model))
    assert not list((tmp_path / "run").glob(".*tmp"))  # no temp files left behind
    # a folder with checkpoints is never silently reused
    with pytest.raises(OutputExistsError, match="resume"):
        train_classifier((disc_train, disc_val), tmp_path / "run", FAST)
    with pytest.raises(CheckpointError, match="nothing to resume"):
        train_classifier((disc_train, disc_val), tmp_path / "new", FAST, resume=True)
    with pytest.raises(CheckpointError, match="same model"):
        train_classifier((disc_train, disc_val), tmp_path / "run", FAST.__class__(**{**FAST.to_dict(), "n_gap": 2}),
                         resume=True)


def test_cancel_after_first_step_saves_last(tmp_path, disc_train):
    config = FAST.__class__(**{**FAST.to_dict(), "epochs": 1})
    result = train_classifier(disc_train, tmp_path / "run", config, TrainCallbacks(stop_fn=lambda: True))
    assert result.cancelled and result.global_step == 1 and result.epochs_completed == 0
    assert (tmp_path / "run" / "last.pt").exists() and not (tmp_path / "run" / "best.pt").exists()
    with pytest.raises(TrainingDataError, match="both classes"):
        train_classifier(disc_train.subset(np.flatnonzero(disc_train.labels == 1)), tmp_path / "one", config)


def test_loader_workers_and_channels_last_give_the_same_run(tmp_path, disc_train):
    config = FAST.__class__(**{**FAST.to_dict(), "epochs": 1, "max_steps_per_epoch": 2})
    plain = train_classifier(disc_train, tmp_path / "a", config)
    other = FAST.__class__(**{**config.to_dict(), "num_workers": 1, "channels_last": True})
    loaded = train_classifier(disc_train, tmp_path / "b", other)
    assert plain.global_step == loaded.global_step == 2
    for key, value in plain.model.state_dict().items():
        assert torch.allclose(value, loaded.model.state_dict()[key], atol=1e-5), key


@pytest.mark.slow
def test_learns_discs(tmp_path, disc_train, disc_val):
    config = TrainConfig(width="narrow", head_channels=16, image_size=32, batch_size=16, epochs=20, lr=1e-2,
                         device="cpu", seed=0)
    result = train_classifier((disc_train, disc_val), tmp_path / "run", config)
    assert result.best_metric >= 0.9
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]


@pytest.mark.slow
def test_cli_trains_on_a_data_set_folder(tmp_path, phantom_dataset, capsys):
    from wsnodule_core.cli.train_nam import add_train_arguments, run_train

    parser = add_train_arguments(argparse.ArgumentParser())
    args = parser.parse_args([str(phantom_dataset), str(tmp_path / "run"), "--width", "narrow", "--image-size",
                              "64", "--pixel-spacing", "5", "--epochs", "1", "--batch-size", "8",
                              "--max-steps-per-epoch", "2", "--device", "cpu"])
    assert run_train(args) == 0
    assert "trained 1 epoch(s), 2 steps" in capsys.readouterr().out
    checkpoint = load_checkpoint(tmp_path / "run" / "last.pt")
    assert checkpoint.raw["data"]["train"]["n_positive"] > 0 and checkpoint.raw["data"]["val"] is not None
    assert checkpoint.train_config["image_size"] == 64
    args = parser.parse_args([str(phantom_dataset), str(tmp_path / "run"), "--epochs", "2", "--resume", "--quiet"])
    assert run_train(args) == 0
    assert load_checkpoint(tmp_path / "run" / "last.pt").epoch == 2
