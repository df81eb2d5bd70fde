"""ICM multi-phase segmentation (Potts MRF, Gaussian classes) and the dense-phase candidates."""

from __future__ import annotations

import numpy as np
import pytest

from wsnodule_core.errors import NamSegmentationError
from wsnodule_core.nam.icm import IcmParams, dense_candidates, dense_phases, icm_segment, kmeans_1d


def four_phase_slice(noise: float, seed: int = 0):
    """Concentric phases 0..3 of equal areas with means 0, 1, 2, 3 plus Gaussian noise."""
    yy, xx = np.mgrid[:128, :128]
    r = np.hypot(yy - 63.5, xx - 63.5)
    radii = np.sqrt(128 * 128 * np.array([1, 2, 3]) / 4 / np.pi)  # 36.1, 51.1, 62.5 px
    truth = np.select([r < radii[0], r < radii[1], r < radii[2]], [3, 2, 1], 0)
    image = truth + np.random.default_rng(seed).normal(0.0, noise, truth.shape)
    return image, truth


def test_kmeans_finds_the_cluster_centres():
    rng = np.random.default_rng(1)
    values = np.concatenate([rng.normal(m, 0.05, 500 * (i + 1)) for i, m in enumerate((-3, 0, 1, 5))])
    assert kmeans_1d(values, 4) == pytest.approx([-3, 0, 1, 5], abs=0.02)


def test_icm_separates_four_noisy_phases():
    image, truth = four_phase_slice(noise=0.3)
    result = icm_segment(image, IcmParams(beta=1.0))
    assert (result.phases == truth).mean() > 0.995
    assert result.means == pytest.approx([0, 1, 2, 3], abs=0.05)
    assert result.sds == pytest.approx([0.3] * 4, abs=0.05)
    assert result.converged and result.sweeps <= 10


def test_icm_with_one_dominant_phase():
    """As in a CT slice, where air and parenchyma hold most pixels and nodules few."""
    yy, xx = np.mgrid[:128, :128]
    r = np.hypot(yy - 64, xx - 64)
    truth = np.select([r < 6, r < 20, r < 45], [3, 2, 1], 0)  # 113, 1144, 5100, 10027 px
    image = truth + np.random.default_rng(3).normal(0.0, 0.15, truth.shape)
    result = icm_segment(image)
    assert (result.phases == truth).mean() > 0.995
    assert (result.phases[truth == 3] == 3).mean() > 0.95


def test_beta_smooths():
    image, truth = four_phase_slice(noise=0.45, seed=2)
    plain = icm_segment(image, IcmParams(beta=0.0)).phases
    smooth = icm_segment(image, IcmParams(beta=1.5)).phases
    # with noise 0.45 a pixel-wise classifier errs about 27% of the time between neighbouring means
    assert (plain == truth).mean() < 0.9
    assert (smooth == truth).mean() > 0.98
    # isolated pixels: none of the 8 neighbours shares the label
    def isolated(labels):
        pad = np.pad(labels, 1, constant_values=-1)
        same = sum(
            (pad[1 + dy : 129 + dy, 1 + dx : 129 + dx] == labels).astype(int)
            for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)
        )
        return int((same == 0).sum())

    assert isolated(smooth) < isolated(plain) / 20


def test_init_region_uses_only_its_intensities():
    image, _ = four_phase_slice(noise=0.05)
    region = np.zeros(image.shape, bool)
    region[:, :10] = True  # only phase 0 there: four classes split around 0
    result = icm_segment(image, IcmParams(max_sweeps=0), init_region=region)
    assert result.means[0] < 0.5 and result.phases.shape == image.shape


def test_dense_candidates_inside_the_scope_by_area():
    phases = np.zeros((40, 40), np.uint8)
    phases[5:10, 5:10] = 3  # 25 px
    phases[20:23, 20:23] = 2  # 9 px
    phases[30, 30] = 3  # 1 px: too small
    phases[35:40, 0:5] = 3  # outside the scope
    scope = np.zeros((40, 40), bool)
    scope[:32, :32] = True
    dense = phases >= 2
    labels, n = dense_candidates(dense, scope, IcmParams(min_area_px=4))
    assert n == 2
    assert (labels == 1).sum() == 25 and labels[7, 7] == 1
    assert (labels == 2).sum() == 9 and labels[21, 21] == 2
    assert labels[30, 30] == 0 and labels[37, 2] == 0


def test_dense_phases_by_mean_threshold():
    image, truth = four_phase_slice(noise=0.05)
    result = icm_segment(image)
    assert (dense_phases(result, IcmParams(n_dense_phases=1)) == (truth == 3)).all()
    assert (dense_phases(result, IcmParams(dense_min_mean=1.5)) == (truth >= 2)).all()
    assert (dense_phases(result, IcmParams(dense_min_mean=10.0)) == (truth == 3)).all()


def test_bad_parameters_raise():
    with pytest.raises(NamSegmentationError, match="n_dense_phases"):
        IcmParams(n_phases=4, n_dense_phases=4)
    with pytest.raises(NamSegmentationError, match="2D"):
        icm_segment(np.zeros((3, 4, 5)))
