"""The trained path: a tiny NAM checkpoint registered in a test's own table (a Registry passed in, the
package's table untouched) loads through load_segmenter and segments end to end, from the API and from
`wsnodule segment --method`; a file of another kind is refused."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from wsnodule_core.errors import ModelConfigError, ShippedModelError
from wsnodule_core.io import read_volume, write_volume
from wsnodule_core.io.volume import Volume
from wsnodule_core.segmentation import NamSegmenter
from wsnodule_core.shipped import SHIPPED, Registry, ShippedModel, load_shipped
from wsnodule_core.shipped.registry import MODELS
from wsnodule_core.training.checkpoint import save_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SPACING = (2.5, 0.9, 0.8)


def chest(shape=(12, 128, 128)) -> Volume:
    """Air outside an elliptic body, two lungs and a 10 mm nodule in the right one."""
    z, y, x = np.meshgrid(*(np.arange(n) * s for n, s in zip(shape, SPACING)), indexing="ij")
    ny, nx = shape[1] * SPACING[1], shape[2] * SPACING[2]
    hu = np.full(shape, -1000.0, np.float32)
    hu[((y - ny / 2) / (0.45 * ny)) ** 2 + ((x - nx / 2) / (0.47 * nx)) ** 2 < 1] = 40
    for cx in (0.3 * nx, 0.7 * nx):
        hu[((y - ny / 2) / (0.3 * ny)) ** 2 + ((x - cx) / (0.16 * nx)) ** 2 < 1] = -850
    hu[(z - 12.5) ** 2 + (y - ny / 2) ** 2 + (x - 0.3 * nx) ** 2 <= 25] = 20
    return Volume(hu + np.random.default_rng(0).normal(0, 15, shape).astype(np.float32), SPACING, (5.0, -10.0, 20.0))


@pytest.fixture(scope="module")
def tiny_nam(tmp_path_factory):
    """A narrow untrained 1-GAP NAM checkpoint as a trained model's file, and a table that ships it."""
    from wsnodule_core.nam.model import MultiGapClassifier, MultiGapConfig

    folder = tmp_path_factory.mktemp("shipped")
    model = MultiGapClassifier(MultiGapConfig(n_gap=1, width="narrow"))
    path = save_checkpoint(folder / "nam.pt", {"kind": "nam-multigap", "model_config": model.config.to_dict(),
                                               "train_config": {"image_size": 64, "pixel_spacing_mm": 1.5},
                                               "model_state": model.state_dict(), "probability_threshold": 0.3})
    entry = ShippedModel("tiny-nam", "nam", "nam.pt", "docs/models/nam.md", "a tiny test NAM",
                         sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
                         rebuild="wsnodule train --method nam DATA --out RUN", options=(("top_k", 2),))
    return Registry(MODELS + (entry,), folder=folder), path


def test_a_registered_trained_model_loads_through_the_front_door(tiny_nam):
    registry, _ = tiny_nam
    segmenter = load_shipped("tiny-nam", "cpu", registry=registry, output="coarse")
    assert isinstance(segmenter, NamSegmenter) and segmenter.output == "coarse"
    assert segmenter.config.probability_threshold == 0.3 and segmenter.config.top_k == 2  # entry's options
    assert load_shipped("tiny-nam", "cpu", registry=registry, top_k=1).config.top_k == 1  # a call's replace them
    ct = chest()
    result = segmenter.segment(ct)
    assert result.mask.same_geometry(ct) and set(result.outputs) == {"coarse", "fine"}
    assert "tiny-nam" not in SHIPPED.names()  # the package's table is untouched


def test_a_file_of_another_kind_is_refused(tiny_nam):
    registry, _ = tiny_nam
    wrong = Registry(MODELS + (ShippedModel("unet", "unet", "nam.pt", "docs/models/unet.md", "x",
                                            sha256=registry.get("tiny-nam").sha256, rebuild="r"),),
                     folder=registry.folder)
    with pytest.raises(ShippedModelError, match="holds a 'nam-multigap' model, but --method unet segments with "
                                                "'unet-baseline'"):
        load_shipped("unet", "cpu", registry=wrong)


def test_segment_with_a_shipped_trained_model_and_the_checkpoint_method_rules(tiny_nam, tmp_path, capsys):
    from wsnodule_core.cli.main import build_parser
    from wsnodule_core.cli.segment import run

    registry, path = tiny_nam
    ct_path = write_volume(chest(), tmp_path / "ct.nii.gz")
    out = tmp_path / "mask.nii.gz"

    def segment(*extra: str) -> int:
        args = build_parser().parse_args(["segment", str(ct_path), "--output", str(out), "--device", "cpu",
                                          "--quiet", *extra])
        return run(args, registry=registry)

    assert segment("--method", "tiny-nam", "--mode", "coarse") == 0
    printed = capsys.readouterr().out
    assert "model: tiny-nam (shipped; a tiny test NAM; card docs/models/nam.md)" in printed
    assert read_volume(out).same_geometry(read_volume(ct_path))
    out.unlink()
    # --checkpoint with --method: the checkpoint must be of the method's kind
    assert segment("--method", "nam", "--checkpoint", str(path)) == 0
    assert f"model: checkpoint {path} (nam-multigap, checked as --method nam)" in capsys.readouterr().out
    out.unlink()
    unet = tmp_path / "unet.pt"
    save_checkpoint(unet, {"kind": "unet-baseline", "model_config": {}, "train_config": {}, "model_state": {}})
    with pytest.raises(ShippedModelError, match="holds a 'unet-baseline' model, but --method nam"):
        segment("--method", "nam", "--checkpoint", str(unet))
    with pytest.raises(ShippedModelError, match="training-free and takes no checkpoint"):
        segment("--method", "blob-refine", "--checkpoint", str(path))
    with pytest.raises(ModelConfigError, match="takes no --box"):
        segment("--method", "tiny-nam", "--box", "0", "0", "0", "1", "1", "1")
    assert not out.exists()
