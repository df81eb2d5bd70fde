"""Image-level classification figures (slices, patches): the ROC AUC every classifier's validation reports."""

from __future__ import annotations

import numpy as np


def roc_auc(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney, ties counted half); nan when a class is missing."""
    from scipy.stats import rankdata

    p = np.asarray(probabilities, np.float64).ravel()
    y = np.asarray(labels).ravel() > 0
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(p)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))
