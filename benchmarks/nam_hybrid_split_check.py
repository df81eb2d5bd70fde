"""Check that a hybrid set's inserted VOI nodules come from patients of the case's own split, against the
patient split of a ``wsnodule data lidc-vois`` set (which records each patient's split).

    python benchmarks/nam_hybrid_split_check.py /tmp/nam-h/train /tmp/nam-h/val --vois-set /tmp/vois-full2
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sets", nargs="+", type=Path, help="hybrid data set folders")
    parser.add_argument("--vois-set", type=Path, required=True, help="a lidc-vois set (its cases carry splits)")
    args = parser.parse_args(argv)
    voi_split = {c["subject"]: c["split"] for c in json.loads((args.vois_set / "dataset.json").read_text())["cases"]}
    bad = 0
    for folder in args.sets:
        cases = json.loads((folder / "dataset.json").read_text())["cases"]
        counts: dict[str, int] = {}
        for case in cases:
            for nodule in case["nodules"]:
                patient = nodule["patient_id"]
                counts[case["split"]] = counts.get(case["split"], 0) + 1
                if voi_split.get(patient) != case["split"]:
                    bad += 1
                    print(f"{folder.name}/{case['case_id']}: nodule of {patient} (VOI split "
                          f"{voi_split.get(patient)}) in a {case['split']} case")
        patients = {n["patient_id"] for c in cases for n in c["nodules"]}
        print(f"{folder}: {len(cases)} cases, nodules by split {counts}, {len(patients)} patients")
    print("OK: every nodule's patient is in its case's split" if not bad else f"{bad} nodule(s) out of split")
    return 0 if not bad else 1


if __name__ == "__main__":
    sys.exit(main())
