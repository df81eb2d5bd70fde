"""``merge_datasets``: chosen splits of several data sets in one folder, the sources untouched."""

from __future__ import annotations

import json

import numpy as np
import pytest

from wsnodule_core.data.dataset import load_dataset
from wsnodule_core.data.merge import MergeSource, merge_datasets
from wsnodule_core.errors import InvalidDatasetError, UnknownSplitError
from wsnodule_core.io.volume import Volume
from wsnodule_core.io.writers import write_volume


def _dataset(folder, prefix, splits):
    """A hand-made data set folder: one 4 x 8 x 8 case per split in ``splits``."""
    entries = []
    for i, split in enumerate(splits):
        case_id = f"{prefix}_{i}"
        for kind, value in (("images", 100 * i), ("labels", 1), ("lungs", 1)):
            write_volume(Volume(np.full((4, 8, 8), value, np.int16), (2.0, 1.0, 1.0)),
                         folder / kind / f"{case_id}.nii.gz")
        entries.append({"case_id": case_id, "image": f"images/{case_id}.nii.gz", "mask": f"labels/{case_id}.nii.gz",
                        "lungs": f"lungs/{case_id}.nii.gz", "split": split, "subject": f"s{i}", "nodules": []})
    (folder / "dataset.json").write_text(json.dumps({"format_version": 1, "name": prefix, "modality": {"0": "CT"},
                                                     "labels": {"0": "background"}, "cases": entries}))
    return folder


def test_merge_keeps_the_chosen_splits_and_leaves_the_sources(tmp_path):
    a = _dataset(tmp_path / "a", "voi", ["train", "val", "test"])
    b = _dataset(tmp_path / "b", "hyb", ["train", "train", "val"])
    before = (a / "dataset.json").read_text()
    out = merge_datasets(tmp_path / "mix", [MergeSource.parse(str(a)), MergeSource.parse(f"{b}:train")])
    merged = load_dataset(out)
    assert [e["case_id"] for e in merged.entries("train")] == ["voi_0", "hyb_0", "hyb_1"]
    assert [e["case_id"] for e in merged.entries("val")] == ["voi_1"] and len(merged.entries("test")) == 1
    assert merged.info["numTraining"] == 3 and merged.info["parameters"]["sources"][1]["splits"] == ["train"]
    case = merged.load_case(merged.entries("test")[0])
    assert int(np.asarray(case.image.array).max()) == 200 and case.image.spacing == (2.0, 1.0, 1.0)
    assert (a / "dataset.json").read_text() == before and (a / "images" / "voi_0.nii.gz").exists()


def test_merge_refuses_bad_inputs_before_writing(tmp_path):
    a = _dataset(tmp_path / "a", "voi", ["train"])
    with pytest.raises(InvalidDatasetError, match="both"):  # the same case twice
        merge_datasets(tmp_path / "twice", [MergeSource(a), MergeSource(a)])
    assert not (tmp_path / "twice").exists()
    with pytest.raises(InvalidDatasetError, match="no case"):
        merge_datasets(tmp_path / "none", [MergeSource.parse(f"{a}:test")])
    with pytest.raises(InvalidDatasetError, match="one of the sources"):
        merge_datasets(a, [MergeSource(a)])
    with pytest.raises(UnknownSplitError, match="trian"):
        MergeSource.parse(f"{a}:trian")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.txt").write_text("mine")
    with pytest.raises(InvalidDatasetError, match="not empty"):
        merge_datasets(tmp_path / "full", [MergeSource(a)])
    assert (tmp_path / "full" / "x.txt").read_text() == "mine"


def test_wsnodule_data_merge_command(tmp_path, capsys):
    from wsnodule_core.cli.main import main

    a = _dataset(tmp_path / "a", "voi", ["train", "val"])
    b = _dataset(tmp_path / "b", "hyb", ["train", "test"])
    assert main(["data", "merge", "--out", str(tmp_path / "mix"), str(a), f"{b}:train"]) == 0
    assert "wrote 3 cases (2 train, 1 val, 0 test)" in capsys.readouterr().out
    assert main(["data", "merge", "--out", str(tmp_path / "bad"), f"{a}:nope"]) != 0
    assert "nope" in capsys.readouterr().err and not (tmp_path / "bad").exists()
