"""The threshold search every map-based method gets on validation patches."""

from __future__ import annotations

import numpy as np
import pytest

from wsnodule_core.errors import ModelConfigError
from wsnodule_core.flow.attribution import ThresholdRule, keep_central
from wsnodule_core.flow.rule_search import (DEFAULT_RULES, masks_for_rule, parse_rule, rule_text, score_masks,
                                            score_rules)

SIZE = 16


def _patches(n: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Maps whose top 1 % of voxels is the nodule cube, over weaker noise everywhere."""
    rng = np.random.default_rng(seed)
    truth = np.zeros((n, SIZE, SIZE, SIZE), bool)
    truth[:, 7:9, 7:9, 6:9] = True  # 12 voxels: 0.3 % of the patch
    maps = rng.uniform(0.0, 0.3, truth.shape).astype(np.float32)
    maps[truth] = 0.9
    return maps, truth


def test_the_rule_that_isolates_the_nodule_wins():
    maps, truth = _patches()
    scores = score_rules(maps, truth)
    assert scores[0].dice_mean == pytest.approx(1.0)
    assert scores[0].hit_rate == 1.0 and scores[0].empty_rate == 0.0
    assert [s.dice_mean for s in scores] == sorted((s.dice_mean for s in scores), reverse=True)
    worst = scores[-1]
    assert worst.dice_mean < 0.5  # e.g. the top 8 % keeps far too much
    assert len(scores) == len(DEFAULT_RULES)


def test_a_floor_removes_weak_evidence_on_an_absolute_scale():
    maps, truth = _patches()
    maps *= 0.005  # a difference map of 0.0045 on the nodule: below a floor of 0.01, an empty mask
    floors = score_rules(maps, truth, rules=(ThresholdRule("fraction", 0.5),), floors=(0.0, 0.01))
    by_floor = {s.floor: s for s in floors}
    assert by_floor[0.01].empty_rate == 1.0 and by_floor[0.01].dice_mean == 0.0
    assert by_floor[0.0].dice_mean > 0.9
    assert floors[0].floor == 0.0


def test_masks_stay_in_the_lungs_and_scores_count_hits():
    maps, truth = _patches(2)
    lungs = np.ones_like(truth)
    lungs[1] = False  # the second patch has no lung: its mask is empty
    masks = masks_for_rule(maps, lungs, ThresholdRule("fraction", 0.5))
    s = score_masks(masks, truth)
    assert s["hit"].tolist() == [True, False] and s["empty"].tolist() == [False, True]
    assert s["dice"][0] == pytest.approx(1.0) and s["dice"][1] == 0.0


def test_the_central_piece_is_kept_and_the_search_can_choose_it():
    maps, truth = _patches(2)
    maps[:, 1:3, 1:3, 1:3] = 0.9  # a second, off-centre piece as strong as the nodule
    all_pieces = masks_for_rule(maps, None, ThresholdRule("fraction", 0.5))
    central = masks_for_rule(maps, None, ThresholdRule("fraction", 0.5), central=True)
    assert all_pieces[:, 1:3, 1:3, 1:3].all() and np.array_equal(central, truth)
    scores = score_rules(maps, truth, rules=(ThresholdRule("fraction", 0.5),), centrals=(False, True))
    assert [(s.central, round(s.dice_mean, 2)) for s in scores] == [(True, 1.0), (False, 0.75)]  # 2 * 12 / (20 + 12)
    assert scores[0].to_dict()["central"] is True


def test_keep_central_takes_the_nearest_piece_when_none_covers_the_centre():
    mask = np.zeros((SIZE, SIZE, SIZE), bool)
    mask[8, 8, 11:13] = True  # 3 voxels from the centre (8, 8, 8)
    mask[0:2, 0:2, 0:2] = True  # far away
    kept = keep_central(mask)
    assert kept[8, 8, 11:13].all() and kept.sum() == 2
    assert not keep_central(np.zeros((1, 4, 4, 4), bool)).any()


def test_rule_text_round_trips_and_bad_input_is_refused():
    for rule in DEFAULT_RULES:
        assert parse_rule(rule_text(rule)) == rule
    with pytest.raises(ModelConfigError):
        parse_rule("fraction:half")
    with pytest.raises(ModelConfigError):
        score_rules(np.zeros((2, 4, 4, 4)), np.zeros((2, 4, 4, 5), bool))
