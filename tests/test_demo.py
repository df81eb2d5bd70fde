import json

import numpy as np
import pytest

from wsnodule_core.cli.main import main
from wsnodule_core.demo import METHOD, run_demo
from wsnodule_core.errors import OutputExistsError
from wsnodule_core.io import read_volume


@pytest.mark.slow
def test_demo_builds_segments_evaluates_and_reports(tmp_path):
    stages = []
    result = run_demo(tmp_path / "demo", n_cases=3, size="tiny", seed=1, n_shapes=24,
                      progress=lambda stage, done, total: stages.append((stage, done, total)))
    out = result.out_dir
    metrics = json.loads((out / "metrics.json").read_text())
    row = metrics["methods"][METHOD]
    for key in ("tpr", "fpr", "fpr_nodule", "dice", "tp_dice", "tp_doa_mm2", "dice_3d", "msd_mm", "hd95_mm"):
        assert key in row
    assert metrics["data"]["n_cases"] == 3
    dataset = json.loads((out / "data" / "dataset.json").read_text())
    for entry in dataset["cases"]:
        image = read_volume(out / "data" / entry["image"])
        mask = read_volume(out / "masks" / f"{entry['case_id']}.nii.gz")
        assert mask.same_geometry(image)
        assert set(np.unique(mask.array)) <= set(range(0, 64))
    report = (out / "report.md").read_text()
    assert METHOD in report and "| TPR |" in report
    assert (out / "figures" / "size_breakdown.png").stat().st_size > 5000
    assert {s for s, _, _ in stages} == {"building the phantom data set", "segmenting and evaluating"}
    assert stages[-1][1] == stages[-1][2] == 3
    with pytest.raises(OutputExistsError, match="--overwrite"):
        run_demo(out, n_cases=3, size="tiny")


def test_demo_command_rejects_a_bad_case_count(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "x"), "--cases", "0"]) == 2
    assert "--cases" in capsys.readouterr().err
