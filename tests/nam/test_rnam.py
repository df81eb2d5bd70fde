"""R-NAM screening: candidate filling, eq. 4 by hand, the nodule (not the vessel) drives the NAM."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wsnodule_core.errors import NamSegmentationError
from wsnodule_core.nam.blob_model import BlobDetectorModel
from wsnodule_core.image.window import NAM_WINDOW, apply_window
from wsnodule_core.nam.model import MultiGapOutput
from wsnodule_core.nam.rnam import FillParams, mask_candidate, rnam_screening
from wsnodule_core.nam.scope import ScopeParams
from wsnodule_core.nam.segment_config import NamConfig
from wsnodule_core.nam.slice_segment import segment_slice


class IdentityNam(torch.nn.Module):
    """NAM = the input image itself (one branch at full resolution)."""

    def forward_with_maps(self, x):
        logits = torch.zeros(x.shape[0], 2)
        return MultiGapOutput(logits, (x,), (x[:, 0],))


def lung_slice(seed: int = 0):
    """A 128 x 128 HU slice: lung, a round nodule (r = 7 px, 20 HU) and, 3 px from its edge, a brighter
    straight vessel (5 px wide, 150 HU), plus noise."""
    yy, xx = np.mgrid[:128, :128]
    hu = np.full((128, 128), -1000.0)
    hu[((yy - 64) ** 2 / 55**2 + (xx - 64) ** 2 / 50**2) < 1] = -850
    nodule = (yy - 60) ** 2 + (xx - 60) ** 2 <= 49
    vessel = (np.abs(xx - 71) <= 2) & (yy > 30) & (yy < 100)
    hu[nodule] = 20
    hu[vessel] = 150
    hu += np.random.default_rng(seed).normal(0, 20, hu.shape)
    return hu.astype(np.float32), nodule, vessel


def test_eq4_by_hand_with_an_identity_nam():
    image = np.full((32, 32), 0.2, np.float32)
    image[10:14, 10:14] = 1.0  # candidate 1: 16 px
    image[20:22, 20:25] = 0.6  # candidate 2: 10 px
    candidates = np.zeros((32, 32), np.int32)
    candidates[10:14, 10:14] = 1
    candidates[20:22, 20:25] = 2
    scope = np.zeros((32, 32), bool)
    scope[:, :12] = True  # half of candidate 1 (8 px), none of candidate 2
    fill = FillParams(dilation_px=0, noise=False)
    result = rnam_screening(IdentityNam(), image, candidates, 2, scope, image, fill=fill)
    # the fill is the ring's median 0.2, so NAM_I - NAM_(I minus R_1) = 0.8 on R_1
    assert result.scores == pytest.approx([8 * 0.8**2, 0.0], abs=1e-5)
    assert result.chosen == 0 and result.chosen_label == 1
    assert result.rnams.shape == (2, 32, 32)
    assert result.rnams[0][10:14, 10:14] == pytest.approx(np.full((4, 4), 0.2))
    # per-candidate regions: candidate 2 summed over the whole image
    regions = np.stack([scope, np.ones((32, 32), bool)])
    result = rnam_screening(IdentityNam(), image, candidates, 2, regions, image, fill=fill)
    assert result.scores == pytest.approx([8 * 0.64, 10 * 0.4**2], abs=1e-5)


def test_fill_uses_surrounding_parenchyma_with_its_noise():
    rng = np.random.default_rng(0)
    image = (0.2 + rng.normal(0, 0.01, (64, 64))).astype(np.float32)
    nodule = np.hypot(*np.mgrid[-32:32, -32:32]) <= 6
    image[nodule] = 0.7
    vessel = np.zeros((64, 64), bool)
    vessel[:, 40:43] = True
    image[vessel] = 0.8
    filled = mask_candidate(image, nodule, vessel | nodule, FillParams(dilation_px=1, ring_width_px=3))
    values = filled[nodule]
    assert values.mean() == pytest.approx(0.2, abs=0.003)
    assert values.std() == pytest.approx(0.01, rel=0.25)
    assert (filled[~nodule & ~vessel] != image[~nodule & ~vessel]).sum() < 60  # only the 1 px rim
    assert (filled[vessel] == image[vessel]).all()
    again = mask_candidate(image, nodule, vessel | nodule, FillParams(), index=0)
    other = mask_candidate(image, nodule, vessel | nodule, FillParams(), index=1)
    assert (again == filled).all() and not (other == filled).all()
    smooth = mask_candidate(image, nodule, vessel | nodule, FillParams(method="biharmonic"))
    assert abs(smooth[nodule].mean() - 0.2) < 0.06  # smooth, from the noisy rim: no exact value


def test_the_nodule_not_the_brighter_vessel_drives_the_activation():
    hu, nodule, vessel = lung_slice()
    config = NamConfig(input_size=128, scope=ScopeParams(smooth_sigma_px=3, scope_fraction=0.05))
    result = segment_slice(BlobDetectorModel(6, strides=(8,)), hu, config=config)
    assert result.is_nodule
    labels = [j for j in range(1, result.candidates.max() + 1)]
    on_vessel = [j for j in labels if (vessel & (result.candidates == j)).any()]
    on_nodule = [j for j in labels if (nodule & (result.candidates == j)).any()]
    assert len(on_vessel) == 1 and len(on_nodule) == 1 and on_vessel != on_nodule
    (chosen,) = result.chosen_labels
    assert chosen == on_nodule[0]
    assert result.scores[chosen - 1] > 5 * result.scores[on_vessel[0] - 1]
    overlap = (result.fine & nodule).sum()
    assert 2 * overlap / (result.fine.sum() + nodule.sum()) > 0.9
    # the coarse mask holds both; the "densest" coarse mode takes the (brighter) vessel
    assert (result.coarse & vessel).any() and (result.coarse & nodule).any()
    densest = segment_slice(BlobDetectorModel(6, strides=(8,)), hu, config=NamConfig(
        input_size=128, scope=config.scope, coarse_mode="densest"))
    assert (densest.coarse & vessel).any() and not (densest.coarse & nodule).any()


def test_batched_equals_one_by_one():
    hu, _, _ = lung_slice(seed=1)
    image = apply_window(hu, NAM_WINDOW)
    candidates = np.zeros(hu.shape, np.int32)
    for j, (y, x) in enumerate([(60, 60), (40, 71), (80, 71), (64, 30), (30, 40)], start=1):
        candidates[y - 2 : y + 3, x - 2 : x + 3] = j
    model = BlobDetectorModel(6, strides=(8,))
    nam = model.forward_with_maps(torch.from_numpy(image)[None, None]).nams[0]
    nam = torch.nn.functional.interpolate(nam[:, None], size=(128, 128), mode="bilinear")[0, 0]
    scope = np.ones(hu.shape, bool)
    one = rnam_screening(model, image, candidates, 5, scope, nam, batch_size=1)
    all_ = rnam_screening(model, image, candidates, 5, scope, nam, batch_size=16)
    three = rnam_screening(model, image, candidates, 5, scope, nam, batch_size=3, keep_rnams=False)
    np.testing.assert_allclose(one.scores, all_.scores, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(one.rnams, all_.rnams, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(three.scores, all_.scores, rtol=1e-5, atol=1e-6)
    assert three.rnams is None and one.chosen == all_.chosen == three.chosen


def test_no_candidate_and_bad_shapes():
    empty = rnam_screening(IdentityNam(), np.zeros((8, 8)), np.zeros((8, 8), int), 0, np.ones((8, 8), bool),
                           np.zeros((8, 8)))
    assert empty.chosen is None and empty.scores.shape == (0,)
    with pytest.raises(NamSegmentationError, match="same|share"):
        rnam_screening(IdentityNam(), np.zeros((8, 8)), np.ones((8, 9), int), 1, np.ones((8, 8), bool),
                       np.zeros((8, 8)))
    with pytest.raises(NamSegmentationError, match="method"):
        FillParams(method="zeros")
