"""Recovery files: named by the CT's identity, in the cache folder WSNODULE_CACHE sets, written over,
read back on the CT's grid, deleted; another scan never finds them."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from wsnodule_core.data.recovery import (
    ct_identity,
    default_recovery_dir,
    delete_recovery,
    find_recovery,
    read_recovery,
    recovery_paths,
    write_recovery,
)
from wsnodule_core.errors import GeometryMismatchError
from wsnodule_core.io import write_mask
from wsnodule_core.io.volume import Volume

DIRECTION = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])


def ct(seed=0, origin=(10.0, -5.0, 30.0)) -> Volume:
    array = np.random.default_rng(seed).normal(-700, 50, (12, 32, 30)).astype(np.int16)
    return Volume(array, (2.5, 0.7, 0.7), origin, DIRECTION)


def test_cache_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("WSNODULE_CACHE", str(tmp_path / "cache"))
    assert default_recovery_dir() == tmp_path / "cache" / "recovery"
    monkeypatch.delenv("WSNODULE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_recovery_dir() == tmp_path / "xdg" / "wsnodule" / "recovery"


def test_identity_is_the_same_scan_only():
    a = ct()
    assert ct_identity(a) == ct_identity(Volume(a.array.copy(), a.spacing, a.origin, a.direction))
    assert ct_identity(a) != ct_identity(ct(seed=1))                      # other voxels
    assert ct_identity(a) != ct_identity(ct(origin=(10.0, -5.0, 32.5)))   # moved
    assert ct_identity(a) != ct_identity(a.with_array(a.array, series_uid="1.2.3"))


def test_write_find_read_delete(monkeypatch, tmp_path):
    monkeypatch.setenv("WSNODULE_CACHE", str(tmp_path))
    scan = ct()
    assert find_recovery(scan) is None and not delete_recovery(scan)
    mask = np.zeros(scan.shape, np.int32)
    mask[4:7, 10:14, 8:12] = 1
    path = write_recovery(mask, scan, layer_name="ct: nodules (fine)", source_method="nam:fine")
    assert path.parent == tmp_path / "recovery" and path.name.startswith(ct_identity(scan))
    found = find_recovery(scan)
    assert (found.layer_name, found.source_method, found.path) == ("ct: nodules (fine)", "nam:fine", path)
    assert found.age_text(now=found.saved_at + 125) == "2 min ago"
    restored = read_recovery(found, scan)
    assert restored.same_geometry(scan)
    np.testing.assert_array_equal(restored.array, mask)
    # a later save replaces it; another scan finds nothing
    mask[0, 0, 0] = 2
    write_recovery(mask, scan, layer_name="later")
    assert find_recovery(scan).layer_name == "later" and read_recovery(find_recovery(scan), scan).array[0, 0, 0] == 2
    assert find_recovery(ct(seed=1)) is None
    # a recovery file that is not on the scan's grid is refused
    other = dataclasses.replace(find_recovery(scan))
    write_mask(np.zeros((3, 3, 3), np.uint8), Volume(np.zeros((3, 3, 3))), other.path, overwrite=True)
    with pytest.raises(GeometryMismatchError, match="not on this CT's grid"):
        read_recovery(other, scan)
    assert delete_recovery(scan) and find_recovery(scan) is None
    assert not any(recovery_paths(scan)[i].exists() for i in (0, 1))


def test_a_lone_or_damaged_json_is_not_a_recovery(tmp_path):
    scan = ct()
    _, info_path = recovery_paths(scan, tmp_path)
    tmp_path.mkdir(exist_ok=True)
    info_path.write_text("{}")
    assert find_recovery(scan, tmp_path) is None  # no mask file
    write_recovery(np.zeros(scan.shape, np.uint8), scan, folder=tmp_path)
    info_path.write_text("not json")
    assert find_recovery(scan, tmp_path) is None
