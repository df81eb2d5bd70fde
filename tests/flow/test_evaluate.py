"""The method-by-predictor comparison: every method scored on the same nodule patches with one rule."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from wsnodule_core.errors import ModelConfigError, OutputExistsError, SegmentationCancelled
from wsnodule_core.flow.attribution import ThresholdRule
from wsnodule_core.flow.evaluate import FLOW, FlowEvalConfig, evaluate_patches, flow_table, write_flow_report
from wsnodule_core.flow.guidance import GuidanceConfig
from wsnodule_core.flow.patches import PatchConfig, PatchSet

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIZE = 12
CUBE = (slice(4, 8), slice(4, 8), slice(4, 8))


class GaussianField(nn.Module):
    """Exact velocity when every voxel of x0 is N(mu, s^2)."""

    def forward(self, x, t, mu=0.3, s=0.2):
        t = t.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
        var = (1 - t) ** 2 * s ** 2 + t ** 2
        return mu + ((1 - t) * s ** 2 - t) / var * (x - (1 - t) * mu)


class CubeModel(nn.Module):
    """logit = 40 (mean of x over the central cube - 0.35), with a feature layer and an FC for CAM."""

    cam_layer, fc_layer = "features", "fc"

    def __init__(self) -> None:
        super().__init__()
        region = torch.zeros(1, 1, SIZE, SIZE, SIZE)
        region[(0, 0, *CUBE)] = 1.0
        self.register_buffer("region", region / region.sum())
        self.features = nn.Identity()
        self.fc = nn.Linear(1, 1)
        with torch.no_grad():
            self.fc.weight.fill_(40.0 * SIZE ** 3)
            self.fc.bias.fill_(-40.0 * 0.35)

    def forward(self, x):
        return self.fc(self.features(x * self.region).mean(dim=(2, 3, 4)))


def cube_patches(n_pos: int = 3) -> PatchSet:
    rng = np.random.default_rng(0)
    n = n_pos + 1
    images = (0.1 + 0.02 * rng.standard_normal((n, SIZE, SIZE, SIZE))).astype(np.float32)
    masks = np.zeros(images.shape, np.uint16)
    labels = np.array([1] * n_pos + [0], np.int8)
    for i in range(n_pos):
        images[(i, *CUBE)] += 0.5
        masks[(i, *CUBE)] = 1
    return PatchSet(images.astype(np.float16), labels, masks, np.ones(images.shape, bool), labels.astype(np.int32),
                    np.array([f"c{i}" for i in range(n)], dtype=object), np.zeros((n, 3)),
                    np.tile(np.eye(3), (n, 1, 1)), np.zeros((n, 3)), PatchConfig(size=SIZE))


CONFIG = FlowEvalConfig(GuidanceConfig(t0=0.5, n_steps=10, guided_steps=3, method="heun", rule="x0"),
                        baselines=("gradcam", "occlusion"), rule=ThresholdRule("fraction", 0.5), floor=0.01,
                        batch_size=2, examples=2)


def test_every_method_and_predictor_is_scored_on_the_nodule_patches_and_reported(tmp_path):
    calls = []
    evaluation = evaluate_patches(cube_patches(), {"cube A": CubeModel(), "cube B": CubeModel()}, GaussianField(),
                                  CONFIG, progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (6, 6)  # 2 predictors x (flow + 2 baselines)
    rows = {(r["method"], r["predictor"]): r for r in evaluation.rows}
    assert set(rows) == {(m, p) for m in (FLOW, "Grad-CAM", "occlusion") for p in ("cube A", "cube B")}
    assert all(r["n"] == 3 for r in rows.values())  # the negative patch is not scored
    flow = rows[(FLOW, "cube A")]
    assert flow["dice_mean"] > 0.9 and flow["msd_median_mm"] < 1.5  # guidance removes exactly the cube
    table = flow_table(evaluation)
    assert table.count("\n") == 4 and "cube A: Dice" in table and FLOW in table
    paths = write_flow_report(evaluation, tmp_path / "eval")
    saved = json.loads(paths["json"].read_text())
    assert len(saved["rows"]) == 6 and saved["patches"]["n"] == 3
    assert paths["figure"].stat().st_size > 1000 and FLOW in paths["markdown"].read_text()
    with pytest.raises(OutputExistsError, match="already exist"):
        write_flow_report(evaluation, tmp_path / "eval")


def test_baselines_alone_without_a_prior_and_the_errors():
    evaluation = evaluate_patches(cube_patches(2), {"cube": CubeModel()}, None, CONFIG)
    assert [r["method"] for r in evaluation.rows] == ["Grad-CAM", "occlusion"]
    with pytest.raises(ModelConfigError, match="no predictor given"):
        evaluate_patches(cube_patches(), {}, None, CONFIG)
    with pytest.raises(ModelConfigError, match="no nodule patch"):
        evaluate_patches(cube_patches().subset([3]), {"cube": CubeModel()}, None, CONFIG)
    with pytest.raises(ModelConfigError, match="unknown baseline"):
        FlowEvalConfig(baselines=("lime",))
    with pytest.raises(SegmentationCancelled):
        evaluate_patches(cube_patches(), {"cube": CubeModel()}, GaussianField(), CONFIG, cancel=lambda: True)
