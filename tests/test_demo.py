import json

import numpy as np
import pytest

from wsnodule_core.cli.main import main
from wsnodule_core.demo import METHOD, NAM_METHOD, run_demo
from wsnodule_core.errors import OutputExistsError
from wsnodule_core.io import read_volume


@pytest.mark.slow
def test_demo_builds_trains_segments_evaluates_and_reports(tmp_path):
    stages = []
    result = run_demo(tmp_path / "demo", n_cases=6, size="tiny", seed=1, epochs=1, max_steps_per_epoch=2,
                      progress=lambda stage, done, total: stages.append((stage, done, total)))
    out = result.out_dir
    metrics = json.loads((out / "metrics.json").read_text())
    rows = metrics["methods"]
    assert set(rows) == {f"{NAM_METHOD} Coarse", f"{NAM_METHOD} Fine", METHOD}
    for row in rows.values():
        for key in ("tpr", "fpr", "fpr_nodule", "dice", "tp_dice", "tp_doa_mm2", "dice_3d", "msd_mm", "hd95_mm"):
            assert key in row
    assert metrics["training"]["steps"] == 2 and metrics["recipe"]["name"] == "cpu_demo"
    assert (out / "checkpoints" / "nam-1gap" / "last.pt").is_file()
    dataset = json.loads((out / "data" / "dataset.json").read_text())
    test_cases = [c for c in dataset["cases"] if c["split"] == "test"]
    assert len(test_cases) == metrics["data"]["n_test_cases"] >= 1
    for entry in test_cases:
        image = read_volume(out / "data" / entry["image"])
        for row_dir in ("1-gap-fine", "hessian-blob-filter--no-training"):
            mask = read_volume(out / "masks" / row_dir / f"{entry['case_id']}.nii.gz")
            assert mask.same_geometry(image)
            assert np.issubdtype(mask.array.dtype, np.integer)
    report = (out / "report.md").read_text()
    assert METHOD in report and "1-GAP Fine" in report and "| TPR |" in report
    assert (out / "figures" / "size_breakdown.png").stat().st_size > 5000
    names = [s for s, _, _ in stages]
    assert names[0] == "building the phantom data set" and names[-1].startswith("segmenting")
    assert any(n.startswith("training") for n in names)
    with pytest.raises(OutputExistsError, match="--overwrite"):
        run_demo(out, n_cases=6, size="tiny")


def test_demo_command_rejects_a_bad_case_count(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "x"), "--cases", "0"]) == 2
    assert "--cases" in capsys.readouterr().err
