"""Interactive prompts (box, clicks, propagation) over one CT: the plumbing with a stand-in model (crop
reuse, one encoder pass per crop, masks on the CT grid, stops), LiteMedSAM itself when installed, and a
box on a real VOI when WSNODULE_DATA is set."""

from __future__ import annotations

import threading
import time
import types

import numpy as np
import pytest

from wsnodule_core.errors import PromptError, SegmentationCancelled
from wsnodule_core.foundation import EmbeddingCache
from wsnodule_core.foundation.prompt import PromptSession
from wsnodule_core.metrics import dice_3d

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _box(mask2d: np.ndarray, grow: int = 1) -> tuple[int, int, int, int]:
    rows, cols = np.nonzero(mask2d)
    return (rows.min() - grow, cols.min() - grow, rows.max() + 1 + grow, cols.max() + 1 + grow)


@pytest.fixture
def sphere(smooth_sphere_ct):
    return smooth_sphere_ct(radius_mm=6.0, shape=(11, 64, 64))


def test_a_box_gives_a_mask_on_the_ct_grid_and_later_prompts_on_the_slice_cost_no_encoder_pass(stub_medsam, sphere):
    volume, truth = sphere
    session = PromptSession(volume, model=stub_medsam)
    before = stub_medsam.net.encoded
    first = session.box(5, _box(truth[5]))
    assert first.encoded and first.z == 5 and first.mask.shape == volume.shape[1:]
    assert dice_3d(first.mask, truth[5]) > 0.85 and first.contrast > 500
    moved = session.box(5, np.add(_box(truth[5]), (1, -1, 1, -1)))  # the box dragged a pixel
    assert not moved.encoded and dice_3d(moved.mask, truth[5]) > 0.85
    assert stub_medsam.net.encoded - before == 1 == session.encoder_passes
    far = session.box(5, (0, 0, 6, 6))  # a box elsewhere on the slice needs its own crop
    assert far.encoded and not far.mask[truth[5]].any()


def test_clicks_make_a_box_add_and_remove_and_a_first_negative_click_is_refused(stub_medsam, sphere):
    volume, truth = sphere
    session = PromptSession(volume, model=stub_medsam)
    with pytest.raises(PromptError, match="negative click"):
        session.click(5, 31, 31, positive=False)
    y0, x0, y1, x1 = session.click_box(5, 31, 31)
    rows, cols = np.nonzero(truth[5])
    grow = int(np.ceil(0.15 * (rows.max() + 1 - rows.min())))  # the bright region, grown by click_margin
    assert (y0, x0, y1, x1) == (rows.min() - grow, cols.min() - grow, rows.max() + 1 + grow, cols.max() + 1 + grow)
    clicked = session.click(5, 31, 31)
    assert clicked.encoded and dice_3d(clicked.mask, truth[5]) > 0.85
    cut = session.click(5, 31, 31 - 6, positive=False)  # pixels nearer the click than the core go
    assert not cut.encoded and not cut.mask[:, :31 - 3].any() and np.array_equal(cut.mask[:, 32:], clicked.mask[:, 32:])
    assert 0 < cut.mask.sum() < clicked.mask.sum() and not (cut.mask & ~clicked.mask).any()
    regrown = session.click(5, 31, 31 - 6)  # a positive click adds its own click box's mask back
    assert not regrown.encoded and regrown.mask[31, 31 - 6] and dice_3d(regrown.mask, truth[5]) > 0.85
    # on dark lung the click's box is the smallest square, click_min_mm wide
    y0, x0, y1, x1 = session.click_box(5, 5, 5)
    assert y1 - y0 == x1 - x0 == 2 * round(5.0 / 2 / 0.7) + 1
    # a click correcting an existing mask takes that mask's box
    session.forget(6)
    again = session.click(6, 31, 31, current=truth[6])
    assert again.box == _box(truth[6]) and dice_3d(again.mask, truth[6]) > 0.8


def test_a_click_on_a_wall_gets_the_smallest_box_not_the_whole_wall(stub_medsam, sphere):
    volume, truth = sphere
    image = np.asarray(volume.array).copy()
    image[:, :, 50:] = 40.0  # a chest wall along the right edge
    session = PromptSession(volume.with_array(image), model=stub_medsam)
    y0, x0, y1, x1 = session.click_box(5, 31, 55)
    assert y1 - y0 == x1 - x0 == 2 * round(5.0 / 2 / 0.7) + 1
    assert session.click_box(5, 31, 31)[3] < 50  # the nodule's box stays off the wall


def test_clicks_can_go_to_the_decoder_as_points_with_the_box(stub_medsam, sphere):
    volume, truth = sphere
    session = PromptSession(volume, model=stub_medsam, click_points=True)
    session.box(5, _box(truth[5]))
    cut = session.click(5, 31, 31, positive=False)  # the stand-in clears a disk around a negative point
    assert not cut.mask[31, 31] and cut.mask.any() and cut.box == _box(truth[5])
    grown = session.click(5, 5, 5)  # a positive point outside the box stretches the box to it
    assert grown.box[:2] == (5, 5)


def test_propagation_stops_where_the_nodule_ends_and_after_n_slices(stub_medsam, sphere):
    volume, truth = sphere
    session = PromptSession(volume, model=stub_medsam)
    start = session.box(5, _box(truth[5]))
    spread = session.propagate(5, start.mask, "both")
    reached = {r.z for r in spread}
    assert reached == {z for z in range(11) if truth[z].any()} - {5}
    stacked = np.zeros_like(truth)
    stacked[5] = start.mask
    for r in spread:
        stacked[r.z] = r.mask
    assert dice_3d(stacked, truth) > 0.8
    assert [r.z for r in session.propagate(5, start.mask, "up", n=1)] == [6]
    assert [r.z for r in session.propagate(5, start.mask, "down", n=2)] == [3, 4]
    with pytest.raises(SegmentationCancelled):
        session.propagate(5, start.mask, "both", cancel=lambda: True)
    with pytest.raises(PromptError, match="non-empty mask"):
        session.propagate(5, np.zeros(volume.shape[1:], bool))
    with pytest.raises(PromptError, match="direction"):
        session.propagate(5, start.mask, "sideways")


def test_prewarming_encodes_ahead_and_the_disk_cache_spares_a_new_sessions_pass(stub_medsam, sphere, tmp_path):
    volume, truth = sphere
    cache = EmbeddingCache(tmp_path)
    session = PromptSession(volume, model=stub_medsam, cache=cache)
    start = session.box(5, _box(truth[5]))
    assert session.prewarm_neighbours(start) == 2
    assert all(not r.encoded for r in session.propagate(5, start.mask, "both", n=1))
    fresh = PromptSession(volume, model=stub_medsam, cache=cache)
    assert not fresh.box(5, _box(truth[5])).encoded and fresh.encoder_passes == 0


def test_a_prompt_on_a_cached_slice_does_not_wait_for_a_prewarm(stub_medsam, sphere):
    volume, truth = sphere
    session = PromptSession(volume, model=stub_medsam)
    box = _box(truth[5])
    session.box(5, box)
    entered, release = threading.Event(), threading.Event()
    encode = session._encode_crop

    def slow(z, b):
        entered.set()
        release.wait(10)
        return encode(z, b)

    session._encode_crop = slow
    worker = threading.Thread(target=session.prewarm, args=(6, box))
    worker.start()
    assert entered.wait(10)
    result = session.box(5, box)  # answered while the prewarm is still encoding slice 6
    assert not result.encoded and worker.is_alive()
    release.set()
    worker.join(10)
    session._encode_crop = encode
    assert not session.box(6, box).encoded and session.encoder_passes == 2


def test_bad_prompts_are_refused(stub_medsam, sphere):
    volume, _ = sphere
    session = PromptSession(volume, model=stub_medsam)
    with pytest.raises(PromptError, match="not in the CT"):
        session.box(11, (0, 0, 5, 5))
    with pytest.raises(PromptError, match="empty or outside"):
        session.box(3, (70, 70, 80, 80))
    with pytest.raises(PromptError, match=r"\(y0, x0, y1, x1\)"):
        session.box(3, (1, 2, 3))
    with pytest.raises(PromptError, match="outside slice"):
        session.click(3, 64, 3)
    with pytest.raises(PromptError, match="3D CT"):
        PromptSession(types.SimpleNamespace(shape=volume.shape[1:]), model=stub_medsam)


def test_lite_medsam_segments_a_box_and_refines_it_with_the_decoder_only(lite_medsam, sphere):
    volume, truth = sphere
    session = PromptSession(volume, model=lite_medsam)
    first = session.box(5, _box(truth[5]))
    assert first.encoded and dice_3d(first.mask, truth[5]) > 0.8
    t = time.perf_counter()
    second = session.click(5, 31, 31)
    cached = time.perf_counter() - t
    assert not second.encoded and dice_3d(second.mask, truth[5]) > 0.7 and cached < 1.0
    spread = session.propagate(5, first.mask, "both")
    assert {r.z for r in spread} >= {4, 6}


def test_a_box_on_a_real_voi_draws_its_nodule(lite_medsam, wsnodule_data):
    from wsnodule_core.data.lidc.vois import load_voi, read_voi_table

    root = wsnodule_data / "lidc-vois"
    if not root.is_dir():
        pytest.skip(f"{root} is missing from WSNODULE_DATA")
    voi = next(v for v in read_voi_table(root) if v.patient_id == "LIDC-IDRI-0001")
    image, mask = load_voi(voi)
    truth = np.asarray(mask.array) > 0
    z = int(np.argmax(truth.sum(axis=(1, 2))))
    result = PromptSession(image, model=lite_medsam).box(z, _box(truth[z]))
    assert dice_3d(result.mask, truth[z]) > 0.8
