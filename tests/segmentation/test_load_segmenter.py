"""The front door: every checkpoint kind becomes a segmenter from its own settings, whose result lies on
the input CT's grid (an anisotropic CT with a flipped direction); wrong options and kinds are refused
with what to do."""

from __future__ import annotations

import numpy as np
import pytest

from wsnodule_core import load_segmenter
from wsnodule_core.errors import CheckpointError, ModelConfigError
from wsnodule_core.io.volume import Volume
from wsnodule_core.segmentation import (
    BlobSegmenter,
    FlowSegmenter,
    FunctionSegmenter,
    Nam3DSegmenter,
    NamSegmenter,
    PwSegmenter,
    UnetBaselineSegmenter,
)
from wsnodule_core.training.checkpoint import save_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SPACING = (2.5, 0.9, 0.8)
DIRECTION = np.diag([-1.0, 1.0, -1.0])


def chest(shape=(16, 128, 128)) -> Volume:
    """Air outside an elliptic body, two lungs and a 12 mm nodule in the right one."""
    z, y, x = np.meshgrid(*(np.arange(n) * s for n, s in zip(shape, SPACING)), indexing="ij")
    ny, nx = shape[1] * SPACING[1], shape[2] * SPACING[2]
    hu = np.full(shape, -1000.0, np.float32)
    body = ((y - ny / 2) / (0.45 * ny)) ** 2 + ((x - nx / 2) / (0.47 * nx)) ** 2 < 1
    hu[body] = 40
    for cx in (0.3 * nx, 0.7 * nx):
        hu[((y - ny / 2) / (0.3 * ny)) ** 2 + ((x - cx) / (0.16 * nx)) ** 2 < 1] = -850
    hu[(z - 15) ** 2 + (y - ny / 2) ** 2 + (x - 0.3 * nx) ** 2 <= 36] = 20
    rng = np.random.default_rng(0)
    return Volume(hu + rng.normal(0, 15, shape).astype(np.float32), SPACING, (5.0, -10.0, 20.0), DIRECTION)


def _save(path, kind, model_config, train_config=None, state=None, **extra):
    return save_checkpoint(
        path,
        {
            "kind": kind,
            "model_config": model_config,
            "train_config": train_config or {},
            "model_state": state or {},
            **extra,
        },
    )


def _check_result(result, ct, outputs=("mask",)):
    assert set(result.outputs) == set(outputs)
    for volume in (result.mask, *result.outputs.values(), *result.maps.values()):
        assert volume.same_geometry(ct)
    assert result.mask.array.dtype == np.int32


def test_nam_checkpoint_takes_its_crop_threshold_and_options(tmp_path):
    from wsnodule_core.nam.model import MultiGapClassifier, MultiGapConfig

    model = MultiGapClassifier(MultiGapConfig(n_gap=1, width="narrow"))
    path = _save(
        tmp_path / "nam.pt",
        "nam-multigap",
        model.config.to_dict(),
        {"image_size": 64, "pixel_spacing_mm": 1.5},
        model.state_dict(),
        probability_threshold=0.42,
    )
    segmenter = load_segmenter(path, "cpu", output="coarse", top_k=2)
    assert isinstance(segmenter, NamSegmenter) and segmenter.name == "1-GAP" and segmenter.output == "coarse"
    config = segmenter.config
    assert (config.input_size, config.crop_pixel_spacing_mm, config.probability_threshold, config.top_k) == (
        64,
        1.5,
        0.42,
        2,
    )
    ct = chest()
    result = segmenter.segment(ct)
    _check_result(result, ct, ("coarse", "fine"))
    assert result.mask is result.outputs["coarse"] and result.lungs is not None
    assert {"nam", "scope", "candidates"} <= set(result.maps)
    assert len(result.details.probability) == ct.shape[0]
    with pytest.raises(ModelConfigError, match="no option.*top_kk"):
        load_segmenter(path, "cpu", top_kk=2)
    with pytest.raises(ModelConfigError, match="output must be one of"):
        load_segmenter(path, "cpu", output="finest")
    with pytest.raises(ModelConfigError, match="no flow prior"):
        load_segmenter(path, "cpu", prior_checkpoint=path)


def test_nam3d_unet_and_pw4medseg_checkpoints(tmp_path):
    from wsnodule_core.baselines.unet import UNetConfig, UNetSegmenter
    from wsnodule_core.nam.model3d import MultiGap3DClassifier, MultiGap3DConfig
    from wsnodule_core.pw4medseg.config import PwTrainConfig
    from wsnodule_core.pw4medseg.train import build_model

    ct = chest()
    nam3d = MultiGap3DClassifier(MultiGap3DConfig(n_gap=1, width="narrow"))
    path = _save(
        tmp_path / "n3.pt",
        "nam-multigap-3d",
        nam3d.config.to_dict(),
        {"patch_size": 16, "spacing_mm": 2.0, "window": [-1000.0, 400.0]},
        nam3d.state_dict(),
    )
    segmenter = load_segmenter(path, "cpu", threshold=0.99)
    assert isinstance(segmenter, Nam3DSegmenter)
    assert (segmenter.patch_size, segmenter.spacing_mm, segmenter.params.threshold) == (16, 2.0, 0.99)
    _check_result(segmenter.segment(ct), ct)

    unet_config = UNetConfig.compact(input_size=64)
    path = _save(
        tmp_path / "u.pt", "unet-baseline", unet_config.to_dict(), {}, UNetSegmenter(unet_config).state_dict()
    )
    segmenter = load_segmenter(path, "cpu", threshold=0.7)
    assert isinstance(segmenter, UnetBaselineSegmenter) and segmenter.threshold == 0.7
    result = segmenter.segment(ct)
    _check_result(result, ct)
    assert "probability" in result.maps
    with pytest.raises(ModelConfigError, match="only option is threshold"):
        load_segmenter(path, "cpu", passes=3)

    from wsnodule_core.pw4medseg.model import PTransformerConfig

    tiny = PTransformerConfig.compact(
        img_size=(16, 16, 16),
        patch_size=8,
        hidden_size=32,
        num_layers=2,
        num_heads=2,
        mlp_dim=64,
        feature_size=4,
        norm_name="instance",
    )
    pw_config = PwTrainConfig(model=tiny, spacing_mm=(4.0, 4.0, 4.0), device="cpu")
    model = build_model(pw_config)
    path = _save(
        tmp_path / "pw.pt",
        "pw4medseg",
        pw_config.model.to_dict(),
        pw_config.to_dict(),
        model.state_dict(),
        probability_threshold=0.35,
    )
    segmenter = load_segmenter(path, "cpu", passes=2)
    assert isinstance(segmenter, PwSegmenter) and segmenter.passes == 2 and segmenter.threshold == 0.35
    assert not segmenter.needs_lungs
    result = segmenter.segment(ct)
    _check_result(result, ct)
    assert set(result.maps) == {"probability", "uncertainty"} and result.lungs is None
    everything = segmenter.with_options(threshold=0.01).segment(ct)  # every voxel: one component
    assert everything.n_nodules == 1
    tiny_floor = segmenter.with_options(threshold=0.01, min_diameter_mm=1e4).segment(ct)
    assert tiny_floor.n_nodules == 0  # the one component is smaller than 10 m across
    with pytest.raises(ModelConfigError, match="min_diameter_mm"):
        segmenter.with_options(min_diameter_mm=-1.0)


def test_flow_predictor_needs_its_prior_and_segments_at_centres(tmp_path):
    from wsnodule_core.flow.patches import PatchConfig
    from wsnodule_core.flow.predictors import PredictorConfig, build_predictor
    from wsnodule_core.flow.train_prior import PriorTrainConfig, build_prior_model
    from wsnodule_core.flow.velocity import VelocityConfig

    prior_config = PriorTrainConfig(
        model=VelocityConfig(channels=(8, 16, 32), num_head_channels=8, patch_size=16),
        spacing_mm=2.0,
        device="cpu",
        seed=3,
    )
    prior = build_prior_model(prior_config)
    prior_path = _save(
        tmp_path / "prior.pt",
        "flow-prior",
        prior.config.to_dict(),
        prior_config.to_dict(),
        prior.state_dict(),
        ema_state=prior.state_dict(),
    )
    predictor_config = PredictorConfig(channels=(4, 8))
    predictor = build_predictor(predictor_config, seed=1)
    predictor_path = _save(
        tmp_path / "pred.pt",
        "flow-predictor",
        predictor_config.to_dict(),
        {},
        predictor.state_dict(),
        patch_config=PatchConfig(size=16, spacing_mm=2.0).to_dict(),
    )
    with pytest.raises(ModelConfigError, match="prior_checkpoint"):
        load_segmenter(predictor_path, "cpu")
    with pytest.raises(ModelConfigError, match="does not segment"):
        load_segmenter(prior_path, "cpu")
    ct = chest()
    centre = ct.index_to_world((6.0, 64.0, 38.0))
    segmenter = load_segmenter(
        predictor_path,
        "cpu",
        prior_checkpoint=prior_path,
        centres_xyz=[centre],
        guidance={"t0": 0.3, "n_steps": 2, "guided_steps": 1},
        rule=("fraction", 0.5),
    )
    assert isinstance(segmenter, FlowSegmenter) and segmenter.patch_config.size == 16
    calls = []
    result = segmenter.segment(ct, progress=lambda done, total: calls.append((done, total)))
    _check_result(result, ct)
    assert result.maps["difference"].array.max() > 0 and calls[-1][0] == calls[-1][1]
    np.testing.assert_allclose(result.details["centres_xyz"], [centre])
    with pytest.raises(ModelConfigError, match="no option"):
        load_segmenter(predictor_path, "cpu", prior_checkpoint=prior_path, top_k=2)

    # the command line: the same front door, with --flow-prior and --centre
    from wsnodule_core.cli.main import main
    from wsnodule_core.io import read_volume, write_volume

    ct_path = write_volume(ct, tmp_path / "ct.nii.gz")
    base = ["segment", str(ct_path), "--checkpoint", str(predictor_path), "--device", "cpu", "--quiet"]
    assert (
        main(
            [
                *base,
                "--output",
                str(tmp_path / "f.nii.gz"),
                "--flow-prior",
                str(prior_path),
                "--centre",
                *map(str, centre),
                "--maps",
                str(tmp_path / "maps"),
            ]
        )
        == 0
    )
    assert read_volume(tmp_path / "f.nii.gz").same_geometry(ct)
    assert read_volume(tmp_path / "maps" / "difference.nii.gz").same_geometry(ct)
    assert main([*base, "--output", str(tmp_path / "g.nii.gz"), "--passes", "2"]) == 1


def test_training_free_and_own_methods_are_segmenters_too():
    ct = chest()
    result = BlobSegmenter().segment(ct)
    _check_result(result, ct)
    assert "response" in result.maps
    lungs = np.zeros(ct.shape, bool)
    lungs[:, 20:110, 10:118] = True

    def bright(volume, lung_mask):
        return (volume.array > 0) & lung_mask

    own = FunctionSegmenter("bright", bright, needs_lungs=True).segment(ct, lungs=lungs)
    _check_result(own, ct)
    assert own.n_nodules >= 1 and not own.mask.array[~lungs].any()
    with pytest.raises(ModelConfigError, match="lungs must be"):
        FunctionSegmenter("bright", bright).segment(ct, lungs="yes")


def test_unknown_and_missing_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_segmenter(tmp_path / "none.pt", "cpu")
    with pytest.raises(CheckpointError, match="'other'"):
        load_segmenter(_save(tmp_path / "o.pt", "other", {}), "cpu")
