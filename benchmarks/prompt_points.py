"""Do clicks help LiteMedSAM? 2D Dice on the widest slice of real LIDC VOIs (issue 17, item 2).

    WSNODULE_DATA=/work/shared/data OMP_NUM_THREADS=2 python benchmarks/prompt_points.py [--split val] [--n 12]

Per VOI, on the slice where its majority-vote mask is widest (one encoder pass per prompt crop):
the reference box (the mask's box grown by 1 px); the box plus a positive point at the mask's
centre; one positive click at that centre (with and without the point); and one corrective click
after the box (negative at the centre of the largest false-positive piece, or positive at the
largest missed piece, whichever is larger), as a SAM point ("points") or through boxes ("boxes",
the default of :class:`PromptSession`).
Results: docs/plugin.md ("Prompt-based correction").
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from scipy import ndimage

from wsnodule_core.data.builders.splits import patient_split
from wsnodule_core.data.lidc.vois import load_voi, read_voi_table
from wsnodule_core.foundation import EmbeddingCache, load_lite_medsam
from wsnodule_core.foundation.prompt import PromptSession, _mask_box
from wsnodule_core.metrics import dice_3d


def _centre(mask: np.ndarray) -> tuple[int, int]:
    """A pixel of ``mask`` nearest its centroid (inside the mask even when it is not convex)."""
    distance = ndimage.distance_transform_edt(mask)
    y, x = np.unravel_index(np.argmax(distance), mask.shape)
    return int(y), int(x)


def _largest(mask: np.ndarray) -> np.ndarray:
    labels, n = ndimage.label(mask)
    if n == 0:
        return mask
    sizes = ndimage.sum(mask, labels, range(1, n + 1))
    return labels == (1 + int(np.argmax(sizes)))


def _corrective(session: PromptSession, z: int, box, boxed: np.ndarray, truth: np.ndarray) -> float:
    """Dice after one click on the larger error of the box's mask (negative on the largest false-positive
    piece, positive on the largest missed piece)."""
    session.forget()
    session.box(z, box)
    extra, missed = _largest(boxed & ~truth), _largest(truth & ~boxed)
    wrong, positive = (missed, True) if missed.sum() >= extra.sum() else (extra, False)
    if not wrong.any():
        return dice_3d(boxed, truth)
    y, x = _centre(wrong)
    return dice_3d(session.click(z, y, x, positive).mask, truth)


def scores(sam: PromptSession, boxes: PromptSession, z: int, truth: np.ndarray) -> dict[str, float]:
    """``sam`` passes clicks as points (``click_points=True``), ``boxes`` acts through boxes (the default)."""
    box = _mask_box(truth, 1)
    cy, cx = _centre(truth)
    out = {}
    boxes.forget()
    boxed = boxes.box(z, box).mask
    out["box"] = dice_3d(boxed, truth)
    sam.forget()
    sam.box(z, box)
    out["box + centre point (points)"] = dice_3d(sam.click(z, cy, cx, True).mask, truth)
    sam.forget()
    out["one click (points)"] = dice_3d(sam.click(z, cy, cx, True).mask, truth)
    boxes.forget()
    out["one click (boxes)"] = dice_3d(boxes.click(z, cy, cx, True).mask, truth)
    out["box + corrective click (points)"] = _corrective(sam, z, box, boxed, truth)
    out["box + corrective click (boxes)"] = _corrective(boxes, z, box, boxed, truth)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", default="val")
    parser.add_argument("--n", type=int, default=12)
    parser.add_argument("--cache", default=None, help="an embedding cache folder (reruns skip the encoder)")
    args = parser.parse_args()
    vois = [v for v in read_voi_table() if patient_split(v.patient_id) == args.split][: args.n]
    model = load_lite_medsam("cpu")
    rows = []
    for voi in vois:
        image, mask = load_voi(voi)
        truth = np.asarray(mask.array) > 0
        z = int(np.argmax(truth.sum(axis=(1, 2))))
        with torch.no_grad():
            cache = EmbeddingCache(args.cache) if args.cache else None
            sam, boxes = (PromptSession(image, model=model, click_points=p, cache=cache) for p in (True, False))
            boxes._crops = sam._crops  # one encoder pass per crop for both (same crops, same embeddings)
            row = scores(sam, boxes, z, truth[z])
        rows.append(row)
        print(f"{voi.name:28s} {voi.diameter_mm:5.1f} mm  " + "  ".join(f"{v:.3f}" for v in row.values()), flush=True)
    print(f"\nmean 2D Dice over {len(rows)} VOIs ({args.split}):")
    for key in rows[0]:
        values = np.array([r[key] for r in rows])
        print(f"  {key:30s} {values.mean():.3f}  (median {np.median(values):.3f})")


if __name__ == "__main__":
    main()
