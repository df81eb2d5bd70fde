"""`wsnodule segment` with the shipped training-free models on a small synthetic chest CT: the default
without --checkpoint, --method medsam-box with voxel and world boxes, and the inputs refused before any
work (exit 1, one line, nothing written)."""

from __future__ import annotations

import numpy as np
import pytest

from wsnodule_core.cli.main import main
from wsnodule_core.io import read_volume, write_volume
from wsnodule_core.shipped import SHIPPED


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.count_nonzero(a & b) / max(np.count_nonzero(a) + np.count_nonzero(b), 1)


@pytest.fixture(scope="module")
def chest(tmp_path_factory, synthetic_chest):
    """(CT path, nodule mask) of the synthetic chest (conftest.py), written as NIfTI."""
    ct, nodule = synthetic_chest
    return write_volume(ct, tmp_path_factory.mktemp("ct") / "ct.nii.gz"), nodule


@pytest.fixture
def cache(tmp_path_factory, monkeypatch):
    """One embedding cache for the module's LiteMedSAM runs (a box segmented twice is encoded once)."""
    monkeypatch.setenv("WSNODULE_CACHE", str(tmp_path_factory.getbasetemp() / "shipped-cache"))


def nodule_box(nodule: np.ndarray) -> list[str]:
    idx = np.argwhere(nodule)
    return [str(v) for v in (*idx.min(axis=0), *(idx.max(axis=0) + 1))]


@pytest.mark.slow
def test_without_checkpoint_the_shipped_default_segments(chest, lite_medsam, one_torch_thread, cache, tmp_path,
                                                         capsys):
    path, nodule = chest
    out, maps = tmp_path / "mask.nii.gz", tmp_path / "maps"
    assert main(["segment", str(path), "--output", str(out), "--maps", str(maps), "--device", "cpu",
                 "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert printed.splitlines()[0].startswith("model: blob-refine (shipped default; ")
    assert "card docs/models/blob-refine.md" in printed.splitlines()[0]
    mask = read_volume(out)
    assert mask.same_geometry(read_volume(path)) and dice(np.asarray(mask.array) > 0, nodule) > 0.5
    assert (maps / "response.nii.gz").is_file()  # the blob filter's map rides along


@pytest.mark.slow
def test_medsam_box_segments_inside_voxel_and_world_boxes(chest, lite_medsam, one_torch_thread, cache, tmp_path,
                                                          capsys):
    from wsnodule_core.cli.main import build_parser
    from wsnodule_core.cli.segment import run

    path, nodule = chest
    ct = read_volume(path)
    box = nodule_box(nodule)
    voxel_out, world_out = tmp_path / "voxel.nii.gz", tmp_path / "world.nrrd"
    args = build_parser().parse_args(["segment", str(path), "--method", "medsam-box", "--box", *box, "--output",
                                      str(voxel_out), "--device", "cpu", "--quiet"])
    assert run(args, lite_medsam=lite_medsam) == 0
    assert capsys.readouterr().out.startswith("model: medsam-box (shipped; ")
    drawn = np.asarray(read_volume(voxel_out).array)
    assert read_volume(voxel_out).same_geometry(ct) and dice(drawn > 0, nodule) > 0.5
    lo, hi = np.array(box[:3], float), np.array(box[3:], float) - 1  # the boxed voxels' centres, in world mm
    corners = ct.index_to_world(np.stack([lo - 0.4, hi + 0.4]))
    args = build_parser().parse_args(["segment", str(path), "--method", "medsam-box", "--box-world",
                                      *map(str, corners[1]), *map(str, corners[0]), "--output", str(world_out),
                                      "--device", "cpu", "--quiet"])
    assert run(args, lite_medsam=lite_medsam) == 0
    assert np.array_equal(np.asarray(read_volume(world_out).array), drawn)  # the same voxels, any corner order


def test_bad_inputs_fail_in_one_line_before_any_work(chest, tmp_path, capsys):
    path, nodule = chest
    out = tmp_path / "m.nii.gz"
    base = ["segment", str(path), "--output", str(out), "--device", "cpu", "--quiet"]
    box = nodule_box(nodule)
    cases = [
        (["--method", "namm"], f"no shipped model 'namm'; the shipped models are {', '.join(SHIPPED.names())}"),
        (["--method", "medsam-box"], "segments inside boxes and none was given"),
        (["--method", "medsam-box", "--box", "0", "0", "0", "13", "5", "5"], "reaches outside the CT's grid"),
        (["--method", "medsam-box", "--box-world", "900", "900", "900", "910", "910", "910"], "lies outside"),
        (["--method", "medsam-box", "--box", *box, "--maps", str(tmp_path / "maps")], "takes no --maps"),
        (["--box", *box], "--method blob-refine (the shipped default) takes no --box"),
        (["--method", "blob-refine", "--passes", "2"], "--method blob-refine takes no --passes"),
        (["--method", "medsam-box", "--checkpoint", str(tmp_path / "x.pt"), "--box", *box],
         "--method medsam-box is training-free and takes no checkpoint"),
    ]
    for extra, message in cases:
        assert main([*base, *extra]) == 1, extra
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, (extra, err)
    assert list(tmp_path.iterdir()) == []  # nothing written, not even the maps folder
