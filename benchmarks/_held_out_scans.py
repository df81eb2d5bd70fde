"""The whole LIDC scans of the real benchmark's held-out patients (``HELD_OUT_PATIENTS``: test in every
real-data split), built once into a ``wsnodule data lidc --with-images`` set and reused."""

from __future__ import annotations

import os
from pathlib import Path

from wsnodule_core.data.builders.splits import HELD_OUT_PATIENTS


def held_out_scans(folder: Path):
    """The data set in ``folder`` (built there from ``$WSNODULE_DATA/lidc-idri`` when missing)."""
    from wsnodule_core.data.builders import build_lidc_dataset
    from wsnodule_core.data.dataset import load_dataset

    if not (Path(folder) / "dataset.json").exists():
        build_lidc_dataset(folder, patient_ids=list(HELD_OUT_PATIENTS), with_images=True, overwrite=True,
                           dicom_root=os.path.join(os.environ["WSNODULE_DATA"], "lidc-idri"))
    return load_dataset(folder)
