"""segment_volume / segment_slice: geometry, linking across slices, maps, progress, cancel, modes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wsnodule_core.errors import NamSegmentationError, SegmentationCancelled
from wsnodule_core.io.volume import Volume
from wsnodule_core.nam.blob_model import BlobDetectorModel
from wsnodule_core.nam.pipeline import NamConfig, link_slices, segment_slice, segment_volume
from wsnodule_core.nam.scope import ScopeParams

SPACING = (2.5, 0.8, 0.7)
DIRECTION = np.array([[-1.0, 0, 0], [0, 1, 0], [0, 0, -1]])
SCOPE = ScopeParams(smooth_sigma_px=5, threshold_fraction=0.05, scope_fraction=0.02)


def blob_model(stride: int | tuple[int, ...] = 8) -> BlobDetectorModel:
    """The stand-in classifier; fat (-100 HU) stays under its density level (about -50 HU)."""
    strides = (stride,) if isinstance(stride, int) else stride
    return BlobDetectorModel(6, strides=strides, dense_level=0.64, softness=0.01)


def chest(nodules=((6, 48, 50),), shape=(12, 96, 112), radius_mm=5.5, seed=0, with_vessel=True):
    """HU volume: air, a fat body wall, an elliptic lung, spherical nodules (20 HU) and a bright vessel
    (150 HU) along z next to the first nodule."""
    z, y, x = np.meshgrid(*(np.arange(n) * s for n, s in zip(shape, SPACING)), indexing="ij")
    hu = np.full(shape, -1000.0)
    ny, nx = shape[1:]
    r2 = ((y / SPACING[1] - ny / 2) / ny) ** 2 + ((x / SPACING[2] - nx / 2) / nx) ** 2
    hu[r2 < 0.49**2] = -100
    lungs = r2 < 0.41**2
    hu[lungs] = -850
    truth = np.zeros(shape, bool)
    for cz, cy, cx in nodules:
        c = np.array([cz, cy, cx]) * SPACING
        truth |= (z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2 <= radius_mm**2
    cz, cy, cx = np.array(nodules[0]) * SPACING
    vessel = ((y - cy) ** 2 + (x - (cx + radius_mm + 2.8)) ** 2 <= 1.6**2) & with_vessel
    hu[truth] = 20
    hu[vessel] = 150
    hu += np.random.default_rng(seed).normal(0, 20, shape)
    volume = Volume(hu.astype(np.float32), SPACING, (10.0, -20.0, 30.0), DIRECTION)
    return volume, lungs, truth, vessel


def dice(a, b):
    return 2 * (a & b).sum() / max(1, a.sum() + b.sum())


@pytest.mark.parametrize("use_lungs", [True, False], ids=["lung-crop", "resized"])
def test_volume_segmentation_on_the_input_geometry(use_lungs):
    volume, lungs, truth, vessel = chest()
    model = blob_model()
    model.train()
    config = NamConfig(input_size=128, scope=SCOPE, max_kept_rnams=2)
    result = segment_volume(model, volume, lungs=lungs if use_lungs else None, config=config, batch_size=5)
    assert model.training  # the flag is restored
    for vol in (result.fine, result.coarse, result.nam, result.scope, result.candidates):
        assert vol.same_geometry(volume) and vol.spacing == SPACING and vol.origin == volume.origin
        assert np.allclose(vol.direction, DIRECTION)
    assert result.nam.array.dtype == np.float32 and result.fine.array.dtype == np.int32
    assert result.multi_nam is None
    # the nodule is big enough for the stand-in on slices 5-7 only
    assert list(np.flatnonzero(result.is_nodule)) == [5, 6, 7]
    assert result.probability[[5, 6, 7]].min() > 0.9 and result.probability[:4].max() < 0.1
    assert [s.z for s in result.slices] == [5, 6, 7]
    # one nodule linked across slices, on the nodule and not on the vessel
    assert result.n_nodules == 1
    fine = result.fine.array > 0
    assert set(np.flatnonzero(fine.any(axis=(1, 2)))) == {5, 6, 7}
    assert dice(fine[5:8], truth[5:8]) > 0.8
    assert (fine & vessel).sum() < 0.05 * fine.sum()
    coarse = result.coarse.array > 0
    assert (coarse >= fine).all() and (coarse & ~fine)[5:8].any()  # the coarse mask has the vessel too
    # the maps: NAM peak near the nodule, scope and candidates on slice 6
    peak = np.unravel_index(np.argmax(result.nam.array[6]), volume.shape[1:])
    assert np.hypot(peak[0] - 48, (peak[1] - 50) * 0.7 / 0.8) < 4
    assert result.scope.array[6, 48, 50] == 1 and result.scope.array[0].sum() == 0
    chosen = result.slices[1].chosen
    assert len(chosen) == 1 and result.candidates.array[6, 48, 50] == chosen[0]
    assert len(result.slices[1].candidates) == result.candidates.array[6].max()
    assert max(len(s.candidates) for s in result.slices) >= 2  # nodule and vessel apart somewhere
    rnams = [c.rnam for s in result.slices for c in s.candidates if c.rnam is not None]
    assert len(rnams) == 2 and rnams[0].shape == volume.shape[1:] and rnams[0].dtype == np.float32
    best = max(result.slices[1].candidates, key=lambda c: c.score)
    assert best.label == chosen[0] and best.area_px > 50


def test_icm_initialised_on_the_lungs():
    volume, lungs, truth, _ = chest()
    config = NamConfig(input_size=128, scope=SCOPE, icm_init="lung")
    result = segment_volume(blob_model(), volume, lungs=Volume(lungs.astype(np.uint8), SPACING, volume.origin,
                                                                DIRECTION), config=config)
    assert result.n_nodules == 1 and dice(result.fine.array[5:8] > 0, truth[5:8]) > 0.8


def test_link_slices_bridges_one_gap():
    mask = np.zeros((8, 10, 10), bool)
    mask[0:2, 2:5, 2:5] = True
    mask[3, 3:6, 3:6] = True  # one empty slice (2) between, overlapping in-plane
    mask[0:3, 8:10, 8:10] = True  # another nodule
    labels = link_slices(mask, bridge_gap=True)
    assert labels.max() == 2 and labels[0, 3, 3] == labels[3, 4, 4] != labels[0, 9, 9]
    assert (labels[~mask] == 0).all() and (labels[mask] > 0).all()
    assert link_slices(mask, bridge_gap=False).max() == 3
    mask[6, 3:6, 3:6] = True  # two empty slices (4, 5) between: never bridged
    assert link_slices(mask, bridge_gap=True).max() == 3


def test_progress_and_cancel():
    volume, lungs, _, _ = chest(shape=(6, 64, 64), nodules=((3, 32, 28),))
    model = blob_model()
    seen = []
    segment_volume(model, volume, config=NamConfig(input_size=64, scope=SCOPE),
                   progress=lambda done, total: seen.append((done, total)), batch_size=4)
    assert seen[-1] == (12, 12) and all(t == 12 for _, t in seen)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen) and seen[0] == (4, 12)
    calls = []
    with pytest.raises(SegmentationCancelled, match="cancelled"):
        segment_volume(model, volume, config=NamConfig(input_size=64), batch_size=2,
                       cancel=lambda: calls.append(1) or len(calls) > 2)
    assert len(calls) == 3
    with pytest.raises(NamSegmentationError, match="batch_size"):
        segment_volume(model, volume, batch_size=0)


def test_two_nodule_mode():
    volume, _, truth, _ = chest(nodules=((6, 30, 35), (6, 66, 78)), shape=(9, 96, 112), with_vessel=False)
    model = blob_model()
    one = segment_volume(model, volume, config=NamConfig(input_size=128, scope=SCOPE))
    two = segment_volume(model, volume, config=NamConfig(input_size=128, scope=SCOPE, top_k=2))
    assert one.n_nodules == 1 and two.n_nodules == 2
    assert dice(two.fine.array[5:8] > 0, truth[5:8]) > 0.8
    assert all(len(s.chosen) == 2 for s in two.slices)


def test_multi_gap_scope_is_narrower():
    volume, lungs, truth, _ = chest()
    model = blob_model(16)  # coarse 1-GAP NAM: a wide C1
    multi = blob_model((16, 4, 2))
    config = NamConfig(input_size=128, scope=ScopeParams(smooth_sigma_px=3, scope_fraction=0.1))
    base = segment_volume(model, volume, lungs=lungs, config=config)
    both = segment_volume(model, volume, lungs=lungs, config=config, multi_gap_model=multi)
    assert both.multi_nam is not None and both.multi_nam.same_geometry(volume)
    assert both.multi_nam.array[0].max() == 0 and both.multi_nam.array[6].max() > 0  # nodule slices only
    np.testing.assert_array_equal(both.probability, base.probability)
    assert (base.scope.array <= 1).all()  # no C1 outside C without a multi-GAP model
    c = both.scope.array[6] == 1
    c1 = both.scope.array[6] > 0
    assert c[48, 50] and c.sum() < 0.5 * c1.sum()
    assert (c1 == (base.scope.array[6] == 1)).all()  # C1 is the 1-GAP scope
    assert dice(both.fine.array[5:8] > 0, truth[5:8]) > 0.8


def test_segment_slice_directly():
    volume, _, truth, vessel = chest()
    model = blob_model()
    result = segment_slice(model, volume.array[6], config=NamConfig(input_size=128, scope=SCOPE))
    assert result.is_nodule and result.nam.shape == (96, 112) and dice(result.fine, truth[6]) > 0.8
    negative = segment_slice(model, volume.array[0], config=NamConfig(scope=SCOPE))
    assert not negative.is_nodule and not negative.fine.any() and negative.phases is None
    forced = segment_slice(model, volume.array[0], config=NamConfig(scope=SCOPE), force=True)
    assert forced.phases is not None


@pytest.mark.slow
def test_real_classifier_on_a_phantom():
    from wsnodule_core.data.phantom import make_phantom
    from wsnodule_core.nam.model import MultiGapClassifier, MultiGapConfig

    torch.manual_seed(0)
    phantom = make_phantom(shape=(16, 96, 96), spacing=(5, 3.6, 3.6), seed=0)
    one = MultiGapClassifier(MultiGapConfig(n_gap=1, width="narrow", head_channels=128))
    three = MultiGapClassifier(MultiGapConfig(n_gap=3, width="narrow", head_channels=128))
    config = NamConfig(input_size=96, probability_threshold=0.0)  # random weights: segment every slice
    for lungs in (phantom.lungs, None):
        result = segment_volume(one, phantom.volume, lungs=lungs, config=config, multi_gap_model=three)
        maps = (result.fine, result.coarse, result.nam, result.multi_nam, result.scope, result.candidates)
        assert all(vol.same_geometry(phantom.volume) for vol in maps)
        assert result.probability.shape == (16,) and result.is_nodule.all()
        assert len(result.slices) == 16
        assert np.isfinite(result.nam.array).all() and np.isfinite(result.multi_nam.array).all()


def test_candidates_outside_the_lungs_are_dropped_and_relabelled():
    from wsnodule_core.nam.slice_segment import keep_lung_candidates

    labels = np.zeros((10, 10), np.int32)
    labels[1:3, 1:3] = 1  # fully in the lung
    labels[5:7, 0:4] = 2  # half in the lung (x 0-1 inside): kept at 0.5
    labels[8:10, 6:10] = 3  # chest wall: outside
    lungs = np.zeros((10, 10), bool)
    lungs[:, :2] = True
    lungs[0:4, 0:4] = True
    kept, count = keep_lung_candidates(labels, 3, lungs, 0.5)
    assert count == 2
    np.testing.assert_array_equal(kept[1:3, 1:3], 1)
    np.testing.assert_array_equal(kept[5:7, 0:4], 2)
    assert not kept[8:10, 6:10].any()
    kept, count = keep_lung_candidates(labels, 3, lungs, 0.75)
    assert count == 1 and set(np.unique(kept)) == {0, 1}


class _Counting(torch.nn.Module):
    """Wraps a classifier and counts the images it sees."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner, self.seen = inner, 0

    def forward(self, x):
        self.seen += len(x)
        return self.inner(x)

    def forward_with_maps(self, x):
        self.seen += len(x)
        return self.inner.forward_with_maps(x)


def test_lung_slices_only_and_no_rnam_pass():
    volume, lungs, truth, _ = chest()
    lungs = lungs.copy()
    lungs[:2] = False  # two slices without lung: never classified
    counted = _Counting(blob_model())
    config = NamConfig(input_size=128, scope=SCOPE, lung_slices_only=True, rnam=False)
    result = segment_volume(counted, volume, lungs=lungs, config=config, batch_size=4)
    assert counted.seen == volume.shape[0] - 2  # one pass per lung slice, none per candidate
    assert np.all(result.probability[:2] == 0) and np.all(result.nam.array[:2] == 0)
    assert dice(result.fine.array > 0, truth) > 0.7
    with_rnam = _Counting(blob_model())
    segment_volume(with_rnam, volume, lungs=lungs, config=NamConfig(input_size=128, scope=SCOPE))
    assert with_rnam.seen > volume.shape[0]  # the paper's R-NAM: more passes, one per candidate
