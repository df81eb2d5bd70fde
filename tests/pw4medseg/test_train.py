"""PW4MedSeg training: config, intensity normalisation, targets, batches, loss going down, exact resume."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from wsnodule_core.errors import CheckpointError, ModelConfigError, OutputExistsError, TrainingDataError
from wsnodule_core.image.resample import resample_array, resampled_shape
from wsnodule_core.io.volume import Volume
from wsnodule_core.pw4medseg.loss import ProbabilityInformedLoss
from wsnodule_core.pw4medseg.model import PTransformerConfig
from wsnodule_core.pw4medseg.config import AnnotationSpec, PwTrainConfig, load_pw4medseg
from wsnodule_core.pw4medseg.preprocess import model_grid, normalise_intensity
from wsnodule_core.pw4medseg.targets import TargetCase, TrainingCase, prepare_case
from wsnodule_core.pw4medseg.train import build_model, lr_factor, sample_batch, train_pw4medseg, validate
from wsnodule_core.training.callbacks import TrainCallbacks
from wsnodule_core.training.checkpoint import load_checkpoint, save_checkpoint

TINY = PTransformerConfig.compact(img_size=(16, 16, 16), patch_size=8, hidden_size=32, num_layers=2,
                                  num_heads=2, mlp_dim=64, feature_size=4)
GRID = (5.0, 7.2, 7.2)  # the tiny phantom (24 x 96 x 96 at 5 x 3.6 x 3.6 mm) on a 24 x 48 x 48 grid


def _config(**overrides) -> PwTrainConfig:
    values = dict(model=TINY, spacing_mm=GRID, annotation="points:20", epochs=2, steps_per_epoch=3,
                  warmup_steps=1, val_passes=1, device="cpu")
    return PwTrainConfig(**{**values, **overrides})


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    """Training and validation cases of a 3-case tiny phantom data set (every case has nodules)."""
    from wsnodule_core.data.builders import build_dataset
    from wsnodule_core.data.dataset import load_dataset

    folder = tmp_path_factory.mktemp("pw_phantom") / "ds"
    build_dataset(folder, source="phantom", n_cases=3, size="tiny", n_shapes=20, seed=0,
                  nodules_per_case=(1, 3))
    dataset = load_dataset(folder)
    cases = list(dataset.cases())
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield folder, cases[:2], cases[2:]
    torch.set_num_threads(previous)  # later modules' numbers depend on it


# --- configuration -----------------------------------------------------------------


def test_config_presets_and_round_trip():
    paper = PwTrainConfig.paper()
    assert paper.crop_size == (96, 96, 96) and paper.model.hidden_size == 768
    assert paper.spacing_mm == (1.0, 1.0, 1.0) and paper.lr == 1e-4 and paper.weight_decay == 1e-4
    assert paper.model.norm_name == "instance" and paper.foreground_probability == 0.5
    compact = PwTrainConfig()  # the CPU recipe of docs/pw4medseg_results.md
    assert compact.crop_size == (32, 32, 32) and compact.spacing_mm[0] > 1.0
    assert compact.model.norm_name == "batch" and compact.lr == 5e-4
    assert (compact.foreground_probability, compact.background_in_lungs) == (0.33, 0.8)
    config = _config(crop_size=24, annotation="boxes:loose", spacing_mm=2.5)
    assert config.model.img_size == config.crop_size == (24, 24, 24)
    assert config.annotation == AnnotationSpec("boxes", box="loose") and config.spacing_mm == (2.5,) * 3
    again = PwTrainConfig.from_dict(config.to_dict())
    assert again == config
    assert AnnotationSpec.parse("points:7").n_points == 7
    assert AnnotationSpec.parse("slices:0.25").slice_fraction == 0.25
    for bad in (dict(intensity="mri"), dict(crop_size=20), dict(annotation="scribbles"),
                dict(annotation="points:x"), dict(batch_size=0), dict(spacing_mm=(1, 0, 1)),
                dict(pseudo_label={"no_such_field": 1}), dict(model="huge"), dict(background_in_lungs=1.5)):
        with pytest.raises(ModelConfigError):
            _config(**bad)


def test_lr_warms_up_then_decays_to_zero():
    factors = [lr_factor(s, 4, 20) for s in range(21)]
    assert factors[0] < factors[1] < factors[3] < factors[4] == 1.0
    assert all(a >= b for a, b in zip(factors[4:], factors[5:])) and factors[20] == pytest.approx(0.0)


def test_zscore_and_percentile_ignore_the_intensity_scale_but_ct_does_not():
    rng = np.random.default_rng(0)
    image = rng.normal(-500, 300, (12, 20, 20)).astype(np.float32)
    mri_like = image * 0.01 + 300.0
    for mode in ("zscore", "percentile"):
        a, b = normalise_intensity(image, mode), normalise_intensity(mri_like, mode)
        assert a.std() > 0.1
        np.testing.assert_allclose(a, b, atol=1e-4)
    ct, ct_scaled = normalise_intensity(image, "ct"), normalise_intensity(mri_like, "ct")
    assert 0.0 <= ct.min() and ct.max() <= 1.0 and ct.std() > 0.1
    assert np.abs(ct - ct_scaled).max() > 0.3  # 300 HU everywhere: the window says "all the same"
    with pytest.raises(ModelConfigError):
        normalise_intensity(image, "hounsfield")


def test_model_grid_keeps_the_world_position_of_the_content():
    shape, spacing = (15, 28, 26), (2.5, 1.2, 1.4)
    idx = np.indices(shape).reshape(3, -1).T
    centre = np.array([6.3, 15.2, 11.7])
    image = np.exp(-(((idx - centre) * spacing) ** 2).sum(axis=1) / 30.0).reshape(shape).astype(np.float32)
    turn = np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    volume = Volume(image, spacing, (-40.0, 12.5, 300.0), turn)
    coarse = model_grid(volume, (3.0, 3.0, 3.0))
    assert coarse.shape == resampled_shape(shape, spacing, (3.0, 3.0, 3.0)) == (12, 11, 12)
    assert np.array_equal(coarse.direction, turn)

    def world_peak(v: Volume) -> np.ndarray:
        grid = np.indices(v.shape).reshape(3, -1).T
        weight = v.array.reshape(-1, 1) ** 4
        return v.index_to_world((grid * weight).sum(axis=0) / weight.sum())

    np.testing.assert_allclose(world_peak(coarse), volume.index_to_world(centre), atol=0.5)
    back = resample_array(coarse.array, coarse.spacing, spacing, shape=shape)
    assert back.shape == shape and np.abs(back - image).max() < 0.2


# --- targets and batches -----------------------------------------------------------------


def test_full_targets_are_the_mask_and_points_targets_are_soft(phantom):
    _, train, _ = phantom
    case = train[0]
    full = prepare_case(case, _config(annotation="full"))
    points = prepare_case(case, _config(annotation="points:20"))
    assert full.image.shape == points.image.shape == (24, 48, 48)
    np.testing.assert_array_equal(full.target > 0.5, full.truth)
    assert set(np.unique(full.target)) <= {0.0, 1.0} and np.all(full.confidence == 1.0)
    soft = (points.target > 0.05) & (points.target < 0.95)
    assert soft.sum() > 10  # a soft map, not a mask
    assert not np.array_equal(points.target > 0.5, full.truth)
    assert points.target[full.truth].mean() > 10 * points.target[~full.truth].mean()
    assert np.any((points.target > 0.5) & full.truth)
    assert points.confidence is not None and points.confidence.min() < 0.9
    assert prepare_case(case, _config(annotation="points:20", confidence="loss")).confidence is None


def test_a_known_nodule_free_case_is_a_confident_negative_only_when_asked(phantom):
    _, train, _ = phantom
    free = replace(train[0], mask=train[0].mask.with_array(np.zeros(train[0].mask.shape, np.uint8)), nodules=[])
    without = prepare_case(free, _config())
    assert not without.target.any() and without.confidence.max() < 0.5  # no annotation: far confidence only
    confident = prepare_case(free, _config(nodule_free_confidence=1.0))
    assert not confident.target.any() and np.all(confident.confidence == 1.0)
    unlabelled = prepare_case(replace(free, negatives_ok=False), _config(nodule_free_confidence=1.0))
    assert unlabelled.confidence.max() < 0.5  # no image-level label: nothing is known
    with_nodules = prepare_case(train[0], _config(nodule_free_confidence=1.0))
    np.testing.assert_array_equal(with_nodules.target, prepare_case(train[0], _config()).target)
    with pytest.raises(ModelConfigError, match="nodule_free_confidence"):
        _config(nodule_free_confidence=1.5)


@pytest.mark.parametrize("annotation", ["boxes:tight", "boxes:loose", "slices:1"])
def test_box_and_slice_targets_find_the_nodules(phantom, annotation):
    _, train, _ = phantom
    prepared = prepare_case(train[0], _config(annotation=annotation))
    target = prepared.target.astype(np.float32)
    assert np.any((target > 0.5) & prepared.truth) and target[prepared.truth].mean() > 0.3
    assert target[~prepared.truth].mean() < 0.01 and prepared.confidence is not None


def test_a_ready_target_is_used_as_given(phantom, tmp_path):
    _, train, _ = phantom
    case = train[0]
    soft = np.zeros(case.image.shape, np.float32)
    soft[10:14, 40:60, 30:50] = 0.8
    soft[11:13, 45:55, 35:45] = 1.0
    given = TargetCase("mine", case.image, soft, lungs=case.lungs)
    config = _config(annotation="full", spacing_mm=None)  # the annotation setting does not apply to it
    prepared = prepare_case(given, config)
    np.testing.assert_array_equal(prepared.target, soft.astype(np.float16))
    assert prepared.confidence is None and np.array_equal(prepared.truth, soft > 0.5)
    mixed_config = _config(spacing_mm=None, batch_size=6)
    other = prepare_case(case, mixed_config)  # a simulated target, with its confidence map
    mixed = sample_batch([prepared, other], mixed_config, 0, 0)
    assert mixed["confidence"] is not None and mixed["confidence"].shape == mixed["target"].shape
    alone = sample_batch([prepared], mixed_config, 0, 0)
    assert alone["confidence"] is None
    result = train_pw4medseg([given], tmp_path / "run", _config(epochs=1, steps_per_epoch=1))
    assert result.global_step == 1
    with pytest.raises(TrainingDataError):
        TargetCase("bad", case.image, soft[:-1])
    with pytest.raises(TrainingDataError):
        train_pw4medseg(["not a case"], tmp_path / "other", _config())


def test_batches_depend_on_seed_epoch_and_step_only(phantom):
    _, train, _ = phantom
    config = _config(foreground_probability=1.0, batch_size=3)
    cases = [prepare_case(c, config) for c in train]
    a, b = sample_batch(cases, config, 0, 1), sample_batch(cases, config, 0, 1)
    c = sample_batch(cases, config, 1, 1)
    assert a["image"].shape == (3, 1, 16, 16, 16) and a["target"].shape == a["confidence"].shape
    np.testing.assert_array_equal(a["image"], b["image"])
    assert not np.array_equal(a["image"], c["image"])
    assert all(t.max() > 0.5 for t in a["target"])  # every crop holds foreground ...
    centres = [np.argwhere(t[0] > 0.5).mean(axis=0) for step in range(12)
               for t in sample_batch(cases, config, 0, step)["target"]]
    assert np.std(centres, axis=0).min() > 1.5  # ... not always in the middle
    big = _config(crop_size=(32, 64, 64), foreground_probability=0.0)  # larger than the 24-slice grid
    batch = sample_batch([prepare_case(train[0], big)], big, 0, 0)
    assert batch["ignore"].any() and not batch["ignore"].all()
    assert np.all(batch["target"][batch["ignore"]] == 0)


# --- training -----------------------------------------------------------------------------


def test_a_few_steps_reduce_the_loss(phantom, tmp_path):
    _, train, _ = phantom
    config = _config(epochs=1, steps_per_epoch=16, lr=5e-3, warmup_steps=0, foreground_probability=1.0,
                     batch_size=2, annotation="full")
    cases = [prepare_case(c, config) for c in train]
    batch = sample_batch(cases, config, 7, 0)  # a batch the run never sees (epoch 7)
    loss_fn = ProbabilityInformedLoss(config.loss)

    def loss_of(model) -> dict:
        with torch.no_grad():
            logits, kl = model(torch.from_numpy(batch["image"]), stochastic=False, return_kl=True)
            parts = loss_fn(logits, torch.from_numpy(batch["target"]), kl,
                            confidence=torch.from_numpy(batch["confidence"]))[1]
        return {k: float(v) for k, v in parts.items()}

    before = loss_of(build_model(config).eval())
    result = train_pw4medseg(train, tmp_path / "run", config)
    assert not result.cancelled and result.global_step == 16 and result.best_path is not None
    after = loss_of(result.model)
    assert after["total"] < 0.95 * before["total"]
    assert after["classification"] < before["classification"] and after["kl"] < before["kl"]


def test_resume_gives_bit_identical_weights_and_cancel_keeps_last(phantom, tmp_path):
    folder, train, val = phantom
    config = _config()
    whole = train_pw4medseg((train, val), tmp_path / "whole", config)
    assert [h["epoch"] for h in whole.history] == [1, 2] and "val_dice" in whole.history[-1]

    steps: list[int] = []
    stopper = TrainCallbacks(step_fn=lambda step, total, loss: steps.append(step),
                             stop_fn=lambda: len(steps) == 4)  # in the middle of epoch 2
    part = train_pw4medseg((train, val), tmp_path / "part", config, stopper)
    assert part.cancelled and part.global_step == 4 and part.epochs_completed == 1
    last = load_checkpoint(tmp_path / "part" / "last.pt")
    assert last.kind == "pw4medseg" and last.raw["step_in_epoch"] == 1
    with pytest.raises(OutputExistsError):
        train_pw4medseg((train, val), tmp_path / "part", config)
    with pytest.raises(CheckpointError):
        train_pw4medseg((train, val), tmp_path / "part", _config(lr=2e-4), resume=True)
    resumed = train_pw4medseg((train, val), tmp_path / "part", None, resume=True)
    assert not resumed.cancelled and resumed.global_step == whole.global_step == 6
    for (name, a), b in zip(whole.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert resumed.history[-1]["train_loss"] == whole.history[-1]["train_loss"]
    assert resumed.history[-1]["val_dice"] == whole.history[-1]["val_dice"]

    early = train_pw4medseg((train, val), tmp_path / "early", config, TrainCallbacks(stop_fn=lambda: True))
    assert early.cancelled and early.global_step == 0 and early.last_path is None  # stopped while building

    model, loaded = load_pw4medseg(tmp_path / "whole")
    best = max(whole.history, key=lambda h: h["val_dice_tuned"])  # best.pt follows the tuned Dice
    assert loaded.threshold == best["val_threshold"] == load_checkpoint(whole.best_path).raw["probability_threshold"]
    assert replace(loaded, threshold=config.threshold) == config and not model.training
    redo = train_pw4medseg((train, val), tmp_path / "part", _config(epochs=1, steps_per_epoch=1),
                           overwrite=True)
    assert redo.global_step == 1


class _ImageIsProbability(torch.nn.Module):
    """A stand-in network whose probability is its input image."""

    def forward(self, x, stochastic=None):
        return torch.logit(x.clamp(1e-4, 1 - 1e-4))


def test_validation_chooses_the_threshold_with_the_best_dice():
    truth = np.zeros((16, 16, 16), bool)
    truth[6:10, 6:10, 6:10] = True
    image = np.where(truth, 0.85, 0.1).astype(np.float32)
    image[0:2, 0:2, 0:4] = 0.55  # a faint false positive: in the mask at 0.5, not at 0.6
    case = TrainingCase("c", image, truth.astype(np.float16), None, truth, np.flatnonzero(truth),
                        np.arange(truth.size), 0.0)
    config = _config(model=TINY, val_passes=1)
    tuned = validate(_ImageIsProbability(), [case], config, torch.device("cpu"))
    assert tuned["dice"] == pytest.approx(2 * 64 / (64 + 80)) and tuned["dice_nodule"] == tuned["dice"]
    assert tuned["threshold"] == 0.6 and tuned["dice_tuned"] == pytest.approx(1.0)
    fixed = validate(_ImageIsProbability(), [case], replace(config, tune_threshold=False), torch.device("cpu"))
    assert "threshold" not in fixed and fixed["dice"] == tuned["dice"]


def test_checkpoint_of_another_kind_is_refused(tmp_path):
    save_checkpoint(tmp_path / "other" / "last.pt", {"kind": "unet-baseline", "model_config": {},
                                                      "train_config": {}, "model_state": {}})
    with pytest.raises(CheckpointError, match="PW4MedSeg"):
        load_pw4medseg(tmp_path / "other")
    with pytest.raises(CheckpointError, match="not a PW4MedSeg run"):
        train_pw4medseg([], tmp_path / "other", _config(), resume=True)


def test_init_from_starts_from_a_checkpoint_and_refuses_another_network(phantom, tmp_path):
    folder, train, val = phantom
    first = train_pw4medseg(train, tmp_path / "first", _config(epochs=1, steps_per_epoch=2))
    tuned = _config(epochs=1, steps_per_epoch=1, lr=1e-12, warmup_steps=0, init_from=str(first.last_path))
    again = train_pw4medseg(train, tmp_path / "tuned", tuned)
    fresh = build_model(tuned)
    moved_from_fresh = moved_from_first = 0.0
    for name, value in again.model.state_dict().items():
        if value.is_floating_point() and "running" not in name:
            moved_from_first += float((value - first.model.state_dict()[name]).abs().max())
            moved_from_fresh += float((value - fresh.state_dict()[name]).abs().max())
    assert moved_from_first < 1e-6 < moved_from_fresh  # a near-zero lr keeps the weights it started from
    assert load_checkpoint(again.last_path).train_config["init_from"] == str(first.last_path)
    other = replace(TINY, hidden_size=64, mlp_dim=128)
    with pytest.raises(CheckpointError, match="network differs"):
        train_pw4medseg(train, tmp_path / "other", _config(model=other, init_from=str(first.last_path)))


def test_balance_sources_draws_each_kind_of_source_equally_often(phantom):
    folder, train, val = phantom
    config = _config(batch_size=1)
    one = prepare_case(train[0], config, 0)
    many = [replace(one, case_id=f"voi{i}", source_kind="lidc-voi") for i in range(9)]
    scan = replace(one, case_id="scan", source_kind="hybrid", image=np.full_like(one.image, -7.0), fill=-7.0)
    cases = many + [scan]

    def share_of_scan(balance: bool) -> float:
        cfg = replace(config, balance_sources=balance)
        return float(np.mean([(sample_batch(cases, cfg, 0, step)["image"] == -7.0).all() for step in range(300)]))

    assert share_of_scan(False) < 0.25 < 0.35 < share_of_scan(True) < 0.65
