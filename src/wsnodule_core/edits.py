"""Reversible edits of a label array: each edit keeps only the voxels it changed (flat indices, old and
new values), so undo and redo cost memory in proportion to the edit, not to the volume.

:class:`EditHistory` applies edits to a label array in place and undoes/redoes them. Undo and redo
touch only the voxels that still hold what the edit wrote: a voxel painted by hand since then keeps
the hand's value.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from wsnodule_core.errors import PromptError

#: Edits kept for undo (the oldest are dropped first).
HISTORY_LIMIT = 100


@dataclass(frozen=True, eq=False)
class Edit:
    """One reversible change: ``index`` (flat voxel indices), their ``old`` and ``new`` values, a name."""

    name: str
    index: np.ndarray
    old: np.ndarray
    new: np.ndarray

    @property
    def size(self) -> int:
        return int(self.index.size)


def edit_between(before: np.ndarray, after: np.ndarray, name: str, *, offset: int = 0) -> Edit | None:
    """The edit that turns ``before`` into ``after`` (same shape), None when nothing differs.

    ``offset`` is added to the flat indices (``before`` being a contiguous part, e.g. one slice, of a
    larger array that starts at that flat index).
    """
    before, after = np.asarray(before), np.asarray(after)
    if before.shape != after.shape:
        raise PromptError(f"an edit compares arrays of one shape, got {before.shape} and {after.shape}.")
    changed = np.flatnonzero(before.ravel() != after.ravel())
    if changed.size == 0:
        return None
    return Edit(name, changed + offset, before.ravel()[changed].copy(), after.ravel()[changed].copy())


def merge_slice_edit(labels: np.ndarray, z: int, mask: np.ndarray, label: int, name: str, *,
                     overwrite: bool = False) -> Edit | None:
    """The edit that makes nodule ``label`` on slice ``z`` of ``labels`` exactly ``mask`` (2D bool).

    Voxels of ``label`` outside ``mask`` become background; ``mask`` takes background voxels (and,
    with ``overwrite``, other nodules' voxels too). ``labels`` is not changed.
    """
    labels = np.asarray(labels)
    mask = np.asarray(mask, bool)
    if labels.ndim != 3 or mask.shape != labels.shape[1:] or not 0 <= z < labels.shape[0]:
        raise PromptError(f"a slice mask {mask.shape} at z={z} does not fit labels {labels.shape} (z, y, x).")
    if label <= 0:
        raise PromptError(f"a nodule's label is a positive integer, got {label}.")
    before = labels[z]
    after = np.where(before == label, 0, before).astype(labels.dtype)
    takes = mask & ((after == 0) | bool(overwrite))
    after[takes] = label
    return edit_between(before, after, name, offset=z * before.size)


def delete_label_edit(labels: np.ndarray, label: int, name: str | None = None) -> Edit | None:
    """The edit that removes nodule ``label`` (its voxels become background); ``labels`` is not changed."""
    labels = np.asarray(labels)
    index = np.flatnonzero(labels.ravel() == label)
    if index.size == 0 or label == 0:
        return None
    old = labels.ravel()[index].copy()
    return Edit(name or f"delete nodule {label}", index, old, np.zeros_like(old))


def combine_edits(edits: list[Edit | None], name: str) -> Edit | None:
    """One edit (one undo step) of several edits over disjoint voxels (e.g. the slices of a propagation)."""
    kept = [e for e in edits if e is not None and e.size]
    if not kept:
        return None
    index = np.concatenate([e.index for e in kept])
    if np.unique(index).size != index.size:
        raise PromptError(f"{name}: the edits to combine overlap; combine edits of different voxels only.")
    return Edit(name, index, np.concatenate([e.old for e in kept]), np.concatenate([e.new for e in kept]))


class EditHistory:
    """Undo and redo of :class:`Edit` s on one label array (applied in place)."""

    def __init__(self, limit: int = HISTORY_LIMIT) -> None:
        self.limit = int(limit)
        self._done: list[Edit] = []
        self._undone: list[Edit] = []

    @property
    def can_undo(self) -> bool:
        return bool(self._done)

    @property
    def can_redo(self) -> bool:
        return bool(self._undone)

    @property
    def undo_name(self) -> str | None:
        return self._done[-1].name if self._done else None

    @property
    def redo_name(self) -> str | None:
        return self._undone[-1].name if self._undone else None

    def apply(self, labels: np.ndarray, edit: Edit | None) -> Edit | None:
        """Write ``edit`` into ``labels`` and record it (the redo list is cleared); None is ignored."""
        if edit is None or edit.size == 0:
            return None
        _write(labels, edit.index, edit.new)
        self._done.append(edit)
        del self._done[:-self.limit]
        self._undone.clear()
        return edit

    def undo(self, labels: np.ndarray) -> Edit | None:
        """Revert the last edit (its voxels that still hold its new values); None when there is none."""
        if not self._done:
            return None
        edit = self._done.pop()
        _write_where(labels, edit.index, expected=edit.new, value=edit.old)
        self._undone.append(edit)
        return edit

    def redo(self, labels: np.ndarray) -> Edit | None:
        """Apply the last undone edit again (its voxels that still hold its old values)."""
        if not self._undone:
            return None
        edit = self._undone.pop()
        _write_where(labels, edit.index, expected=edit.old, value=edit.new)
        self._done.append(edit)
        return edit

    def clear(self) -> None:
        self._done.clear()
        self._undone.clear()


def _flat(labels: np.ndarray) -> np.ndarray:
    flat = labels.reshape(-1)
    if not np.shares_memory(flat, labels):
        raise PromptError("edits are written in place; give a contiguous label array.")
    return flat


def _write(labels: np.ndarray, index: np.ndarray, values: np.ndarray) -> None:
    _flat(labels)[index] = values


def _write_where(labels: np.ndarray, index: np.ndarray, *, expected: np.ndarray, value: np.ndarray) -> None:
    flat = _flat(labels)
    keep = flat[index] == expected
    flat[index[keep]] = value[keep]
