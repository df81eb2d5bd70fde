"""The annotators' export: one id per nodule, the table (world centres through a non-identity
direction, sizes, method, edited flags), the label map and CSV written with the geometry, no overwrite."""

from __future__ import annotations

import math

import numpy as np
import pytest

from wsnodule_core.data.annotation_export import (
    CSV_COLUMNS,
    annotation_export,
    labels_on_grid,
    read_table,
    table_path,
    write_annotation_export,
)
from wsnodule_core.errors import (
    GeometryMismatchError,
    InvalidVolumeError,
    OutputExistsError,
    OutputIsInputError,
)
from wsnodule_core.io import read_volume, write_mask
from wsnodule_core.io.volume import Volume

SPACING = (2.0, 0.8, 0.7)
ORIGIN = (-40.0, 25.0, 100.0)
# x flipped, y and z swapped: an oblique-free but non-identity orientation
DIRECTION = np.array([[-1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
SHAPE = (20, 40, 44)


def ball(centre_zyx, radius_mm, shape=SHAPE):
    z, y, x = np.meshgrid(*(np.arange(n) * s for n, s in zip(shape, SPACING)), indexing="ij")
    c = np.asarray(centre_zyx) * SPACING
    return (z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2 <= radius_mm**2


def ct() -> Volume:
    array = np.random.default_rng(0).normal(-800, 30, SHAPE).astype(np.int16)
    return Volume(array, SPACING, ORIGIN, DIRECTION)


def two_nodules(values=(1, 1)) -> np.ndarray:
    mask = np.zeros(SHAPE, np.int32)
    mask[ball((12, 30, 30), 4.0)] = values[1]
    mask[ball((4, 10, 12), 3.0)] = values[0]
    return mask


def test_ids_centres_sizes_through_the_geometry():
    reference = ct()
    mask = two_nodules()
    export = annotation_export(reference.with_array(mask), source_method="nam:fine")
    labels = export.labels
    assert labels.same_geometry(reference) and labels.array.dtype == np.uint16
    assert [row.id for row in export.rows] == [1, 2] and set(np.unique(labels.array)) == {0, 1, 2}
    # id 1 is the nodule met first (slice 1..7 before 10..14), its voxels exactly those of the small ball
    np.testing.assert_array_equal(labels.array == 1, ball((4, 10, 12), 3.0))
    for row, (centre, radius) in zip(export.rows, (((4, 10, 12), 3.0), ((12, 30, 30), 4.0))):
        # the world centre: origin + direction @ (spacing * index), x/y/z in the volume's axes order
        index_xyz = np.asarray(centre[::-1], float) * np.asarray(SPACING[::-1])
        expected = np.asarray(ORIGIN) + DIRECTION @ index_xyz
        np.testing.assert_allclose(row.centre_xyz_mm, expected, atol=0.05)
        voxels = int(ball(centre, radius).sum())
        assert row.voxels == voxels and row.volume_mm3 == pytest.approx(voxels * np.prod(SPACING))
        assert row.equivalent_diameter_mm == pytest.approx(2 * radius, rel=0.1)
        assert 2 * radius - 2 <= row.longest_axial_diameter_mm <= 2 * radius + 0.01
        assert row.source_method == "nam:fine" and row.edited is None


def test_labelled_masks_keep_one_id_per_component_or_per_label():
    mask = two_nodules(values=(7, 3))
    edge = int(np.flatnonzero(mask[12, 30]).max())
    mask[12, 30, edge + 1] = 5  # a second label touching nodule 2
    volume = ct().with_array(mask)
    export = annotation_export(volume)
    assert [row.id for row in export.rows] == [1, 2] and export.labels.array[12, 30, edge + 1] == 2
    by_label = annotation_export(volume, by="labels")
    assert len(by_label.rows) == 3 and by_label.labels.array[12, 30, edge + 1] != by_label.labels.array[12, 30, 30]
    with pytest.raises(InvalidVolumeError, match="integer labels"):
        annotation_export(volume.with_array(mask.astype(np.float32)))


def test_edited_flags_from_the_model_mask_or_given():
    model = two_nodules()
    edited = model.copy()
    edited[12, 30, 30 - 6 : 30 + 6] = 0  # a cut through nodule 2 only...
    edited[ball((12, 30, 30), 4.0) & (np.arange(SHAPE[2]) < 30)] = 1  # ...painted back on one side
    edited[16:18, 2:4, 40:42] = 1  # a new nodule painted by hand
    reference = ct()
    export = annotation_export(reference.with_array(edited), model_mask=reference.with_array(model))
    assert [row.edited for row in export.rows] == [False, True, True]
    # an untouched model mask: nothing edited; a relabelled nodule is an edit
    assert not any(r.edited for r in annotation_export(reference.with_array(model), model_mask=model).rows)
    relabelled = model.copy()
    relabelled[relabelled == 1] = 2
    assert all(r.edited for r in annotation_export(reference.with_array(relabelled), model_mask=model).rows)
    # erasing part of a model nodule is an edit of that nodule only
    eroded = model.copy()
    eroded[4, 10, 12] = 0
    assert [r.edited for r in annotation_export(reference.with_array(eroded), model_mask=model).rows] == [True, False]
    # flags given: one for the mask, or one per id (every id needed)
    assert [r.edited for r in annotation_export(reference.with_array(model), edited=True).rows] == [True, True]
    given = annotation_export(reference.with_array(model), edited={1: False, 2: True}, source_method={1: "a", 2: "b"})
    assert [(r.edited, r.source_method) for r in given.rows] == [(False, "a"), (True, "b")]
    with pytest.raises(InvalidVolumeError, match=r"no value for nodule id\(s\) \[2\]"):
        annotation_export(reference.with_array(model), edited={1: True})
    with pytest.raises(InvalidVolumeError, match="not both"):
        annotation_export(reference.with_array(model), edited=True, model_mask=model)
    with pytest.raises(GeometryMismatchError):
        annotation_export(reference.with_array(model), model_mask=model[:, :, :-1])


@pytest.mark.parametrize("name", ["nodules.nii.gz", "nodules.nrrd", "nodules.mha"])
def test_written_label_map_and_csv_keep_geometry_and_values(tmp_path, name):
    reference = ct()
    export = annotation_export(reference.with_array(two_nodules()), source_method="flow:ct_mask",
                               model_mask=two_nodules())
    mask_path, csv_path = write_annotation_export(export.labels, export.rows, tmp_path / name)
    assert csv_path == tmp_path / "nodules.csv" and mask_path == tmp_path / name
    written = read_volume(mask_path)
    assert written.same_geometry(reference)
    np.testing.assert_allclose(written.direction, DIRECTION, atol=1e-6)
    np.testing.assert_array_equal(written.array, export.labels.array)
    rows = read_table(csv_path)
    assert list(rows[0]) == list(CSV_COLUMNS) and [r["id"] for r in rows] == ["1", "2"]
    for row, expected in zip(rows, export.rows):
        centre = [float(row[f"centre_{a}_mm"]) for a in "xyz"]
        np.testing.assert_allclose(centre, expected.centre_xyz_mm, atol=0.006)
        # the centre in the file is the centroid of that id's voxels in the written map
        voxels = np.argwhere(written.array == int(row["id"])).mean(axis=0)
        np.testing.assert_allclose(written.index_to_world(voxels), centre, atol=0.006)
        assert int(row["voxels"]) == int((written.array == int(row["id"])).sum())
        assert float(row["volume_mm3"]) == pytest.approx(int(row["voxels"]) * np.prod(SPACING), abs=0.06)
        assert row["source_method"] == "flow:ct_mask" and row["edited"] == "no"
        assert math.isfinite(float(row["longest_axial_diameter_mm"]))


def test_existing_files_and_inputs_are_refused_before_writing(tmp_path):
    reference = ct()
    export = annotation_export(reference.with_array(two_nodules()))
    target = tmp_path / "out.nii.gz"
    (tmp_path / "out.csv").write_text("mine")  # only the CSV exists: nothing is written
    with pytest.raises(OutputExistsError, match="out.csv already exists"):
        write_annotation_export(export.labels, export.rows, target)
    assert not target.exists() and (tmp_path / "out.csv").read_text() == "mine"
    write_annotation_export(export.labels, export.rows, target, overwrite=True)
    assert (tmp_path / "out.csv").read_text().startswith("id,")
    # the edited mask itself is never the output, even with overwrite
    source = write_mask(two_nodules(), reference, tmp_path / "edited.nii.gz")
    before = source.read_bytes()
    with pytest.raises(OutputIsInputError):
        write_annotation_export(export.labels, export.rows, source, overwrite=True, inputs=[source])
    assert source.read_bytes() == before and not (tmp_path / "edited.csv").exists()
    # a table that does not describe the label map is refused
    with pytest.raises(InvalidVolumeError, match="lists ids"):
        write_annotation_export(export.labels, export.rows[:1], tmp_path / "bad.nii.gz")
    assert not (tmp_path / "bad.nii.gz").exists()
    assert table_path("a/b.seg.nii") == table_path("a/b.seg.nii").with_name("b.seg.csv")


def test_an_empty_mask_gives_an_empty_table(tmp_path):
    export = annotation_export(ct().with_array(np.zeros(SHAPE, np.uint8)))
    assert export.rows == () and not export.labels.array.any()
    _, csv_path = write_annotation_export(export.labels, export.rows, tmp_path / "none.nrrd")
    assert read_table(csv_path) == [] and csv_path.read_text().strip() == ",".join(CSV_COLUMNS)


def test_a_patch_mask_lands_on_the_ct_grid():
    reference = ct()
    # a patch: 1 mm cubes, the CT's direction, around voxel (10, 20, 22)
    centre = reference.index_to_world((10, 20, 22))
    patch_shape = (9, 9, 9)
    origin = centre - DIRECTION @ (np.full(3, 4.0))
    patch = Volume(np.zeros(patch_shape, np.uint8), (1.0, 1.0, 1.0), tuple(origin), DIRECTION)
    patch.array[2:7, 2:7, 2:7] = 1
    on_ct = labels_on_grid(patch, reference)
    assert on_ct.same_geometry(reference) and on_ct.array.dtype == np.uint8
    hit = np.argwhere(on_ct.array > 0)
    np.testing.assert_allclose(reference.index_to_world(hit.mean(axis=0)), centre, atol=0.8)
    # every marked CT voxel's centre lies inside the marked part of the patch
    inside = patch.world_to_index(reference.index_to_world(hit.astype(float)))
    assert np.all((inside > 1.5) & (inside < 6.5))
    same = labels_on_grid(reference.with_array(two_nodules()), reference)
    np.testing.assert_array_equal(same.array, two_nodules())


def test_the_shipped_real_sample_matches_its_recorded_nodule(tmp_path):
    """The real LIDC-IDRI-0001 crop shipped in the package: centre, volume, diameter and slices of its reader
    label agree with what its build recorded in sample.json."""
    from wsnodule_core.data.sample import load_lidc_sample

    sample = load_lidc_sample()
    nodule = sample.info["nodule"]
    export = annotation_export(sample.label, source_method="lidc:consensus", edited=False)
    [row] = export.rows
    np.testing.assert_allclose(row.centre_xyz_mm, nodule["centre_xyz"], atol=0.01)
    assert row.volume_mm3 == pytest.approx(nodule["volume_mm3"], abs=0.01) and row.voxels == nodule["label_voxels"]
    assert row.equivalent_diameter_mm == pytest.approx(nodule["equivalent_diameter_mm"], abs=0.05)
    assert list(row.slice_range) == nodule["slice_range"]
    mask_path, csv_path = write_annotation_export(export.labels, export.rows, tmp_path / "sample.nii.gz")
    assert read_volume(mask_path).same_geometry(sample.ct)
    assert read_table(csv_path)[0]["edited"] == "no"
