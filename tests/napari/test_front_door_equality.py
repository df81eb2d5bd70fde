"""One checkpoint, one mask: the command line, the scripted API and the NAM widget all segment through
:func:`wsnodule_core.segmentation.load_segmenter`'s settings (the checkpoint's crop and the slice
threshold its validation chose), so they give the same voxels on the same CT."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_wsnodule._layers import GENERATED_KEY, add_volume_layer
from napari_wsnodule._session import LoadedModel
from napari_wsnodule.widgets.nam import NamWidget
from wsnodule_core.cli.main import main
from wsnodule_core.data.builders import build_dataset
from wsnodule_core.data.dataset import load_dataset
from wsnodule_core.io import read_volume, write_volume
from wsnodule_core.nam.model import MultiGapClassifier, MultiGapConfig
from wsnodule_core.segmentation import load_segmenter
from wsnodule_core.nam.model import load_classifier
from wsnodule_core.training.checkpoint import save_checkpoint
from wsnodule_core.training.device import choose_device

pytestmark = pytest.mark.gui


def _checkpoint(path, model, threshold):
    return save_checkpoint(path, {
        "kind": "nam-multigap", "model_config": model.config.to_dict(),
        "train_config": {"image_size": 64, "pixel_spacing_mm": 3.0}, "model_state": model.state_dict(),
        "probability_threshold": threshold})


@pytest.fixture(scope="module")
def ct_path(tmp_path_factory):
    folder = tmp_path_factory.mktemp("front_door")
    build_dataset(folder / "ds", source="phantom", n_cases=1, size="tiny", n_shapes=10, seed=3,
                  nodules_per_case=(2, 2), split_ratio=(0, 0, 1))
    dataset = load_dataset(folder / "ds")
    case = dataset.load_case(dataset.entries()[0])
    return write_volume(case.image, folder / "ct.nii.gz")


def test_cli_api_and_widget_give_the_same_mask(ct_path, tmp_path, make_napari_viewer, qtbot):
    torch.manual_seed(2)  # an untrained network whose NAM picks a few candidates on this phantom
    model = MultiGapClassifier(MultiGapConfig(n_gap=1, width="narrow"))
    ct = read_volume(ct_path)
    # a threshold inside the untrained model's slice probabilities, so that some slices are nodule
    # slices and some are not: the threshold recorded in the checkpoint must then matter
    probe = load_segmenter(_checkpoint(tmp_path / "probe.pt", model, 0.0), "cpu").segment(ct).details
    threshold = float(np.median(probe.probability))
    checkpoint = _checkpoint(tmp_path / "best.pt", model, threshold)

    api = load_segmenter(checkpoint, "cpu").segment(ct)
    assert api.details.config.probability_threshold == threshold
    assert 0 < api.details.is_nodule.sum() < ct.shape[0]
    assert api.mask.same_geometry(ct) and api.n_nodules > 0

    cli_mask = tmp_path / "cli.nii.gz"
    assert main(["segment", str(ct_path), "--checkpoint", str(checkpoint), "--output", str(cli_mask),
                 "--device", "cpu", "--quiet"]) == 0
    from_cli = read_volume(cli_mask)
    assert from_cli.same_geometry(ct)

    viewer = make_napari_viewer()
    widget = NamWidget(viewer)
    layer = add_volume_layer(viewer, ct, "image", "ct")
    loaded, loaded_checkpoint = load_classifier(checkpoint)
    widget.session.add_model(LoadedModel("1-GAP", "nam-multigap", loaded, loaded_checkpoint,
                                         choose_device("cpu"), checkpoint))
    widget.image_combo.select(layer)
    assert widget.threshold_spin.value() == pytest.approx(threshold, abs=1e-3)  # the checkpoint's, shown
    widget.segment_button.click()
    qtbot.waitUntil(lambda: not widget.tasks.busy and not widget.showing, timeout=60_000)
    assert widget.tasks.last_outcome == "done"
    [fine] = [lay for lay in viewer.layers if lay.metadata.get(GENERATED_KEY) == "nam:fine"]

    np.testing.assert_array_equal(np.asarray(from_cli.array), np.asarray(api.mask.array))
    np.testing.assert_array_equal(np.asarray(fine.data), np.asarray(api.mask.array))
