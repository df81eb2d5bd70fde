"""The front door: any checkpoint -> a :class:`~wsnodule_core.segmentation.base.Segmenter`, own settings."""

from __future__ import annotations

import os
from typing import Any

from wsnodule_core.errors import CheckpointError, ModelConfigError
from wsnodule_core.segmentation.base import Segmenter

PathLike = str | os.PathLike


def method_kinds() -> dict[str, str]:
    """Each method's checkpoint kind constant, by a short name (``"nam"``, ``"pw4medseg"``, ...)."""
    from wsnodule_core.baselines.unet.train import KIND as UNET
    from wsnodule_core.flow.predictors import KIND as FLOW_PREDICTOR
    from wsnodule_core.flow.train_prior import KIND as FLOW_PRIOR
    from wsnodule_core.nam.model3d import KIND_3D as NAM_3D
    from wsnodule_core.nam.model import KIND as NAM
    from wsnodule_core.pw4medseg.config import KIND as PW

    return {
        "nam": NAM,
        "nam3d": NAM_3D,
        "unet": UNET,
        "pw4medseg": PW,
        "flow_predictor": FLOW_PREDICTOR,
        "flow_prior": FLOW_PRIOR,
    }


def checkpoint_kind(checkpoint: PathLike) -> str:
    """The kind a checkpoint (file or run folder) declares, e.g. ``"nam-multigap"`` (its weights are
    mapped, not read: the model's loader reads them once)."""
    from wsnodule_core.training.checkpoint import load_checkpoint

    return load_checkpoint(checkpoint, mmap=True).kind


def load_segmenter(
    checkpoint: PathLike,
    device: str = "auto",
    *,
    multi_gap_checkpoint: PathLike | None = None,
    prior_checkpoint: PathLike | None = None,
    name: str | None = None,
    **options: Any,
) -> Segmenter:
    """A segmenter for a checkpoint of any kind, set up from the checkpoint's own settings.

    Parameters
    ----------
    checkpoint
        ``best.pt``/``last.pt`` written by ``wsnodule train`` (or its run folder): a NAM classifier
        (1/2/3-GAP), a 3D NAM, the U-Net baseline, a PW4MedSeg network or a flow-guidance predictor.
    device
        ``"auto"`` (CUDA, then MPS, then CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"``.
    multi_gap_checkpoint
        NAM only: a 2-/3-GAP classifier whose NAM narrows the screening scope (the paper's multi-GAP
        segmentation; ``checkpoint`` is then the 1-GAP model).
    prior_checkpoint
        Flow guidance only: the rectified-flow prior the predictor guides.
    name
        The segmenter's name (a table row); default from the model (``"1-GAP"``, ``"U-net"``...).
    **options
        Method settings that replace the checkpoint's: NAM ``output`` (``"fine"``/``"coarse"``) and any
        ``NamConfig`` field (e.g. ``top_k=2``); PW4MedSeg ``passes``, ``threshold``...; U-Net ``threshold``.

    Returns
    -------
    Segmenter
        ``segmenter.segment(volume, lungs="auto", progress=None, cancel=None)`` gives a
        :class:`~wsnodule_core.segmentation.base.SegmentationResult` on the CT's grid.

    Examples
    --------
    >>> from wsnodule_core import load_segmenter, read_volume, write_mask
    >>> segmenter = load_segmenter("runs/nam1/best.pt")          # doctest: +SKIP
    >>> ct = read_volume("scan.nii.gz")                           # doctest: +SKIP
    >>> write_mask(segmenter.segment(ct).mask, ct, "mask.nii.gz")  # doctest: +SKIP
    """
    from wsnodule_core.training.device import choose_device

    torch_device = choose_device(device).device
    kind = checkpoint_kind(checkpoint)
    kinds = method_kinds()
    if multi_gap_checkpoint is not None and kind != kinds["nam"]:
        raise ModelConfigError(
            f"{checkpoint}: a {kind!r} model takes no multi-GAP checkpoint; give "
            "multi_gap_checkpoint (--multi-gap-checkpoint) only with a NAM classifier."
        )
    if prior_checkpoint is not None and kind != kinds["flow_predictor"]:
        raise ModelConfigError(
            f"{checkpoint}: a {kind!r} model takes no flow prior; give prior_checkpoint "
            "(--flow-prior) only with a flow-guidance predictor."
        )
    model, loaded = load_model_of_kind(checkpoint, kind, torch_device)
    multi = None
    if multi_gap_checkpoint is not None:
        multi, _ = load_model_of_kind(multi_gap_checkpoint, kinds["nam"], torch_device)
    prior = None
    if kind == kinds["flow_predictor"]:
        if prior_checkpoint is None:
            raise ModelConfigError(
                f"{checkpoint}: a flow-guidance predictor segments by steering a "
                "rectified-flow prior; give prior_checkpoint (--flow-prior PRIOR)."
            )
        prior = load_model_of_kind(prior_checkpoint, kinds["flow_prior"], torch_device)  # (model, config)
    return segmenter_for_model(kind, model, loaded, name=name, multi_gap_model=multi, prior=prior, **options)


def load_model_of_kind(path: PathLike, kind: str, device: Any) -> tuple[Any, Any]:
    """``(model, checkpoint)`` of a checkpoint whose kind is ``kind``, in eval mode on ``device``."""
    kinds = method_kinds()
    if kind == kinds["nam"]:
        from wsnodule_core.nam.model import load_classifier

        return load_classifier(path, device)
    if kind == kinds["nam3d"]:
        from wsnodule_core.nam.model3d import load_classifier_3d

        return load_classifier_3d(path, device)
    if kind == kinds["unet"]:
        from wsnodule_core.baselines.unet import load_unet

        return load_unet(path, device)
    if kind == kinds["pw4medseg"]:
        from wsnodule_core.pw4medseg.config import load_pw4medseg
        from wsnodule_core.training.checkpoint import load_checkpoint

        model, config = load_pw4medseg(path, device)
        return model, (config, load_checkpoint(path))
    if kind == kinds["flow_predictor"]:
        from wsnodule_core.flow.predictors import load_predictor

        return load_predictor(path, device)
    if kind == kinds["flow_prior"]:
        from wsnodule_core.flow.train_prior import load_prior

        return load_prior(path, device)
    raise CheckpointError(
        f"{path}: holds a {kind or 'unknown'!r} model, which wsnodule cannot segment "
        f"with; give a checkpoint written by `wsnodule train` ({sorted(kinds.values())})."
    )


def segmenter_for_model(
    kind: str,
    model: Any,
    checkpoint: Any,
    *,
    name: str | None = None,
    multi_gap_model: Any = None,
    prior: Any = None,
    **options: Any,
) -> Segmenter:
    """The segmenter of a model already loaded (e.g. one the plugin trained or loaded), from its
    checkpoint's settings and ``options`` (see :func:`load_segmenter`)."""
    kinds = method_kinds()
    if kind == kinds["nam"]:
        from wsnodule_core.segmentation.nam import NamSegmenter, nam_config_for_checkpoint

        output = options.pop("output", "fine")
        base = options.pop("config", None)
        config = nam_config_for_checkpoint(checkpoint, base, **options)
        return NamSegmenter(model, config, multi_gap_model, output, name or f"{model.config.n_gap}-GAP")
    if kind == kinds["nam3d"]:
        from wsnodule_core.segmentation.nam import nam3d_segmenter

        return nam3d_segmenter(model, checkpoint, name=name, **options)
    if kind == kinds["unet"]:
        from wsnodule_core.segmentation.unet import UnetBaselineSegmenter

        unknown = sorted(set(options) - {"threshold"})
        if unknown:
            raise ModelConfigError(
                f"U-Net segmentation has no option {unknown}; its only option is threshold."
            )
        return UnetBaselineSegmenter(model, name=name or "U-net", **options)
    if kind == kinds["pw4medseg"]:
        from wsnodule_core.segmentation.pw4medseg import PwSegmenter

        from wsnodule_core.pw4medseg.config import checkpoint_config

        if isinstance(checkpoint, tuple):  # (config, checkpoint) as load_model_of_kind gives
            config = checkpoint[0]
        else:  # a Checkpoint, e.g. of a model the plugin holds
            config = checkpoint_config(checkpoint) if hasattr(checkpoint, "train_config") else checkpoint
        segmenter = PwSegmenter(model, config, name=name or f"PW4MedSeg ({config.annotation.describe()})")
        return segmenter.with_options(**options) if options else segmenter
    if kind == kinds["flow_predictor"]:
        from wsnodule_core.segmentation.flow import flow_segmenter

        return flow_segmenter(model, checkpoint, prior, name=name, **options)
    if kind == kinds["flow_prior"]:
        raise ModelConfigError(
            "a flow prior alone does not segment: load the predictor that guides it, with "
            "this prior as prior_checkpoint (--flow-prior)."
        )
    raise CheckpointError(
        f"a {kind or 'unknown'!r} model cannot segment; wsnodule segments with {sorted(kinds.values())}."
    )
