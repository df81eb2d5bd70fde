"""Lung-PET-CT-Dx tumour boxes: the real collection (WSNODULE_DATA) and small synthetic copies made here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from wsnodule_core.cli.main import main
from wsnodule_core.data.tumour_boxes import (
    WorldBox,
    contiguous_runs,
    read_tumour_boxes,
    read_tumour_boxes_json,
    read_voc_boxes,
    write_tumour_boxes,
)
from wsnodule_core.errors import (
    BoxFileError,
    DataLookupError,
    DataNotAvailableError,
    InputPathNotFoundError,
    OutputExistsError,
    UnknownSliceError,
)
from wsnodule_core.io.readers import read_volume
from wsnodule_core.io.synthetic_dicom import write_synthetic_series

SPACING = (2.5, 0.5, 0.8)          # z, y (row), x (column) mm
ORIGIN = (-10.0, 20.0, 100.0)      # x, y, z mm of voxel [0, 0, 0]
SHAPE = (6, 16, 20)


def voc_xml(*boxes: tuple[int, int, int, int], name: str = "A", width: int = SHAPE[2],
            height: int = SHAPE[1]) -> str:
    objects = "".join(
        f"<object><name>{name}</name><pose>Unspecified</pose><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin>"
        f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>" for x0, y0, x1, y1 in boxes)
    return (f"<annotation><folder>Unknow</folder><size><width>{width}</width><height>{height}</height>"
            f"<depth>1</depth></size>{objects}</annotation>")


def make_collection(root: Path, boxes: dict[int, str], *, second_series: dict[int, str] | None = None,
                    orientation=None) -> dict:
    """A one-patient copy of the collection's layout: its slices are written top slice first (file 0 is
    the highest z), so a file's index is not its index in the z-sorted volume. ``boxes`` maps a FILE index
    to its XML text; ``second_series`` adds another reconstruction of the same slices with its own UIDs."""
    patient = root / "Lung-PET-CT-Dx" / "Lung_Dx-A0001" / "01-01-2000-NA-Chest-00001"
    annotations = root / "Annotation" / "A0001"
    annotations.mkdir(parents=True)
    positions = ORIGIN[2] + SPACING[0] * np.arange(SHAPE[0])[::-1]
    array = np.full(SHAPE, -800, np.int16)
    array[2:4, 4:10, 5:13] = 40
    uids = {}
    for k, (name, files) in enumerate((("2.000000-B70f", boxes), ("3.000000-B40f", second_series))):
        if files is None:
            continue
        sops = [f"1.2.826.0.1.3680043.8.498.{k + 1}.{i}" for i in range(SHAPE[0])]
        write_synthetic_series(patient / name, array[::-1], SPACING, (ORIGIN[0], ORIGIN[1], positions[0]),
                               slice_positions=positions, sop_instance_uids=sops, orientation=orientation,
                               patient_id="Lung_Dx-A0001")
        for i, text in files.items():
            (annotations / f"{sops[i]}.xml").write_text(text)
        uids[name] = sops
    return uids


@pytest.fixture
def collection(tmp_path):
    # files 2 and 3 are z slices 3 and 2; file 5 is slice 0 (a second tumour, one slice apart from none)
    make_collection(tmp_path, {2: voc_xml((5, 4, 12, 9)), 3: voc_xml((6, 5, 11, 8), (7, 4, 9, 6)),
                               5: voc_xml((0, 0, 2, 1), name="G")})
    return tmp_path


def test_synthetic_collection_gives_the_exact_world_boxes(collection):
    (series,) = read_tumour_boxes(collection)
    assert series.subject == "Lung_Dx-A0001" and series.shape == SHAPE
    assert series.boxed_slices == (0, 2, 3)
    box = {b.z: b for b in series.slice_boxes if b.name == "A" and b.lo_yx == (4, 5)}[3]
    assert (box.lo_yx, box.hi_yx) == ((4, 5), (9, 12))     # VOC x is the column, y the row
    assert len(series.tumours) == 2                         # slices 0 and 2-3: not contiguous
    first, second = series.tumours
    assert first.slices == (0,) and first.name == "G"
    assert second.slices == (2, 3) and second.name == "A"
    # z 2..3, rows 4..9, columns 5..12, outer faces (half a voxel beyond the centres)
    sz, sy, sx = SPACING
    np.testing.assert_allclose(second.lo, (ORIGIN[0] + 4.5 * sx, ORIGIN[1] + 3.5 * sy, ORIGIN[2] + 1.5 * sz))
    np.testing.assert_allclose(second.hi, (ORIGIN[0] + 12.5 * sx, ORIGIN[1] + 9.5 * sy, ORIGIN[2] + 3.5 * sz))
    np.testing.assert_allclose(first.lo, (ORIGIN[0] - 0.5 * sx, ORIGIN[1] - 0.5 * sy, ORIGIN[2] - 0.5 * sz))
    # the bright block drawn at z 2..3 lies inside the box that the files of slices 2..3 make
    volume = read_volume(series.folder)
    bright = volume.index_to_world(np.argwhere(volume.array > 0))
    assert np.all(second.contains(bright))


def test_a_flipped_orientation_keeps_the_world_box_axis_aligned(tmp_path):
    make_collection(tmp_path, {2: voc_xml((5, 4, 12, 9))}, orientation=(-1, 0, 0, 0, 1, 0))
    (series,) = read_tumour_boxes(tmp_path)
    (box,) = series.tumours
    volume = read_volume(series.folder)
    corners = volume.index_to_world(np.array([[3, 4, 5], [3, 9, 12]], float))
    assert np.all(box.contains(corners)) and np.all(np.asarray(box.lo) <= box.hi)
    assert box.size_mm == pytest.approx((8 * SPACING[2], 6 * SPACING[1], SPACING[0]))


def test_files_are_matched_to_their_own_series(tmp_path):
    uids = make_collection(tmp_path, {1: voc_xml((1, 1, 3, 3))}, second_series={1: voc_xml((1, 1, 3, 3)),
                                                                                 2: voc_xml((1, 1, 3, 3))})
    found = {s.folder.name: s for s in read_tumour_boxes(tmp_path, ["Lung_Dx-A0001"])}
    assert {k: len(s.slice_boxes) for k, s in found.items()} == {"2.000000-B70f": 1, "3.000000-B40f": 2}
    assert found["2.000000-B70f"].slice_boxes[0].sop_uid == uids["2.000000-B70f"][1]
    assert found["3.000000-B40f"].tumours[0].slices == (3, 4)


def test_one_slice_uid_in_two_series_is_refused(tmp_path):
    make_collection(tmp_path, {1: voc_xml((1, 1, 3, 3))})
    patient = tmp_path / "Lung-PET-CT-Dx" / "Lung_Dx-A0001" / "01-01-2000-NA-Chest-00001"
    write_synthetic_series(patient / "copy", np.zeros((1, *SHAPE[1:])), SPACING, ORIGIN,
                           sop_instance_uids=["1.2.826.0.1.3680043.8.498.1.1"])
    with pytest.raises(DataLookupError, match="two series"):
        read_tumour_boxes(tmp_path)


def test_json_round_trip_and_refusals(collection, tmp_path):
    series = read_tumour_boxes(collection, ["A0001"])
    path = write_tumour_boxes(tmp_path / "out" / "boxes.json", series)
    assert read_tumour_boxes_json(path) == series
    with pytest.raises(OutputExistsError):
        write_tumour_boxes(path, series)
    path.write_text("{not json")
    with pytest.raises(BoxFileError, match="not a JSON file"):
        read_tumour_boxes_json(path)
    path.write_text('{"format": "other"}')
    with pytest.raises(BoxFileError, match="wsnodule data tumour-boxes"):
        read_tumour_boxes_json(path)


def test_contiguous_runs():
    assert contiguous_runs([9, 3, 5, 4, 4]) == [[3, 4, 5], [9]]
    assert contiguous_runs([]) == []


def test_world_box_checks_its_corners():
    with pytest.raises(BoxFileError, match="swap"):
        WorldBox((1, 0, 0), (0, 1, 1))


# --- bad inputs -------------------------------------------------------------------


def test_xml_naming_an_unknown_slice(collection):
    bad = collection / "Annotation" / "A0001" / "1.2.3.4.5.xml"
    bad.write_text(voc_xml((1, 1, 2, 2)))
    with pytest.raises(UnknownSliceError, match=r"1\.2\.3\.4\.5\.xml.*no DICOM file.*download that series"):
        read_tumour_boxes(collection)


@pytest.mark.parametrize("text, match", [
    ("<annotation><object>", "not well-formed XML"),
    ("<notvoc/>", "not a PASCAL-VOC"),
    ("<annotation></annotation>", "no <object>"),
    ("<annotation><object><name>A</name></object></annotation>", "no <bndbox>"),
    (voc_xml((1, 1, 2, 2)).replace("<ymax>2</ymax>", ""), "no <ymax>"),
    (voc_xml((1, 1, 2, 2)).replace("<xmin>1</xmin>", "<xmin>one</xmin>"), "not a number"),
    (voc_xml((1, 1, 2, 2)).replace("<xmin>1</xmin>", "<xmin>1.5</xmin>"), "whole pixel"),
    (voc_xml((5, 1, 2, 2)), "swapped"),
    (voc_xml((1, 1, SHAPE[2], 2)), r"outside the slice's 0\.\.19"),
    (voc_xml((1, 1, 2, SHAPE[1])), r"y \(row\)"),
    (voc_xml((1, 1, 2, 2), width=512), "drawn on another image"),
])
def test_malformed_xml(tmp_path, text, match):
    make_collection(tmp_path, {2: text})
    with pytest.raises(BoxFileError, match=match):
        read_tumour_boxes(tmp_path)


def test_voc_file_without_a_known_size_is_read_as_is(tmp_path):
    path = tmp_path / "a.xml"
    path.write_text(voc_xml((3, 4, 5, 6), name="E"))
    (box,) = read_voc_boxes(path)
    assert (box.name, box.xmin, box.ymin, box.xmax, box.ymax) == ("E", 3, 4, 5, 6)


def test_missing_folders(tmp_path, collection, monkeypatch):
    with pytest.raises(InputPathNotFoundError, match="no such folder"):
        read_tumour_boxes(tmp_path / "nowhere")
    (collection / "Annotation").rename(collection / "Annotations-elsewhere")
    with pytest.raises(InputPathNotFoundError, match="Annotation/"):
        read_tumour_boxes(collection)
    monkeypatch.delenv("WSNODULE_DATA", raising=False)
    with pytest.raises(DataNotAvailableError, match="WSNODULE_DATA"):
        read_tumour_boxes()


def test_patient_without_annotations(collection):
    for xml in (collection / "Annotation" / "A0001").glob("*.xml"):
        xml.unlink()
    with pytest.raises(DataLookupError, match="no annotation files"):
        read_tumour_boxes(collection)
    with pytest.raises(DataLookupError, match="no folder of subject"):
        read_tumour_boxes(collection, ["A0009"])


def test_cli_writes_the_json_and_errors_in_one_line(collection, tmp_path, capsys):
    out = tmp_path / "boxes.json"
    assert main(["data", "tumour-boxes", "--root", str(collection), "--out", str(out)]) == 0
    assert "2 tumour box(es) of 1 series" in capsys.readouterr().out
    assert len(read_tumour_boxes_json(out)[0].tumours) == 2
    assert main(["data", "tumour-boxes", "--root", str(collection), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("wsnodule data: error:") and "--overwrite" in err and "\n" not in err


# --- the real collection ----------------------------------------------------------


@pytest.fixture(scope="module")
def real_boxes():
    import os

    root = os.environ.get("WSNODULE_DATA")
    if not root or not (Path(root) / "lung-pet-ct-dx").is_dir():
        pytest.skip("WSNODULE_DATA is not set or has no lung-pet-ct-dx/: point it at the shared data folder")
    return {(s.subject, s.folder.name): s for s in read_tumour_boxes()}


def test_real_a0001_one_series_eleven_slices(real_boxes):
    (series,) = [s for (subject, _), s in real_boxes.items() if subject == "Lung_Dx-A0001"]
    assert series.shape == (64, 512, 512) and len(series.slice_boxes) == 11
    assert {b.name for b in series.slice_boxes} == {"A"}
    (tumour,) = series.tumours                              # the 11 boxed slices are contiguous
    assert tumour.slices == tuple(range(41, 52))


def test_real_a0002_files_split_between_its_reconstructions(real_boxes):
    a2 = {folder: s for (subject, folder), s in real_boxes.items() if subject == "Lung_Dx-A0002"}
    counts = {folder.split()[-1].split("-")[0]: len(s.slice_boxes) for folder, s in a2.items()}
    assert counts == {"B70f": 8, "B40f": 10}
    b70, b40 = (next(s for f, s in a2.items() if k in f).tumours[0] for k in ("B70f", "B40f"))
    # one acquisition, one tumour: the two reconstructions' boxes overlap in the world
    overlap = np.minimum(b70.hi, b40.hi) - np.maximum(b70.lo, b40.lo)
    assert np.all(overlap > 0.5 * np.minimum(b70.size_mm, b40.size_mm))


def test_real_boxes_lie_in_their_volumes_and_hold_tumour(real_boxes):
    for series in real_boxes.values():
        volume = read_volume(series.folder)
        assert volume.metadata.series_uid == series.series_uid
        edges = volume.index_to_world(np.array([[-0.5, -0.5, -0.5], np.asarray(volume.shape) - 0.5]))
        lo_vol, hi_vol = edges.min(axis=0), edges.max(axis=0)
        for tumour in series.tumours:
            assert np.all(np.asarray(tumour.lo) >= lo_vol - 1e-6) and np.all(np.asarray(tumour.hi) <= hi_vol + 1e-6)
        for b in series.slice_boxes:
            inside = volume.array[b.z, b.lo_yx[0]:b.hi_yx[0] + 1, b.lo_yx[1]:b.hi_yx[1] + 1].astype(float)
            lung = volume.array[b.z][volume.array[b.z] < -400]
            # soft tissue fills the box: its upper half is well above aerated lung (about -850 HU)
            assert np.median(inside) > -400 and np.percentile(inside, 75) > -100 > lung.mean() + 600, b
