"""Reversible label edits: only changed voxels are kept, undo/redo restore exactly, hand edits made in
between are kept, and bad slice masks are refused."""

from __future__ import annotations

import numpy as np
import pytest

from wsnodule_core.edits import EditHistory, combine_edits, delete_label_edit, edit_between, merge_slice_edit
from wsnodule_core.errors import PromptError


def _labels() -> np.ndarray:
    labels = np.zeros((4, 10, 12), np.int32)
    labels[1, 2:5, 2:5] = 1
    labels[2, 6:9, 6:9] = 2
    return labels


def test_a_merged_slice_replaces_that_nodule_on_the_slice_and_keeps_other_nodules():
    labels = _labels()
    mask = np.zeros((10, 12), bool)
    mask[3:7, 3:8] = True  # overlaps nothing of nodule 2 on slice 1
    edit = merge_slice_edit(labels, 1, mask, 1, "box")
    assert edit is not None and edit.size == np.count_nonzero(mask ^ (labels[1] == 1))  # only what changes
    after = labels.copy()
    after.reshape(-1)[edit.index] = edit.new
    assert np.array_equal(after[1] == 1, mask) and np.array_equal(after[[0, 2, 3]], labels[[0, 2, 3]])

    on_two = np.zeros((10, 12), bool)
    on_two[5:9, 5:9] = True
    kept = merge_slice_edit(labels, 2, on_two, 3, "box")
    after = labels.copy()
    after.reshape(-1)[kept.index] = kept.new
    assert np.count_nonzero(after[2] == 2) == 9  # nodule 2 keeps its voxels
    assert np.count_nonzero(after[2] == 3) == 16 - 9
    over = merge_slice_edit(labels, 2, on_two, 3, "box", overwrite=True)
    assert over.size == 16


def test_undo_and_redo_restore_exactly_and_a_new_edit_clears_redo():
    labels = _labels()
    original = labels.copy()
    history = EditHistory()
    mask = np.zeros((10, 12), bool)
    mask[0:3, 0:3] = True
    history.apply(labels, merge_slice_edit(labels, 0, mask, 4, "box on slice 0"))
    after_box = labels.copy()
    history.apply(labels, delete_label_edit(labels, 2))
    assert not (labels == 2).any() and history.undo_name == "delete nodule 2"

    assert history.undo(labels).name == "delete nodule 2"
    assert np.array_equal(labels, after_box)
    assert history.undo(labels).name == "box on slice 0"
    assert np.array_equal(labels, original) and not history.can_undo and history.undo(labels) is None
    history.redo(labels)
    assert np.array_equal(labels, after_box) and history.redo_name == "delete nodule 2"

    history.apply(labels, delete_label_edit(labels, 1))
    assert not history.can_redo and history.redo(labels) is None
    assert history.apply(labels, None) is None and history.apply(labels, delete_label_edit(labels, 9)) is None


def test_undo_keeps_voxels_painted_by_hand_since_the_edit():
    labels = _labels()
    history = EditHistory()
    history.apply(labels, delete_label_edit(labels, 1))
    labels[1, 2, 2] = 7  # the user paints one former voxel of nodule 1
    history.undo(labels)
    assert labels[1, 2, 2] == 7 and np.count_nonzero(labels == 1) == 8


def test_the_history_keeps_at_most_its_limit_and_only_changed_voxels():
    labels = np.zeros((2, 50, 50), np.uint8)
    history = EditHistory(limit=3)
    for value in range(1, 6):
        mask = np.zeros((50, 50), bool)
        mask[value, :4] = True
        history.apply(labels, merge_slice_edit(labels, 0, mask, value, f"edit {value}"))
    undone = [history.undo(labels).name for _ in range(3)]
    assert undone == ["edit 5", "edit 4", "edit 3"] and not history.can_undo
    assert edit_between(labels, labels.copy(), "nothing") is None


def test_bad_edits_are_refused():
    labels = _labels()
    with pytest.raises(PromptError, match="does not fit"):
        merge_slice_edit(labels, 1, np.zeros((5, 5), bool), 1, "x")
    with pytest.raises(PromptError, match="does not fit"):
        merge_slice_edit(labels, 9, np.zeros((10, 12), bool), 1, "x")
    with pytest.raises(PromptError, match="positive integer"):
        merge_slice_edit(labels, 1, np.zeros((10, 12), bool), 0, "x")
    with pytest.raises(PromptError, match="one shape"):
        edit_between(labels, labels[0], "x")
    with pytest.raises(PromptError, match="contiguous"):
        EditHistory().apply(labels[:, ::2], delete_label_edit(labels[:, ::2], 1))


def test_combined_edits_undo_in_one_step_and_overlaps_are_refused():
    labels = _labels()
    original = labels.copy()
    masks = [np.zeros((10, 12), bool) for _ in range(2)]
    masks[0][0:2, 0:2] = masks[1][0:3, 0:3] = True
    parts = [merge_slice_edit(labels, z, m, 5, "part") for z, m in zip((0, 3), masks)]
    history = EditHistory()
    history.apply(labels, combine_edits([*parts, None], "propagate nodule 5"))
    assert np.count_nonzero(labels == 5) == 4 + 9
    history.undo(labels)
    assert np.array_equal(labels, original) and not history.can_undo
    assert combine_edits([None], "nothing") is None
    with pytest.raises(PromptError, match="overlap"):
        combine_edits([parts[0], parts[0]], "twice")
