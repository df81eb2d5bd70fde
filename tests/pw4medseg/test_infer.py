"""PW4MedSeg inference: geometry kept, K stochastic passes, uncertainty, cancel, the Segmenter."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wsnodule_core.errors import ModelConfigError, SegmentationCancelled
from wsnodule_core.io.volume import Volume
from wsnodule_core.pw4medseg.infer import count_windows, mc_sliding_window, predict_volume
from wsnodule_core.segmentation import PwSegmenter, load_segmenter
from wsnodule_core.pw4medseg.model import PTransformerConfig
from wsnodule_core.pw4medseg.config import PwTrainConfig
from wsnodule_core.pw4medseg.train import build_model, train_pw4medseg

# instance norm: an untrained batch-norm network's output barely varies (fresh running statistics)
TINY = PTransformerConfig.compact(img_size=(16, 16, 16), patch_size=8, hidden_size=32, num_layers=2,
                                  num_heads=2, mlp_dim=64, feature_size=4, norm_name="instance")


def _config(**overrides) -> PwTrainConfig:
    values = dict(model=TINY, spacing_mm=(3.0, 3.0, 3.0), epochs=1, steps_per_epoch=1, warmup_steps=0,
                  val_passes=1, device="cpu")
    return PwTrainConfig(**{**values, **overrides})


def _oblique_volume() -> Volume:
    """A bright ball in air on a non-isotropic grid with an origin and a rotated, flipped direction."""
    shape, spacing = (14, 30, 26), (2.5, 1.2, 1.4)
    zz, yy, xx = np.meshgrid(*[(np.arange(n) - n / 2) * s for n, s in zip(shape, spacing)], indexing="ij")
    image = np.where(zz ** 2 + yy ** 2 + xx ** 2 < 8.0 ** 2, 40.0, -900.0).astype(np.float32)
    angle = np.deg2rad(20)
    direction = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, -1]])
    return Volume(image, spacing, (-120.5, 33.0, 410.25), direction)


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)
    return build_model(_config()).eval()


def test_prediction_lies_on_the_input_grid(model):
    volume = _oblique_volume()
    prediction = predict_volume(model, volume, _config(), passes=2, seed=0)
    for output in (prediction.probability, prediction.uncertainty, prediction.mask):
        assert output.same_geometry(volume) and output.shape == volume.shape
    p = prediction.probability.array
    assert p.dtype == np.float32 and 0.0 <= p.min() and p.max() <= 1.0 and p.std() > 0
    np.testing.assert_array_equal(prediction.mask.array, (p >= 0.5).astype(np.uint8))
    native = predict_volume(model, volume, _config(spacing_mm=None), passes=1, seed=0)  # no resampling
    assert native.probability.same_geometry(volume)
    level = float(np.median(p))  # the config's threshold applies when none is given
    tuned = predict_volume(model, volume, _config(threshold=level), passes=2, seed=0)
    np.testing.assert_array_equal(tuned.mask.array, (p >= level).astype(np.uint8))
    assert tuned.threshold == level


def test_resampling_back_follows_the_content(model):
    """A model that outputs its input intensity shows where the ball is, on the input grid."""
    class Echo(torch.nn.Module):
        def forward(self, x, stochastic=None):
            return (x - 0.5) * 40.0

    volume = _oblique_volume()
    config = _config(intensity="ct", hu_window=(-1000.0, 200.0))
    echo = Echo()
    echo.train()
    p = predict_volume(echo, volume, config, passes=1, stochastic=False).probability.array
    idx = np.indices(volume.shape).reshape(3, -1).T
    centre = np.asarray(volume.shape) / 2.0
    radius = np.linalg.norm((idx - centre) * volume.spacing, axis=1).reshape(volume.shape)
    assert p[radius < 5.0].min() > 0.9 and p[radius > 12.0].max() < 0.1
    # the probability's centre of mass is the ball's: no shift between the grids
    com = (idx * p.reshape(-1, 1)).sum(axis=0) / p.sum()
    truth = (idx * (radius < 8.0).reshape(-1, 1)).sum(axis=0) / (radius < 8.0).sum()
    np.testing.assert_allclose(com, truth, atol=0.25)
    assert echo.training  # the training flag is restored


def test_uncertainty_is_zero_without_sampling_and_positive_with_it(model):
    volume = _oblique_volume()
    config = _config()
    one = predict_volume(model, volume, config, passes=1, seed=1)
    assert np.all(one.uncertainty.array == 0)
    fixed = predict_volume(model, volume, config, passes=4, stochastic=False)
    assert np.all(fixed.uncertainty.array == 0) and fixed.passes == 1
    sampled = predict_volume(model, volume, config, passes=3, seed=1)
    assert sampled.uncertainty.array.max() > 1e-4 and sampled.passes == 3
    again = predict_volume(model, volume, config, passes=3, seed=1)
    np.testing.assert_array_equal(sampled.probability.array, again.probability.array)
    state = torch.get_rng_state()
    predict_volume(model, volume, config, passes=2, seed=5)
    assert torch.equal(state, torch.get_rng_state())  # a seeded prediction leaves the global RNG alone


def test_mean_and_spread_are_those_of_the_passes(model):
    from monai.inferers import sliding_window_inference

    array = np.random.default_rng(0).random((18, 20, 24)).astype(np.float32)
    mean, std = mc_sliding_window(model, array, (16, 16, 16), passes=3, seed=2)
    torch.manual_seed(2)  # the same draws, pass by pass
    x = torch.from_numpy(array)[None, None]
    with torch.no_grad():
        passes = np.stack([sliding_window_inference(
            x, (16, 16, 16), 2, lambda w: torch.sigmoid(model(w, stochastic=True)), overlap=0.25,
            mode="gaussian")[0, 0].numpy() for _ in range(3)])
    np.testing.assert_allclose(mean, passes.mean(axis=0), atol=1e-6)
    np.testing.assert_allclose(std, passes.std(axis=0), atol=1e-5)


def test_zscore_model_sees_the_same_input_at_any_intensity_scale(model):
    volume = _oblique_volume()
    scaled = volume.with_array(volume.array * 0.01 + 300.0)
    config = _config(intensity="zscore")
    a = predict_volume(model, volume, config, passes=2, seed=3).probability.array
    b = predict_volume(model, scaled, config, passes=2, seed=3).probability.array
    np.testing.assert_allclose(a, b, atol=1e-4)


def test_progress_counts_windows_and_cancel_stops(model):
    array = np.zeros((20, 40, 33), np.float32)
    seen: list[tuple[int, int]] = []
    mc_sliding_window(model, array, (16, 16, 16), passes=2, overlap=0.25, batch_size=3,
                      progress=lambda done, total: seen.append((done, total)))
    assert seen[-1][0] == seen[-1][1] == 2 * count_windows((20, 40, 33), (16, 16, 16), 0.25)
    calls: list[int] = []

    def cancel() -> bool:
        calls.append(1)
        return len(calls) > 3

    with pytest.raises(SegmentationCancelled):
        predict_volume(model, _oblique_volume(), _config(), passes=6, cancel=cancel)
    assert len(calls) == 4  # stopped at the first poll that said so
    with pytest.raises(ModelConfigError):
        predict_volume(model, _oblique_volume(), _config(), passes=0)


def test_window_count_matches_monai():
    from monai.data.utils import dense_patch_slices

    for shape, roi, overlap in (((20, 40, 33), (16, 16, 16), 0.25), ((16, 64, 70), (16, 32, 32), 0.5),
                                ((33, 17, 16), (16, 16, 16), 0.0)):
        interval = [r if n == r else max(int(r * (1 - overlap)), 1) for n, r in zip(shape, roi)]
        assert count_windows(shape, roi, overlap) == len(dense_patch_slices(shape, roi, interval))


def test_segmenter_runs_in_the_evaluation(tmp_path):
    from wsnodule_core.data.builders import build_dataset
    from wsnodule_core.evaluation import evaluate_dataset

    torch.set_num_threads(1)
    folder = tmp_path / "ds"
    build_dataset(folder, source="phantom", n_cases=3, size="tiny", n_shapes=20, seed=1)
    run = train_pw4medseg(folder, tmp_path / "run", _config(spacing_mm=(5.0, 7.2, 7.2)))
    segmenter = load_segmenter(run.out_dir, "cpu", passes=2)
    assert isinstance(segmenter, PwSegmenter) and segmenter.config.crop_size == (16, 16, 16)
    assert "val_threshold" not in run.history[-1]  # no validation split: the fixed threshold
    assert segmenter.threshold == segmenter.config.threshold == 0.5
    assert load_segmenter(run.out_dir, "cpu", passes=2, threshold=0.25).threshold == 0.25
    report = evaluate_dataset(folder, {"PW4MedSeg": segmenter}, split="test", out_dir=tmp_path / "eval")
    assert "PW4MedSeg" in report.rows and (tmp_path / "eval" / "metrics.json").exists()
    from wsnodule_core.data.dataset import load_dataset

    case = next(load_dataset(folder).cases("test"))
    result = segmenter.segment(case.image, lungs=case.lungs)
    assert set(result.outputs) == {"mask"} and result.mask.same_geometry(case.image)
    assert set(result.maps) == {"probability", "uncertainty"}
    with pytest.raises(ModelConfigError, match="no option"):
        load_segmenter(run.out_dir, "cpu", top_k=2)
    with pytest.raises(ModelConfigError, match="at least one pass"):
        segmenter.with_options(passes=0)
