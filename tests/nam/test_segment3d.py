"""3D NAM/R-NAM segmentation: blobs, 3D ICM, R-NAM screening with an analytic stand-in model, patch
segmentation, and volume assembly that keeps the input geometry."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from wsnodule_core.io.volume import Volume
from wsnodule_core.nam.model3d import MultiGap3DClassifier, MultiGap3DConfig, MultiGap3DOutput
from wsnodule_core.nam.segment3d import (Segment3DParams, dense_candidates_3d, find_blobs_3d, icm_segment_3d,
                                         mask_candidate_3d, paste_mask, rnam_screening_3d, segment_patch_3d,
                                         segment_volume_3d)

WINDOW = (-1000.0, 400.0)


class BlobDetector3D(torch.nn.Module):
    """Analytic stand-in: activation = ReLU(local mean over a ball of ``radius`` voxels of a soft
    "dense" indicator - fill_level); a ball at least ``radius`` wide fills it, a thin vessel does not.
    The map is average pooled by 2 (a coarse CNN map); nodule logit = gain * (max activation - bias)."""

    def __init__(self, radius: int = 4, fill_level: float = 0.6, gain: float = 40.0, bias: float = 0.1):
        super().__init__()
        r = radius
        zz, yy, xx = torch.meshgrid(*(torch.arange(-r, r + 1),) * 3, indexing="ij")
        ball = ((zz**2 + yy**2 + xx**2) <= r * r).float()
        self.register_buffer("kernel", (ball / ball.sum())[None, None])
        self.radius, self.fill_level, self.gain, self.bias = r, fill_level, gain, bias

    def forward_with_maps(self, x: torch.Tensor) -> MultiGap3DOutput:
        dense = torch.sigmoid((x.float() - 0.5) / 0.02)
        mean = F.conv3d(dense, self.kernel, padding=self.radius)
        act = torch.relu(mean - self.fill_level) / (1 - self.fill_level)
        coarse = F.avg_pool3d(act, 2)
        score = act.amax(dim=(1, 2, 3, 4))
        logits = torch.stack([torch.zeros_like(score), self.gain * (score - self.bias)], dim=1)
        return MultiGap3DOutput(logits, (coarse,), (coarse[:, 0],))


def _ball(shape, centre, radius):
    zz, yy, xx = np.indices(shape)
    return (zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2 <= radius**2


def _nodule_and_vessel(seed=0):
    """A 32^3 patch in [0, 1]: a nodule (radius 4.5, 0.8) and a long, brighter vessel (radius 2, 0.95)
    running along z two voxels away from it: the vessel has more voxels and is brighter."""
    rng = np.random.default_rng(seed)
    image = (0.2 + 0.02 * rng.standard_normal((32, 32, 32))).astype(np.float32)
    nodule = _ball(image.shape, (16, 16, 12), 4.5)
    _, yy, xx = np.indices(image.shape)
    vessel = (yy - 16) ** 2 + (xx - 21) ** 2 <= 2**2
    image[nodule] = 0.8
    image[vessel] = 0.95
    return image, nodule, vessel


def test_rnam_screening_picks_the_candidate_that_drives_the_activation():
    model = BlobDetector3D()
    image, nodule, vessel = _nodule_and_vessel()
    assert vessel.sum() > nodule.sum()  # a "largest" or "brightest" rule would pick the vessel
    candidates = np.zeros(image.shape, np.int32)
    candidates[vessel] = 1
    candidates[nodule] = 2
    with torch.no_grad():
        out = model.forward_with_maps(torch.from_numpy(image)[None, None])
    nam = F.interpolate(out.nams[0][:, None], size=image.shape, mode="trilinear",
                        align_corners=False)[0, 0].numpy()
    scores, rnams, chosen = rnam_screening_3d(model, image, candidates, 2, np.ones(image.shape, bool), nam,
                                              params=Segment3DParams(batch_size=1))
    assert chosen == 2
    assert scores[0] < 0.05 * scores[1]
    # masking the nodule removes all activation: the score is the NAM's own energy
    assert rnams[1].max() == pytest.approx(0.0, abs=1e-6)
    assert scores[1] == pytest.approx(float((nam**2).sum()), rel=1e-4)
    # the result does not depend on the batching
    again, _, _ = rnam_screening_3d(model, image, candidates, 2, np.ones(image.shape, bool), nam,
                                    params=Segment3DParams(batch_size=8))
    np.testing.assert_allclose(again, scores, rtol=1e-5)


def test_masked_candidate_is_filled_with_surrounding_parenchyma():
    image, nodule, vessel = _nodule_and_vessel()
    out = mask_candidate_3d(image, nodule, nodule | vessel, Segment3DParams(fill_noise=False))
    filled = out[nodule]
    assert np.all(filled == filled[0])  # no noise: one value, the ring's median
    assert abs(float(filled[0]) - 0.2) < 0.01  # the background level, not the vessel's
    noisy = mask_candidate_3d(image, nodule, nodule | vessel, Segment3DParams(fill_noise=True))
    assert abs(float(noisy[nodule].std()) - 0.02) < 0.01  # the ring's robust SD
    assert np.array_equal(out[vessel], image[vessel])


def test_find_blobs_3d_ranks_by_peak_and_separates_basins():
    nam = np.zeros((24, 24, 24))
    nam += 2.0 * _ball(nam.shape, (6, 6, 6), 3)
    nam += 1.0 * _ball(nam.shape, (17, 17, 17), 3)
    blobs = find_blobs_3d(nam, Segment3DParams(smooth_sigma_vox=1.0))
    assert len(blobs) == 2
    assert np.allclose(blobs[0].peak_zyx, (6, 6, 6), atol=1)
    assert np.allclose(blobs[1].peak_zyx, (17, 17, 17), atol=1)
    assert blobs[0].scope[6, 6, 6] and not blobs[0].scope[17, 17, 17]
    assert find_blobs_3d(-nam) == []


def test_icm_3d_finds_the_dense_ball_and_smooths_noise():
    rng = np.random.default_rng(1)
    truth = _ball((24, 24, 24), (12, 12, 12), 6)
    image = np.where(truth, 0.7, 0.2) + 0.12 * rng.standard_normal(truth.shape)
    plain = icm_segment_3d(image, 2, beta=0.0, max_sweeps=0)
    smooth = icm_segment_3d(image, 2, beta=1.0, max_sweeps=5)
    assert smooth.means[1] == pytest.approx(0.7, abs=0.05) and smooth.means[0] == pytest.approx(0.2, abs=0.05)
    errors_plain = int(np.count_nonzero((plain.phases == 1) != truth))
    errors_smooth = int(np.count_nonzero((smooth.phases == 1) != truth))
    assert errors_smooth < 0.3 * errors_plain


def test_dense_candidates_touch_the_scope():
    dense = np.zeros((20, 20, 20), bool)
    dense[2:6, 2:6, 2:6] = True      # inside the scope
    dense[10:14, 2:6, 2:6] = True    # far outside
    dense[2:6, 8:10, 2:6] = True     # just outside, within grow_vox of it
    scope = np.zeros_like(dense)
    scope[1:7, 1:7, 1:7] = True
    labels, n = dense_candidates_3d(dense, scope, Segment3DParams(grow_vox=3, min_candidate_vox=8))
    assert n == 1  # the block within reach does not touch the scope itself
    zz, yy, _ = np.indices(dense.shape)
    assert np.array_equal(labels > 0, dense & (yy < 7) & (zz < 7))


def test_segment_patch_3d_segments_the_nodule_in_patch_geometry():
    image, nodule, vessel = _nodule_and_vessel()
    hu = image * (WINDOW[1] - WINDOW[0]) + WINDOW[0]
    direction = np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    patch = Volume(hu, (1.0, 1.0, 1.0), (5.0, -3.0, 40.0), direction)
    result = segment_patch_3d(BlobDetector3D(), patch, Segment3DParams(window=WINDOW))
    assert result.is_nodule and result.probability > 0.99
    assert result.mask.same_geometry(patch) and result.nam.same_geometry(patch)
    mask = result.mask.array > 0
    dice = 2 * np.count_nonzero(mask & nodule) / (mask.sum() + nodule.sum())
    assert dice > 0.85
    assert result.scores.shape == (result.n_candidates,)
    assert result.rnams.shape == (result.n_candidates, 32, 32, 32)
    assert result.scope[16, 16, 12]
    # a wide scope takes in part of the vessel as a second candidate: the R-NAMs still pick the nodule
    wide_params = Segment3DParams(window=WINDOW, smooth_sigma_vox=2.0, threshold_fraction=0.02,
                                  scope_fraction=0.02)
    wide = segment_patch_3d(BlobDetector3D(), patch, wide_params)
    assert wide.n_candidates == 2
    on_vessel = [int(np.count_nonzero((wide.candidates == j) & vessel)) for j in (1, 2)]
    vessel_label = 1 + int(np.argmax(on_vessel))
    assert min(on_vessel) == 0 and max(on_vessel) > 0
    assert wide.chosen == 3 - vessel_label
    assert wide.scores[vessel_label - 1] < 0.01 * wide.scores[wide.chosen - 1]
    # a nodule-free patch is not segmented
    empty = segment_patch_3d(BlobDetector3D(), patch.with_array(np.full((32, 32, 32), -800.0)))
    assert not empty.is_nodule and empty.chosen is None and not empty.mask.array.any()


def test_segment_volume_3d_keeps_the_input_geometry():
    shape, spacing = (16, 40, 36), (2.5, 0.8, 0.9)
    c, s = np.cos(0.3), np.sin(0.3)
    direction = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, -1.0]])
    reference = Volume(np.zeros(shape, np.float32), spacing, (-30.5, 12.25, 100.0), direction)
    centre_idx = np.array([7.3, 21.0, 15.5])
    centre_xyz = reference.index_to_world(centre_idx)
    world = reference.index_to_world(np.indices(shape).reshape(3, -1).T).reshape(*shape, 3)
    truth = np.linalg.norm(world - centre_xyz, axis=-1) <= 6.0
    rng = np.random.default_rng(0)
    hu = np.where(truth, 60.0, -750.0) + 15.0 * rng.standard_normal(shape)
    volume = reference.with_array(hu.astype(np.float32))
    lungs = np.zeros(shape, bool)
    lungs[:, 5:35, 4:32] = True
    done = []
    result = segment_volume_3d(BlobDetector3D(), volume, lungs, patch_size=24, stride=12, spacing_mm=1.0,
                               params=Segment3DParams(window=WINDOW),
                               progress=lambda d, t: done.append((d, t)))
    assert result.labels.same_geometry(volume)
    assert result.n_nodules == 1 and result.n_positive >= 1 and result.n_patches >= result.n_positive
    found = result.labels.array == 1
    dice = 2 * np.count_nonzero(found & truth) / (found.sum() + truth.sum())
    assert dice > 0.7
    centroid = volume.index_to_world(np.argwhere(found).mean(axis=0))
    assert np.linalg.norm(centroid - centre_xyz) < 1.5
    assert done[-1] == (result.n_patches, result.n_patches)


def test_paste_mask_is_aligned_by_world_position():
    reference = Volume(np.zeros((10, 12, 14)), (2.0, 1.0, 1.5), (3.0, -4.0, 7.0))
    patch_mask = np.zeros((4, 4, 4), np.uint8)
    patch_mask[1:3, 1:3, 1:3] = 1
    origin = reference.index_to_world([4.0, 5.0, 6.0])  # patch voxel 0 = reference voxel (4, 5, 6)
    patch = Volume(patch_mask, (2.0, 1.0, 1.5), tuple(origin))
    pasted = paste_mask(patch, reference)
    expected = np.zeros(reference.shape, bool)
    expected[5:7, 6:8, 7:9] = True
    assert np.array_equal(pasted, expected)


def test_real_3d_model_runs_through_the_segmentation():
    torch.manual_seed(0)
    model = MultiGap3DClassifier(MultiGap3DConfig(n_gap=2, width="narrow", channels=(4, 8), head_channels=4))
    with torch.no_grad():
        model.fc.bias.copy_(torch.tensor([-5.0, 5.0]))  # classify everything "nodule"
    image, _, _ = _nodule_and_vessel()
    patch = Volume(image * 1400.0 - 1000.0)
    result = segment_patch_3d(model, patch, Segment3DParams(window=WINDOW))
    assert result.is_nodule and result.nam.array.shape == (32, 32, 32)
    assert result.rnams.shape[0] == result.n_candidates == len(result.scores)
    assert model.training  # the training flag is restored


def test_segment_volume_3d_cancels_and_checks_the_lung_mask():
    from wsnodule_core.errors import GeometryMismatchError, SegmentationCancelled

    volume = Volume(np.full((8, 20, 20), -800.0, np.float32), (2.0, 1.0, 1.0))
    with pytest.raises(SegmentationCancelled):
        segment_volume_3d(BlobDetector3D(), volume, None, patch_size=8, cancel=lambda: True)
    with pytest.raises(GeometryMismatchError):
        segment_volume_3d(BlobDetector3D(), volume, np.ones((8, 20, 21), bool), patch_size=8)
    empty = segment_volume_3d(BlobDetector3D(), volume, np.zeros(volume.shape, bool), patch_size=8)
    assert empty.n_patches == 0 and empty.n_nodules == 0 and empty.labels.same_geometry(volume)


def test_off_centre_candidates_are_left_to_better_placed_patches():
    """One 24^3 cube (stride = size) with the nodule in its corner: kept only without central_only."""
    hu = np.full((24, 24, 24), -750.0, np.float32)
    hu[_ball(hu.shape, (5, 5, 5), 4.5)] = 120.0
    volume = Volume(hu)
    kept = segment_volume_3d(BlobDetector3D(), volume, None, patch_size=24, stride=24, central_only=False,
                             params=Segment3DParams(window=WINDOW))
    dropped = segment_volume_3d(BlobDetector3D(), volume, None, patch_size=24, stride=24,
                                params=Segment3DParams(window=WINDOW))
    assert kept.n_nodules == 1 and kept.n_positive == 1
    assert dropped.n_nodules == 0 and dropped.n_positive == 1
