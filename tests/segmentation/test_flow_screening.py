"""Flow guidance on a whole CT: blob candidates screened by the predictor before any guidance."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from wsnodule_core.errors import ModelConfigError
from wsnodule_core.io.volume import Volume
from wsnodule_core.segmentation.flow import FlowSegmenter, flow_segmenter

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SPACING = (2.0, 1.0, 1.0)
SHAPE = (24, 96, 96)


def chest_with_two_blobs() -> tuple[Volume, np.ndarray, np.ndarray, np.ndarray]:
    """Two lungs of -850 HU; a soft-tissue nodule (20 HU) in the left one, a fainter blob (-300 HU) in the
    right one. Returns the CT, the lungs and the world centres of the nodule and of the faint blob."""
    z, y, x = np.meshgrid(*(np.arange(n) * s for n, s in zip(SHAPE, SPACING)), indexing="ij")
    hu = np.full(SHAPE, 40.0, np.float32)
    lungs = np.zeros(SHAPE, bool)
    for cx in (28.0, 68.0):
        lungs |= ((y - 48) / 30) ** 2 + ((x - cx) / 16) ** 2 < 1
    lungs &= (z > 4) & (z < 44)
    hu[lungs] = -850
    centres = {"nodule": (24.0, 48.0, 28.0), "faint": (24.0, 48.0, 68.0)}
    for name, value in (("nodule", 20.0), ("faint", -300.0)):
        cz, cy, cx = centres[name]
        hu[(z - cz) ** 2 + (y - cy) ** 2 + (x - cx) ** 2 <= 25] = value
    hu += np.random.default_rng(0).normal(0, 10, SHAPE).astype(np.float32)
    ct = Volume(hu, SPACING, (0.0, 0.0, 0.0), np.eye(3))
    to_world = [ct.index_to_world(np.asarray(c) / np.asarray(SPACING)) for c in centres.values()]
    return ct, lungs, to_world[0], to_world[1]


class BrightCentre(nn.Module):
    """P(nodule) high when the patch's central 2^3 voxels are brighter than 0.42 (-160 HU)."""

    def __init__(self) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.tensor(60.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[-1] // 2
        centre = x[..., c - 1:c + 1, c - 1:c + 1, c - 1:c + 1].mean(dim=(-3, -2, -1)).reshape(len(x))
        return torch.stack([torch.zeros_like(centre), self.gain * (centre - 0.42)], dim=1)


@pytest.fixture(scope="module")
def prior():
    from wsnodule_core.flow.train_prior import PriorTrainConfig, build_prior_model
    from wsnodule_core.flow.velocity import VelocityConfig

    config = PriorTrainConfig(model=VelocityConfig(channels=(8, 16, 32), num_head_channels=8, patch_size=16),
                              spacing_mm=2.0, device="cpu", seed=3)
    return build_prior_model(config).eval(), config


def _segmenter(prior, **options) -> FlowSegmenter:
    from wsnodule_core.flow.guidance import GuidanceConfig

    return FlowSegmenter(BrightCentre(), prior, guidance=GuidanceConfig(t0=0.3, n_steps=2, guided_steps=1),
                         **options)


def test_only_candidates_the_predictor_keeps_are_guided(prior):
    ct, lungs, nodule, faint = chest_with_two_blobs()
    everything = _segmenter(prior).candidate_centres(ct, lungs)
    assert len(everything) == 2  # the blob filter finds both
    screened = _segmenter(prior, min_probability=0.5)
    p = screened.probabilities(ct, np.stack([nodule, faint]))
    assert p[0] > 0.9 and p[1] < 0.1
    kept = screened.candidate_centres(ct, lungs)
    assert len(kept) == 1 and np.linalg.norm(kept[0] - nodule) < 3.0
    result = screened.segment(ct, lungs=lungs)
    assert np.allclose(result.details["centres_xyz"], kept) and len(result.details["runs"]) == 1


def test_no_candidate_above_the_threshold_gives_an_empty_mask_without_guidance(prior):
    ct, lungs, _, _ = chest_with_two_blobs()
    result = _segmenter(prior, min_probability=1.0).segment(ct, lungs=lungs)
    assert not np.asarray(result.mask.array).any() and result.details["runs"] == []


def test_bad_threshold_and_guidance_given_as_pairs(prior):
    with pytest.raises(ModelConfigError, match="min_probability"):
        _segmenter(prior, min_probability=1.5)
    from wsnodule_core.flow.patches import PatchConfig

    from types import SimpleNamespace

    # what load_predictor gives: a checkpoint whose raw dict records the patch protocol
    raw = SimpleNamespace(raw={"patch_config": PatchConfig(size=16, spacing_mm=2.0).to_dict()})
    made = flow_segmenter(BrightCentre(), raw, prior, guidance=(("t0", 0.4), ("clamp", [0.0, 1.0])),
                          rule=("top_percent", 4.0), min_probability=0.3)
    assert made.guidance.t0 == 0.4 and made.guidance.clamp == (0.0, 1.0)
    assert made.rule.kind == "top_percent" and made.min_probability == 0.3



def test_blobs_the_filter_grew_as_one_region_are_separate_candidates(prior):
    """Two nodules in one lung joined by a thin vessel (-200 HU, one voxel: no blob itself): the
    filter grows them as one region with one label; the candidates must still be the two nodules."""
    z, y, x = np.meshgrid(*(np.arange(n) * s for n, s in zip(SHAPE, SPACING)), indexing="ij")
    hu = np.full(SHAPE, 40.0, np.float32)
    lungs = (((y - 48) / 36) ** 2 + ((x - 48) / 40) ** 2 < 1) & (z > 4) & (z < 44)
    hu[lungs] = -850
    centres = [(24.0, 48.0, 30.0), (24.0, 48.0, 66.0)]
    for cz, cy, cx in centres:
        hu[(z - cz) ** 2 + (y - cy) ** 2 + (x - cx) ** 2 <= 25] = 20.0
    hu[12, 48, 30:67] = -200.0
    hu += np.random.default_rng(0).normal(0, 10, SHAPE).astype(np.float32)
    ct = Volume(hu, SPACING, (0.0, 0.0, 0.0), np.eye(3))
    from wsnodule_core.baselines.blob_filter import segment_blobs

    assert np.asarray(segment_blobs(ct, lungs).mask).max() == 1  # one grown region
    found = _segmenter(prior).candidate_centres(ct, lungs)
    assert len(found) == 2
    for c in centres:
        truth = ct.index_to_world(np.asarray(c) / np.asarray(SPACING))
        assert np.linalg.norm(found - truth, axis=1).min() < 3.0



def test_central_component_keeps_one_piece_per_guided_candidate(prior):
    from scipy import ndimage

    from wsnodule_core.flow.attribution import ThresholdRule

    ct, lungs, nodule, _ = chest_with_two_blobs()
    options = {"centres_xyz": np.asarray([nodule]), "rule": ThresholdRule("top_percent", 40.0)}
    every = np.asarray(_segmenter(prior, **options).segment(ct, lungs=lungs).mask.array) > 0
    made = flow_segmenter(BrightCentre(), None, prior, central_component=True,
                          guidance=(("t0", 0.3), ("n_steps", 2), ("guided_steps", 1)), **options)
    central = np.asarray(made.segment(ct, lungs=lungs).mask.array) > 0
    assert every.any() and central.any() and not (central & ~every).any()  # a part of the full mask
    assert ndimage.label(central, np.ones((3, 3, 3)))[1] == 1
