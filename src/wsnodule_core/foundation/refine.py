"""Any method's candidates redrawn by LiteMedSAM: each candidate's boxes -> the decoder's mask.

Each label of a label map (a binary mask: each 26-connected component) gives, on every slice it
reaches, its own in-plane box grown by ``margin_mm`` (whole voxels, rounded): per-slice boxes, because
LiteMedSAM fills a loose box and the 3D box is loose on a round nodule's end slices.
:func:`~wsnodule_core.foundation.segment.segment_slice_boxes` segments them and carries the mask to
the slices within ``margin_mm`` beyond; the refined mask, cut to the grown 3D box, replaces the
candidate under the same label. A voxel two refined candidates claim keeps the lower label.

A candidate whose refined mask is empty is kept as the method drew it (``drop_empty=False``, the
default): refining changes a candidate's shape, not whether it was found, so it never costs a
detection; ``drop_empty=True`` makes it a false-positive filter as well (LiteMedSAM draws nothing in
a box of bare parenchyma).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
from scipy import ndimage

from wsnodule_core.errors import GeometryMismatchError, SegmentationCancelled
from wsnodule_core.foundation.embeddings import EmbeddingCache
from wsnodule_core.foundation.image import MEDSAM_WINDOW
from wsnodule_core.foundation.lite_medsam import LiteMedSam, load_lite_medsam
from wsnodule_core.foundation.segment import segment_slice_boxes
from wsnodule_core.io.volume import Volume
from wsnodule_core.nodules import components_reaching

_CONNECTIVITY_26 = np.ones((3, 3, 3), bool)


def candidate_labels(mask: np.ndarray) -> np.ndarray:
    """int32 labels: a label map as it is, a binary mask as its 26-connected components 1..n."""
    array = np.asarray(mask)
    if array.dtype == bool or array.max(initial=0) <= 1:
        return ndimage.label(array > 0, structure=_CONNECTIVITY_26)[0].astype(np.int32)
    return array.astype(np.int32)


def grown_box(region: Sequence[slice], spacing: Sequence[float], margin_mm: float,
              shape: Sequence[int]) -> tuple[int, int, int, int, int, int]:
    """The box ``(z0, y0, x0, z1, y1, x1)`` (end exclusive) of ``region`` grown by ``margin_mm`` per axis."""
    pad = [int(round(margin_mm / float(s))) for s in spacing]
    lo = [max(r.start - p, 0) for r, p in zip(region, pad)]
    hi = [min(r.stop + p, n) for r, p, n in zip(region, pad, shape)]
    return (*lo, *hi)  # type: ignore[return-value]


def _slice_boxes(own: np.ndarray, region: Sequence[slice], box: Sequence[int], shape: Sequence[int]
                 ) -> dict[int, tuple[int, int, int, int]]:
    """Per slice of ``region``: the candidate's in-plane box, grown as ``box`` grows ``region`` (``own``:
    the candidate's mask on ``box``; boxes in the volume's voxels, clipped to its ``shape``)."""
    pad = (region[1].start - box[1], region[2].start - box[2], box[4] - region[1].stop, box[5] - region[2].stop)
    out = {}
    for z in range(region[0].start, region[0].stop):
        rows, cols = np.nonzero(own[z - box[0]])
        if rows.size:
            rows, cols = rows + box[1], cols + box[2]
            out[z] = (max(int(rows.min()) - pad[0], 0), max(int(cols.min()) - pad[1], 0),
                      min(int(rows.max()) + 1 + pad[2], shape[1]), min(int(cols.max()) + 1 + pad[3], shape[2]))
    return out


def refine_candidates(volume: Volume, labels: np.ndarray | Volume, *, model: LiteMedSam | None = None,
                      device: str = "auto", margin_mm: float = 2.0, drop_empty: bool = False,
                      window: Sequence[float] = MEDSAM_WINDOW, context: float = 2.5,
                      min_side_mm: float = 30.0, min_diameter_mm: float = 0.0,
                      cache: EmbeddingCache | None = None,
                      progress: Callable[[int, int], None] | None = None,
                      cancel: Callable[[], bool] | None = None) -> Volume:
    """``labels`` (a label map or a binary mask on ``volume``'s grid) with every candidate redrawn by
    LiteMedSAM in its box grown by ``margin_mm``; int32 on ``volume``'s grid, the labels kept.

    ``drop_empty``: drop a candidate whose refined mask is empty (default: keep it as it was).
    ``min_diameter_mm``: candidates of a smaller equivalent sphere diameter are kept as drawn, not
    redrawn (each slice of a candidate costs an encoder pass: ~2 s on a CPU).
    ``window``, ``context``, ``min_side_mm``, ``cache``: as :func:`segment_box`.
    """
    array = np.asarray(labels.array if isinstance(labels, Volume) else labels)
    if array.shape != tuple(volume.shape):
        raise GeometryMismatchError(f"the candidate mask has shape {array.shape}, the CT "
                                    f"{tuple(volume.shape)}; refine candidates found on this CT's grid.")
    candidates = candidate_labels(array)
    out = np.zeros(volume.shape, np.int32)
    found = ndimage.find_objects(candidates)
    large = components_reaching(candidates, volume.spacing, min_diameter_mm)
    todo = [(label, region) for label, region in enumerate(found, start=1) if region is not None]
    small = [label for label, _ in todo if not large[label]]
    kept = np.isin(candidates, small)
    out[kept] = candidates[kept]
    todo = [(label, region) for label, region in todo if large[label]]
    if todo and model is None:
        model = load_lite_medsam(device)
    for done, (label, region) in enumerate(todo):
        if cancel is not None and cancel():
            raise SegmentationCancelled(f"LiteMedSAM refinement was cancelled after {done} candidate(s).")
        box = grown_box(region, volume.spacing, margin_mm, volume.shape)
        inside = tuple(slice(box[i], box[i + 3]) for i in range(3))
        own = candidates[inside] == label  # the grown box holds the whole candidate: work there only
        drawn = segment_slice_boxes(volume, _slice_boxes(own, region, box, volume.shape), model=model,
                                    window=window, context=context, min_side_mm=min_side_mm, cache=cache)
        refined = np.asarray(drawn.array)[inside] > 0
        if not refined.any() and not drop_empty:
            refined = own
        target = out[inside]  # a view: the assignment lands in out
        target[refined & (target == 0)] = label
        if progress is not None:
            progress(done + 1, len(todo))
    return volume.with_array(out)
