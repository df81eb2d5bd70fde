"""The "blob-classify-refine" threshold, chosen on validation patients only (issue 16): the blob filter's
candidates on a VOI set's val split (nodule crops and nodule-free crops), each scored by a flow patch
predictor; a candidate is a nodule when it overlaps the reference mask. Also the false-positive candidates
on the split's whole nodule-free real scans (``data.nodule_free.default_sources``: for val, Lung-PET-CT-Dx
A0001; a candidate whose centre lies in a known lesion box, grown by 20 mm, is not counted).

    WSNODULE_DATA=/work/shared/data python benchmarks/candidate_threshold.py VOI_SET PREDICTOR [--split val]

Prints, per threshold, the share of the blob-found nodules kept and the false-positive candidates left per
crop, and the rule's pick: the highest threshold that keeps at least 90 % of the nodules the blob filter
found (an annotator deletes a false positive in a click; a missed nodule costs a search).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

KEEP = 0.90


def whole_scan_probabilities(segmenter, split: str) -> dict[str, np.ndarray]:
    """P(nodule) of the candidates away from known lesions on each whole nodule-free scan of ``split``."""
    from wsnodule_core.data.lung import segment_lungs
    from wsnodule_core.data.nodule_free import default_sources
    from wsnodule_core.io import read_volume

    out = {}
    for source in default_sources():
        if source.split != split or source.kind == "lidc":
            continue
        ct = read_volume(source.path)
        result = segmenter.segment(ct, lungs=segment_lungs(ct).lungs)
        lo = np.array([b[0] for b in source.lesion_boxes_xyz]).reshape(-1, 3) - 20.0
        hi = np.array([b[1] for b in source.lesion_boxes_xyz]).reshape(-1, 3) + 20.0
        clear = [c for c in result.details.candidates
                 if not np.any(np.all((np.asarray(c.centre_xyz) >= lo) & (np.asarray(c.centre_xyz) <= hi), axis=1))]
        out[source.subject] = np.array([c.probability for c in clear if c.probability is not None], float)
        print(f"{source.subject} {ct.shape}: {len(result.details.candidates)} candidates, {len(clear)} away from "
              "its known lesions", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    import torch

    from wsnodule_core.data.dataset import load_dataset
    from wsnodule_core.flow.predictors import load_predictor
    from wsnodule_core.segmentation import BlobSegmenter, ClassifiedSegmenter

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("vois", type=Path)
    parser.add_argument("predictor", type=Path)
    parser.add_argument("--split", default="val")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    started = time.monotonic()
    predictor, _ = load_predictor(args.predictor, "cpu")
    segmenter = ClassifiedSegmenter(BlobSegmenter(), predictor, threshold=0.0)
    dataset = load_dataset(args.vois)
    probabilities, is_nodule, n_crops, n_nodules, found = [], [], 0, 0, set()
    for entry in dataset.entries(args.split):
        case = dataset.load_case(entry)
        reference = np.asarray(case.mask.array) > 0
        n_crops += 1
        n_nodules += int(reference.any())
        result = segmenter.segment(case.image, lungs=case.lungs)
        candidates = result.details.inner.mask.array
        for c in result.details.candidates:
            hit = bool(reference[candidates == c.label].any())
            probabilities.append(c.probability)
            is_nodule.append(hit)
            if hit:
                found.add(case.case_id)
    p, y = np.asarray(probabilities, float), np.asarray(is_nodule, bool)
    whole = whole_scan_probabilities(segmenter, args.split)
    print(f"{args.split}: {n_crops} crops ({n_nodules} with a nodule); blob filter: {len(p)} candidates, "
          f"{int(y.sum())} on a nodule, the nodules of {len(found)} crops found "
          f"({time.monotonic() - started:.0f} s)")
    names = list(whole)
    print("\n| threshold | nodule candidates kept | FP candidates per crop | "
          + " | ".join(f"FP candidates, {n} (whole)" for n in names) + " |\n|---:|---:|---:|"
          + "---:|" * len(names))
    for t in (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95):
        print(f"| {t:.2f} | {np.mean(p[y] >= t):.3f} | {np.sum(p[~y] >= t) / n_crops:.2f} | "
              + " | ".join(str(int(np.sum(whole[n] >= t))) for n in names) + " |")
    candidates = np.unique(p[y])
    pick = max((t for t in candidates if np.mean(p[y] >= t) >= KEEP), default=0.0)
    print(f"\nrule: highest threshold keeping >= {KEEP:.0%} of the nodule candidates: {pick:.4f} "
          f"(kept {np.mean(p[y] >= pick):.3f}, FP per crop {np.sum(p[~y] >= pick) / n_crops:.2f}; "
          + ", ".join(f"{n}: {int(np.sum(whole[n] >= pick))} FP candidates" for n in names) + ")")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
