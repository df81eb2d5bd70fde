"""Sample data: the phantom made on the spot, the hybrid case from WSNODULE_DATA."""

from __future__ import annotations

import numpy as np
import pytest

from napari_wsnodule._geometry import VOLUME_KEY
from napari_wsnodule._layers import MASK_OPACITY, result_name
from napari_wsnodule._reader import LUNG_WINDOW
from napari_wsnodule._sample_data import HYBRID_SPACING, PHANTOM_SHAPE, PHANTOM_SPACING, hybrid_case
from wsnodule_core.errors import DataNotAvailableError


def _check_case_layers(image, labels, spacing):
    ct, mask = image.metadata[VOLUME_KEY], labels.metadata[VOLUME_KEY]
    assert ct.same_geometry(mask) and labels.data.shape == image.data.shape
    np.testing.assert_allclose(image.scale, spacing)
    np.testing.assert_allclose(labels.scale, spacing)
    np.testing.assert_allclose(image.translate, ct.origin[::-1])
    np.testing.assert_allclose(labels.translate, ct.origin[::-1])
    assert tuple(image.contrast_limits) == LUNG_WINDOW
    assert labels.opacity == MASK_OPACITY
    nodules = labels.metadata["wsnodule_nodules"]
    assert nodules and sorted(int(v) for v in np.unique(labels.data) if v) == [n["label"] for n in nodules]
    for nodule in nodules:
        # the recorded centre is a nodule voxel, and the image there is denser than lung
        centre = tuple(int(round(c)) for c in nodule["centre_zyx"])
        assert labels.data[centre] == nodule["label"]
        assert np.mean(image.data[labels.data == nodule["label"]]) > -500


@pytest.mark.gui
def test_phantom_sample_opens_with_its_ground_truth(make_napari_viewer):
    viewer = make_napari_viewer()
    layers = viewer.open_sample("napari-wsnodule", "phantom")
    image, labels = layers
    assert image.name == "phantom CT" and labels.name == "phantom nodules (ground truth)"
    assert result_name(image, "NAM mask") == "phantom · NAM mask"  # results carry the CT's short name
    assert image.data.shape == PHANTOM_SHAPE
    _check_case_layers(image, labels, PHANTOM_SPACING)


def test_hybrid_sample_says_to_set_wsnodule_data(monkeypatch, tmp_path):
    monkeypatch.delenv("WSNODULE_DATA", raising=False)
    with pytest.raises(DataNotAvailableError, match="set the environment variable WSNODULE_DATA"):
        hybrid_case()
    monkeypatch.setenv("WSNODULE_DATA", str(tmp_path))
    with pytest.raises(DataNotAvailableError, match="holds no chest CT series"):
        hybrid_case()


@pytest.mark.gui
@pytest.mark.slow
def test_hybrid_sample_is_a_real_ct_with_inserted_nodules(chest_ct_series, make_napari_viewer):
    # chest_ct_series first: a skip raised after make_napari_viewer is set up breaks its teardown
    viewer = make_napari_viewer()
    image, labels = viewer.open_sample("napari-wsnodule", "hybrid")
    assert image.name.startswith("hybrid ") and image.name.endswith(" CT")
    _check_case_layers(image, labels, HYBRID_SPACING)
    ct = image.metadata[VOLUME_KEY]
    assert ct.metadata.dicom_files == ()  # resampled: no DICOM-SEG may reference the original slices
    assert ct.metadata.patient_id  # but it is still the real patient's CT


@pytest.mark.gui
def test_lidc_sample_opens_the_shipped_real_crop(make_napari_viewer):
    from wsnodule_core.data.sample import load_lidc_sample

    sample = load_lidc_sample()
    viewer = make_napari_viewer()
    image, labels = viewer.open_sample("napari-wsnodule", "lidc")
    assert image.name == "LIDC-IDRI-0001 CT (crop)" and labels.name == "LIDC-IDRI-0001 nodule (reader consensus)"
    assert result_name(image, "NAM mask") == "LIDC-IDRI-0001 · NAM mask"
    assert image.data.shape == sample.ct.shape and image.data.dtype == np.int16
    _check_case_layers(image, labels, sample.ct.spacing)
    np.testing.assert_array_equal(labels.data, sample.label.array)
    assert labels.metadata["wsnodule_nodules"][0]["patient_id"] == "LIDC-IDRI-0001"
