"""Train / val / test splits that keep subjects (and LIDC patients' nodule shapes) apart.

A phantom case is its own subject; a hybrid case's subject is the real series it came from.
LIDC patients are partitioned into three pools first, so one patient's nodules never appear
in two splits.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from wsnodule_core.data.dataset import SPLITS
from wsnodule_core.data.nodule_shape import NoduleShape
from wsnodule_core.errors import UnknownSplitError

#: Size classes of a case, by its largest nodule's diameter (mm): used to stratify splits.
SIZE_CLASSES = (("small", 0.0, 10.0), ("medium", 10.0, 20.0), ("large", 20.0, float("inf")))


def size_class(diameter_mm: float) -> str:
    for name, lo, hi in SIZE_CLASSES:
        if lo <= diameter_mm < hi:
            return name
    return SIZE_CLASSES[-1][0]


def _allocate(keys: Sequence[float], ratio: Sequence[float], order: Sequence[int] = (2, 1, 0)) -> list[int]:
    """Give each item (with weight ``keys[i]``) the split whose share lags most behind ``ratio``.

    Ties go to test, then val, then train (so two subjects become train + test).
    """
    ratio = np.asarray(ratio, float) / float(np.sum(ratio))
    filled = np.zeros(len(ratio))
    out = []
    for weight in keys:
        total = filled.sum() + weight
        deficit = ratio * total - filled
        best = max(order, key=lambda s: (round(deficit[s], 9), -order.index(s)))
        filled[best] += weight
        out.append(best)
    return out


def partition_shapes(shapes: Sequence[NoduleShape], ratio: Sequence[float], rng: np.random.Generator
                     ) -> list[list[NoduleShape]]:
    """Three pools of shapes, whole LIDC patients at a time, in roughly ``ratio`` of shapes."""
    by_patient: dict[str, list[NoduleShape]] = {}
    for shape in shapes:
        key = shape.patient_id or shape.shape_id or str(id(shape))
        by_patient.setdefault(key, []).append(shape)
    patients = sorted(by_patient)
    rng.shuffle(patients)
    splits = _allocate([len(by_patient[p]) for p in patients], ratio)
    pools: list[list[NoduleShape]] = [[] for _ in ratio]
    for patient, split in zip(patients, splits):
        pools[split].extend(by_patient[patient])
    return pools


def split_subjects(subjects: Sequence[str], strata: Mapping[str, str], ratio: Sequence[float],
                   rng: np.random.Generator, weights: Mapping[str, float] | None = None) -> dict[str, str]:
    """Split subjects in ``ratio`` (train, val, test), stratified; returns subject -> split name.

    Subjects are ordered by stratum (shuffled within each) and dealt out in one pass to the
    split that lags most behind its share, so every stratum is spread over the splits in
    about the ratio and the totals match it.
    """
    groups: dict[str, list[str]] = {}
    for subject in subjects:
        groups.setdefault(strata.get(subject, ""), []).append(subject)
    ordered: list[str] = []
    for key in sorted(groups):
        members = sorted(groups[key])
        rng.shuffle(members)
        ordered.extend(members)
    weight = [1.0 if weights is None else float(weights[m]) for m in ordered]
    return {member: SPLITS[split] for member, split in zip(ordered, _allocate(weight, ratio))}


#: Patients whose whole scans the real benchmark evaluates on (``$WSNODULE_DATA/lidc-idri``): always
#: test, so no model trained on a real-data set of this package sees them.
HELD_OUT_PATIENTS = ("LIDC-IDRI-0001", "LIDC-IDRI-0002")


def patient_split(patient_id: str, ratio: Sequence[float] = (4, 1, 1), *, salt: str = "wsnodule",
                  held_out: Sequence[str] = HELD_OUT_PATIENTS) -> str:
    """The split (train, val or test) of a real patient, the same in every data set built from it.

    The split comes from a hash of ``salt`` and the patient's id, not from a draw over the patients
    at hand, so a VOI set, a real-texture hybrid set and any subset of either keep each patient in
    one split. ``held_out`` patients are always test.
    """
    import hashlib

    if patient_id in held_out:
        return "test"
    shares = np.asarray(ratio, float)
    if shares.shape != (3,) or np.any(shares < 0) or not shares.sum() > 0:
        raise UnknownSplitError(f"split ratio {tuple(ratio)}: give three non-negative shares (train, val, test).")
    digest = hashlib.sha256(f"{salt}:{patient_id}".encode()).digest()
    fraction = int.from_bytes(digest[:8], "big") / 2.0 ** 64
    bounds = np.cumsum(shares) / shares.sum()
    return SPLITS[min(int(np.searchsorted(bounds, fraction, side="right")), 2)]


def patient_pools(sources: Sequence, ratio: Sequence[float] = (4, 1, 1)) -> list[list]:
    """Three pools (train, val, test) of nodule sources, each by :func:`patient_split` of its patient.

    Unlike :func:`partition_shapes` the pools do not depend on which sources are at hand or on a
    seed: a real patient's nodules land in the split that patient has in every real-data set.
    """
    pools: list[list] = [[] for _ in SPLITS]
    for source in sources:
        pools[SPLITS.index(patient_split(source.patient_id, ratio))].append(source)
    return pools
