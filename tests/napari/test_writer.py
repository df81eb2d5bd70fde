"""Writers: a Labels layer to NIfTI / NRRD / DICOM-SEG, lining up with the CT it was drawn on."""

from __future__ import annotations

import numpy as np
import pytest
from highdicom.seg import segread

from wsnodule_core.errors import GeometryMismatchError, NotDicomReferenceError, OutputExistsError
from wsnodule_core.io import Volume, VolumeMetadata, read_volume
from wsnodule_core.io.synthetic_dicom import write_synthetic_series
from napari_wsnodule._layers import add_volume_layer
from napari_wsnodule._writer import write_labels_dicom_seg, write_labels_nifti, write_labels_nrrd

pytestmark = pytest.mark.gui

ANGLE = np.deg2rad(30)
OBLIQUE = (np.cos(ANGLE), np.sin(ANGLE), 0.0, -np.sin(ANGLE), np.cos(ANGLE), 0.0)


def _dicom_ct(tmp_path, orientation=None) -> Volume:
    array = (np.arange(6 * 20 * 24).reshape(6, 20, 24) % 400 - 900).astype(np.int16)
    folder = tmp_path / "ct-series"
    write_synthetic_series(folder, array, (2.5, 0.7, 0.8), (-40.0, 25.0, 110.0), orientation=orientation)
    return read_volume(folder)


def _mask(shape) -> np.ndarray:
    mask = np.zeros(shape, np.int32)
    mask[2:4, 5:9, 6:11] = 1
    mask[4, 12:14, 3:5] = 2
    return mask


def _layers(viewer, ct: Volume):
    image = add_volume_layer(viewer, ct, "image", "ct")
    labels = add_volume_layer(viewer, ct.with_array(_mask(ct.shape)), "labels", "mask", source=image)
    return image, labels


def _save(layer, writer, path):
    data, meta, _ = layer.as_layer_data_tuple()
    return writer(str(path), data, meta)


@pytest.mark.parametrize("orientation", [None, OBLIQUE], ids=["axial", "oblique"])
@pytest.mark.parametrize("writer,name", [(write_labels_nifti, "mask.nii.gz"),
                                         (write_labels_nrrd, "mask.nrrd")])
def test_file_mask_lines_up_with_the_ct(make_napari_viewer, tmp_path, orientation, writer, name):
    viewer = make_napari_viewer()
    ct = _dicom_ct(tmp_path, orientation)
    _, labels = _layers(viewer, ct)
    [written] = _save(labels, writer, tmp_path / "out" / name)
    back = read_volume(written)
    np.testing.assert_array_equal(back.array, _mask(ct.shape))
    np.testing.assert_allclose(back.spacing, ct.spacing, atol=1e-4)
    np.testing.assert_allclose(back.origin, ct.origin, atol=1e-4)
    np.testing.assert_allclose(back.direction, ct.direction, atol=1e-5)


def test_a_moved_layer_is_written_where_it_is_shown(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    ct = Volume(np.zeros((6, 16, 16), np.int16), (2.0, 0.5, 0.5), (10.0, 20.0, 30.0))
    _, labels = _layers(viewer, ct)
    labels.translate = np.asarray(labels.translate) + (0.0, 0.0, 5.0)  # 5 mm along world x
    [written] = _save(labels, write_labels_nifti, tmp_path / "moved")
    assert written.endswith("moved.nii.gz")  # the format's extension is added
    np.testing.assert_allclose(read_volume(written).origin, (15.0, 20.0, 30.0), atol=1e-4)


def test_writers_never_overwrite(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    ct = _dicom_ct(tmp_path)
    _, labels = _layers(viewer, ct)
    for name in ("mask.nii.gz", "mask.nrrd"):
        (tmp_path / name).write_bytes(b"the user's own file")
    targets = [(write_labels_nifti, tmp_path / "mask.nii.gz"), (write_labels_nrrd, tmp_path / "mask.nrrd"),
               (write_labels_dicom_seg, tmp_path / "ct-series" / "slice_0000.dcm")]
    for writer, target in targets:
        before = target.read_bytes()
        with pytest.raises(OutputExistsError, match="never overwrites a file. Save the mask under another"):
            _save(labels, writer, target)
        assert target.read_bytes() == before
    # napari's own save picks the plugin's writer by extension and refuses too
    with pytest.raises(Exception, match="never overwrites"):
        labels.save(str(tmp_path / "mask.nrrd"), plugin="napari-wsnodule")
    assert (tmp_path / "mask.nrrd").read_bytes() == b"the user's own file"


def test_dicom_seg_references_the_source_series(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    ct = _dicom_ct(tmp_path)
    _, labels = _layers(viewer, ct)
    [written] = _save(labels, write_labels_dicom_seg, tmp_path / "seg")
    assert written.endswith("seg.dcm")
    seg = segread(written)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == ct.metadata.series_uid
    assert seg.get_segment_numbers() == [1, 2]
    sop_uids = list(ct.metadata.extra["sop_instance_uids"])
    pixels = seg.get_pixels_by_source_instance(sop_uids, segment_numbers=[1, 2])
    mask = _mask(ct.shape)
    np.testing.assert_array_equal(pixels[..., 0].astype(bool), mask == 1)
    np.testing.assert_array_equal(pixels[..., 1].astype(bool), mask == 2)


def test_dicom_seg_finds_the_ct_for_a_labels_layer_napari_made(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    ct = _dicom_ct(tmp_path)
    add_volume_layer(viewer, ct, "image", "ct")
    viewer._new_labels()  # napari's "new labels" button: the image's geometry, no wsnodule metadata
    labels = viewer.layers[-1]
    labels.data[3, 4:6, 4:6] = 1
    [written] = _save(labels, write_labels_dicom_seg, tmp_path / "drawn.dcm")
    seg = segread(written)
    sop_uids = list(ct.metadata.extra["sop_instance_uids"])
    pixels = seg.get_pixels_by_source_instance(sop_uids, segment_numbers=[1])
    np.testing.assert_array_equal(pixels[..., 0].astype(bool), labels.data == 1)


def test_dicom_seg_needs_a_dicom_ct(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    ct = Volume(np.zeros((6, 16, 16), np.int16), (2.0, 0.5, 0.5),
                metadata=VolumeMetadata(source_format="nifti"))
    _, labels = _layers(viewer, ct)
    labels.data[1, 2, 2] = 1
    with pytest.raises(NotDicomReferenceError, match="not linked to a CT read from a DICOM series.*NIfTI"):
        _save(labels, write_labels_dicom_seg, tmp_path / "seg.dcm")
    assert not (tmp_path / "seg.dcm").exists()


def test_dicom_seg_refuses_labels_moved_off_the_ct_grid(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    ct = _dicom_ct(tmp_path)
    _, labels = _layers(viewer, ct)
    labels.translate = np.asarray(labels.translate) + (2.5, 0.0, 0.0)
    with pytest.raises(GeometryMismatchError, match="does not lie on the grid of its DICOM CT"):
        _save(labels, write_labels_dicom_seg, tmp_path / "seg.dcm")
