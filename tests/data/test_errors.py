"""User mistakes in data/ raise WsnoduleError subclasses that say what is wrong and what to do.

The classes that replaced bare ValueErrors still derive from ValueError, so callers that catch
ValueError keep working.
"""

import numpy as np
import pytest

from wsnodule_core.data.builders import build_dataset, build_luna16_dataset
from wsnodule_core.data.dataset import Dataset
from wsnodule_core.data.hybrid import make_hybrid_case
from wsnodule_core.data.insertion import insert_nodules, resample_shape
from wsnodule_core.data.lidc.consensus import consensus_mask, merge_reader_masks
from wsnodule_core.data.lidc.labels import slice_labels
from wsnodule_core.data.lidc.scan import common_frame
from wsnodule_core.data.lidc.shapes import lidc_nodule_shapes
from wsnodule_core.data.luna16 import extract_patch
from wsnodule_core.data.nodule_shape import NoduleShape
from wsnodule_core.errors import (
    DatasetBuildError,
    DataLookupError,
    InsertionParameterError,
    LidcParameterError,
    LungSegmentationError,
    PatchCentreError,
    PatchParameterError,
    UnknownSplitError,
    WsnoduleError,
)
from wsnodule_core.io.volume import Volume

TINY = dict(shape=(24, 96, 96), spacing=(5.0, 3.6, 3.6))


def ball(radius_mm=4.0, spacing=(1.0, 1.0, 1.0)):
    sp = np.asarray(spacing, float)
    half = np.ceil(radius_mm / sp).astype(int) + 1
    grids = np.meshgrid(*[np.arange(-h, h + 1) * s for h, s in zip(half, sp)], indexing="ij")
    mask = sum(g ** 2 for g in grids) <= radius_mm ** 2
    return NoduleShape(mask, tuple(spacing), 2 * radius_mm, float(mask.sum() * sp.prod()), 5.0, (1,), "P1")


def small_ct():
    image = np.full((16, 32, 32), -850.0, np.float32)
    lungs = np.zeros(image.shape, bool)
    lungs[2:14, 4:28, 4:28] = True
    return Volume(image, (2.0, 1.0, 1.0)), lungs


def test_the_new_classes_keep_value_error_and_wsnodule_error():
    for cls in (DatasetBuildError, UnknownSplitError, LidcParameterError, PatchParameterError,
                InsertionParameterError):
        assert issubclass(cls, WsnoduleError) and issubclass(cls, ValueError)


# --- data-set builders ----------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, telling", [
    (dict(source="lidc"), "build_lidc_dataset"),
    (dict(nodules_per_case=(3, 1)), "0 <= min <= max"),
    (dict(nodules_per_case=(1, 2, 3)), "two whole numbers"),
    (dict(n_cases=0), "--cases N"),
    (dict(source="hybrid", ct_paths=[]), "--ct PATH"),
])
def test_build_dataset_refuses_bad_parameters(tmp_path, kwargs, telling):
    with pytest.raises(DatasetBuildError, match=telling.replace("(", r"\(")):
        build_dataset(tmp_path / "set", shapes=[ball()], **kwargs)
    assert not (tmp_path / "set" / "dataset.json").exists()


def test_unknown_size_preset_names_the_presets(tmp_path):
    with pytest.raises(DatasetBuildError, match="unknown phantom size preset 'huge'.*tiny.*shape and spac"):
        build_dataset(tmp_path / "set", size="huge", shapes=[ball()])


def test_shapes_too_small_for_the_grid_say_what_to_do(tmp_path):
    with pytest.raises(DatasetBuildError, match="finer spacing or larger shapes"):
        build_dataset(tmp_path / "set", n_cases=1, nodules_per_case=(1, 1), shapes=[ball(0.8)], **TINY)


def test_luna16_builder_without_scans(tmp_path):
    (tmp_path / "scans").mkdir()
    with pytest.raises(DatasetBuildError, match="no LUNA16 scans.*--scans"):
        build_luna16_dataset(tmp_path / "out", annotations=tmp_path / "a.csv", scans_dir=tmp_path / "scans")


def test_unknown_split_name(tmp_path):
    data = Dataset(tmp_path, {"name": "x", "cases": [{"case_id": "a", "split": "train"}]})
    assert [e["case_id"] for e in data.entries("train")] == ["a"]
    with pytest.raises(UnknownSplitError, match=r"unknown split 'training'.*None for every case"):
        data.entries("training")


def test_hybrid_case_with_lungs_and_spacing(tmp_path):
    ct, lungs = small_ct()
    with pytest.raises(DatasetBuildError, match="Give either lungs .* or spacing"):
        make_hybrid_case(ct, "c", seed=0, shapes=[], lungs=lungs, spacing=(2.0, 2.0, 2.0))


# --- nodule insertion ---------------------------------------------------------------------------


def test_unknown_placement_and_on_failure():
    ct, lungs = small_ct()
    with pytest.raises(InsertionParameterError, match="unknown placement 'floating'.*isolated"):
        insert_nodules(ct, lungs, [ball()], seed=0, placements=("floating",))
    with pytest.raises(InsertionParameterError, match="on_failure must be 'skip' or 'raise', got 'ignore'"):
        insert_nodules(ct, lungs, [ball()], seed=0, on_failure="ignore")
    with pytest.raises(InsertionParameterError, match="one placement per shape"):
        insert_nodules(ct, lungs, [ball(), ball()], seed=0, placements=("isolated",), per_shape=True)


def test_empty_lung_mask_is_a_lung_segmentation_error():
    ct, lungs = small_ct()
    with pytest.raises(LungSegmentationError, match="lung mask is empty.*check the lung segmentation"):
        insert_nodules(ct, np.zeros_like(lungs), [ball()], seed=0)


def test_shape_too_small_for_the_spacing():
    with pytest.raises(InsertionParameterError, match="is_resolvable"):
        resample_shape(ball(1.0), (5.0, 3.0, 3.0))


# --- LIDC-IDRI and LUNA16 adapters ----------------------------------------------------------------


def test_lidc_parameters_out_of_range():
    stack = np.ones((2, 3, 3, 3), bool)
    with pytest.raises(LidcParameterError, match=r"consensus level must be in \(0, 1\], got 0.*0.5"):
        consensus_mask(stack, level=0.0)
    with pytest.raises(LidcParameterError, match="no reader masks given"):
        common_frame([])
    with pytest.raises(LidcParameterError, match="n must be >= 0 or None, got -1"):
        lidc_nodule_shapes(-1)
    with pytest.raises(LidcParameterError, match="give None to take every qualifying nodule"):
        lidc_nodule_shapes(3, max_per_scan=0)
    with pytest.raises(LidcParameterError, match="textures must be a non-empty subset"):
        lidc_nodule_shapes(3, textures=["glassy"])
    with pytest.raises(LidcParameterError, match="min_readers_overlap must be >= 1.*paper uses 2"):
        slice_labels(None, min_readers_overlap=0)


def test_lidc_merge_method_is_checked(monkeypatch):
    import wsnodule_core.data.lidc.consensus as consensus

    monkeypatch.setattr(consensus, "common_frame", lambda masks: (np.ones((1, 2, 2, 2), bool), (0, 0, 0)))
    with pytest.raises(LidcParameterError, match="'consensus' or 'staple', got 'mean'"):
        merge_reader_masks([], method="mean")


def test_lidc_builder_with_unknown_patients(tmp_path):
    pytest.importorskip("wsnodule_core.data.lidc")
    from wsnodule_core.data.builders import build_lidc_dataset

    with pytest.raises(DataLookupError, match="no LIDC-IDRI scans match.*LIDC-IDRI-0001"):
        build_lidc_dataset(tmp_path / "l", patient_ids=["NOT-A-PATIENT"])


def test_luna16_patch_parameters():
    ct, _ = small_ct()
    with pytest.raises(PatchParameterError, match="exactly one of size_mm and size_vox, got size_mm=None"):
        extract_patch(ct, (0.0, 0.0, 0.0))
    with pytest.raises(PatchParameterError, match="size_vox must be positive and finite"):
        extract_patch(ct, (0.0, 0.0, 0.0), size_vox=-4)
    with pytest.raises(PatchCentreError, match="three finite world coordinates"):
        extract_patch(ct, (0.0, np.nan, 0.0), size_vox=4)
