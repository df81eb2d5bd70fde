"""Readable volume names from reader metadata: full, partial and no metadata; never a bare UID."""

from __future__ import annotations

import numpy as np
import pytest

from wsnodule_core.io import VolumeMetadata, derived_name, read_volume, volume_name
from wsnodule_core.io.naming import DEFAULT_NAME, dicom_date, is_uid, path_name
from wsnodule_core.io.synthetic_dicom import write_synthetic_series

SERIES_UID = "1.3.6.1.4.1.14519.5.2.1.6279.6001.179049373636438705059720603192"
STUDY_UID = "1.3.6.1.4.1.14519.5.2.1.6279.6001.298806137288633453246975630178"


def _dicom_meta(**extra) -> VolumeMetadata:
    return VolumeMetadata(modality="CT", patient_id="LIDC-IDRI-0001", series_uid=SERIES_UID,
                          source_path=f"/data/LIDC-IDRI-0001/{STUDY_UID}/{SERIES_UID}", source_format="dicom",
                          extra=extra)


def test_full_metadata_gives_patient_description_and_date():
    name = volume_name(_dicom_meta(series_description="Chest CT", series_date="20000102", study_date="20000101"))
    assert name.full == "LIDC-IDRI-0001 · Chest CT · 2000-01-02"  # the series date before the study's
    assert name.short == "LIDC-IDRI-0001"
    assert derived_name(name.short, "NAM mask") == "LIDC-IDRI-0001 · NAM mask"


@pytest.mark.parametrize("extra, full", [
    ({"series_description": "Chest CT"}, "LIDC-IDRI-0001 · Chest CT"),
    ({"series_description": " LUNG 3.0  B70f "}, "LIDC-IDRI-0001 · LUNG 3.0 B70f"),  # header padding
    ({"study_date": "20000101"}, "LIDC-IDRI-0001 · 2000-01-01"),
    ({"series_description": "  ", "series_date": "", "study_date": "2000"}, "LIDC-IDRI-0001"),  # bad date dropped
    ({"series_description": SERIES_UID, "study_date": "20001301"}, "LIDC-IDRI-0001"),  # a UID, month 13
])
def test_partial_metadata_keeps_what_is_readable(extra, full):
    assert volume_name(_dicom_meta(**extra)).full == full


def test_without_a_patient_id_the_folder_name_leads_and_uid_folders_are_skipped():
    meta = VolumeMetadata(series_uid=SERIES_UID, source_path=f"/data/LIDC-IDRI-0001/{STUDY_UID}/{SERIES_UID}",
                          extra={"series_description": "Chest CT", "study_date": "20000101"})
    name = volume_name(meta)
    assert name.full == "LIDC-IDRI-0001 · Chest CT · 2000-01-01" and name.short == "LIDC-IDRI-0001"
    uid_patient = VolumeMetadata(patient_id=SERIES_UID, source_path="/scans/case7.nii.gz")
    assert volume_name(uid_patient).full == "case7"


def test_no_metadata_falls_back_to_the_file_name_then_a_default():
    assert volume_name(VolumeMetadata(), "/scans/chest.nii.gz") == volume_name(
        VolumeMetadata(source_path="/scans/chest.nii.gz"))
    assert volume_name(VolumeMetadata(), "/scans/chest.nii.gz").full == "chest"
    assert volume_name(VolumeMetadata(source_path="/scans/a.mhd"), "b.nrrd").full == "b"  # the given name first
    bare = volume_name(VolumeMetadata(series_uid=SERIES_UID, source_path=f"/{STUDY_UID}/{SERIES_UID}",
                                      extra={"study_date": "20000101"}))
    assert bare.full == bare.short == DEFAULT_NAME  # neither a UID nor a date alone
    only_description = volume_name(VolumeMetadata(extra={"series_description": "Lung 1.0 B60f"}))
    assert only_description.full == only_description.short == "Lung 1.0 B60f"


def test_helpers():
    assert is_uid(SERIES_UID) and is_uid("1.2.840.10008") and not is_uid("LIDC-IDRI-0001") and not is_uid("1.5")
    assert dicom_date("19991231") == "1999-12-31" and dicom_date(None) is None and dicom_date("1999-12-31") is None
    assert path_name(f"/data/{STUDY_UID}") == "data" and path_name(SERIES_UID) is None and path_name("") is None
    assert path_name("scan.NII.GZ") == "scan" and path_name("folder/") == "folder"
    assert derived_name("  ", "NAM") == f"{DEFAULT_NAME} · NAM" and derived_name("ct", "") == "ct"


def test_a_read_dicom_series_is_named_from_its_header(tmp_path):
    folder = tmp_path / STUDY_UID / SERIES_UID
    array = np.full((3, 6, 5), -1000, np.int16)
    write_synthetic_series(folder, array, (2.5, 0.7, 0.8), (0.0, 0.0, 0.0), series_uid=SERIES_UID,
                           patient_id="LIDC-IDRI-0001", series_description="Chest CT")
    volume = read_volume(folder)
    assert volume.metadata.extra["study_date"] == "20000101"  # the reader keeps the dates
    assert volume_name(volume.metadata).full == "LIDC-IDRI-0001 · Chest CT · 2000-01-01"
    no_id = tmp_path / "anonymous"
    write_synthetic_series(no_id, array, (2.5, 0.7, 0.8), (0.0, 0.0, 0.0), patient_id="", series_description="")
    assert volume_name(read_volume(no_id).metadata).full == "anonymous · 2000-01-01"


def test_real_series_get_a_readable_name(real_series_small):
    volume = read_volume(real_series_small)
    name = volume_name(volume.metadata)
    assert volume.metadata.patient_id and name.full.startswith(volume.metadata.patient_id)
    assert volume.metadata.series_uid not in name.full and not is_uid(name.short)
