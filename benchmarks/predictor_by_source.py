"""Flow patch predictors on a real VOI set's val and test patches: ROC AUC, and the mean P(nodule) of the
nodule-free patches by the scan they were cut from (the slice-thickness confound of docs/real_results.md).

    WSNODULE_DATA=/work/shared/data python benchmarks/predictor_by_source.py VOI_SET PREDICTOR [PREDICTOR ...]
"""

from __future__ import annotations

import sys

import numpy as np


def main(argv: list[str] | None = None) -> int:
    import torch

    from wsnodule_core.flow.patches import PatchConfig, patches_from_dataset
    from wsnodule_core.flow.predictors import load_predictor, predict_patches
    from wsnodule_core.metrics.classification import roc_auc

    args = sys.argv[1:] if argv is None else argv
    torch.set_num_threads(2)
    patches = {split: patches_from_dataset(args[0], split, PatchConfig(size=32, spacing_mm=1.5))
               for split in ("val", "test")}
    for path in args[1:]:
        model, _ = load_predictor(path, "cpu")
        for split, p in patches.items():
            probability = predict_patches(model, p.images)
            free = p.labels == 0
            source = np.array([str(c).rsplit("_", 2)[0] for c in p.case_ids])
            by_source = {str(s): round(float(probability[free & (source == s)].mean()), 3)
                         for s in np.unique(source[free])}
            print(f"{path} {split}: AUC {roc_auc(probability, p.labels):.3f}, mean P of the nodule patches "
                  f"{float(probability[~free].mean()):.3f}, of the nodule-free ones by scan {by_source}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
