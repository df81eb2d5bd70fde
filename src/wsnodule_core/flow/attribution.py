"""Attribution baselines on the patch predictors, and the threshold rules shared with the flow method.

Maps (all ``[n, D, H, W]`` on the patch grid, each patch normalised to [0, 1]):

* ``"cam"``, ``"gradcam"``, ``"gradcampp"``: MONAI's ``CAM``, ``GradCAM`` and ``GradCAMpp`` on the
  predictor's ``cam_layer`` (and ``fc_layer`` for CAM), class 1 ("nodule"), upsampled trilinearly
  to the patch. MONAI 1.6's Grad-CAM++ multiplies the class score ``[B]`` along the last spatial
  axis (right for one patch only); a subclass here broadcasts it per patch. MONAI registers
  hooks on the module it is given and never removes them, so an :class:`Attributor` works on its
  own deep copy of the predictor (the caller's model is left as it was).
* ``"occlusion"``: own batched occlusion sensitivity (MONAI's ``OcclusionSensitivity`` takes one
  image per call): a cube of ``occlusion_size`` voxels, moved with ``occlusion_stride``, is set to
  ``occlusion_fill``; each voxel gets the mean drop of P(nodule) over the cubes covering it.

Normalisation per patch: CAM is min-max scaled (its raw values are signed); Grad-CAM, Grad-CAM++
and occlusion are clipped at 0 (only evidence for "nodule" counts) and divided by their maximum.
A constant map becomes all zeros.

Threshold rules (:class:`ThresholdRule`, :func:`mask_from_map`), always restricted to the lungs:
``"fraction"`` keeps voxels >= ``value`` x the map's maximum inside the lungs; ``"otsu"`` keeps
voxels above Otsu's threshold of the map's values inside the lungs; ``"top_percent"`` keeps the
``value`` % of lung voxels with the highest map values. A map that is zero in the lungs gives an
empty mask.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from wsnodule_core.errors import ModelConfigError, SegmentationCancelled
from wsnodule_core.flow.predictors import PredictorModule, as_predictor, two_class_logits

METHODS = ("cam", "gradcam", "gradcampp", "occlusion")
RULES = ("fraction", "otsu", "top_percent")


@dataclass(frozen=True)
class AttributionConfig:
    """The method and its settings; occlusion sizes in voxels, ``occlusion_fill`` in [0, 1] (0 = -1000 HU)."""

    method: str = "gradcam"
    occlusion_size: int = 8
    occlusion_stride: int = 4
    occlusion_fill: float = 0.0
    occlusion_batch: int = 64

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ModelConfigError(f"method must be one of {METHODS}, got {self.method!r}.")
        if self.occlusion_size < 1 or self.occlusion_stride < 1 or self.occlusion_batch < 1:
            raise ModelConfigError("occlusion_size, occlusion_stride and occlusion_batch must be >= 1, got "
                                   f"{self.occlusion_size}, {self.occlusion_stride}, {self.occlusion_batch}.")


def normalise_maps(maps: torch.Tensor, signed: bool = False) -> torch.Tensor:
    """Each map of ``[n, ...]`` to [0, 1]: min-max when ``signed``, else clipped at 0 and divided by its
    maximum; a constant map becomes zeros."""
    flat = maps.reshape(len(maps), -1).float()
    if signed:
        low = flat.min(dim=1, keepdim=True).values
        flat = flat - low
    else:
        flat = flat.clamp(min=0)
    top = flat.max(dim=1, keepdim=True).values
    flat = torch.where(top > 0, flat / top.clamp(min=torch.finfo(flat.dtype).tiny), torch.zeros_like(flat))
    return flat.reshape(maps.shape)


class Attributor:
    """One attribution method bound to (a private copy of) one predictor; call it on batches.

    Parameters
    ----------
    model
        A :class:`~wsnodule_core.flow.predictors.PredictorModule` or any predictor module (wrapped,
        with ``cam_layer``/``fc_layer`` naming its layers *inside the given module*).
    config
        The method and occlusion settings.
    device
        Where the copy runs (default: where the model's parameters are).
    """

    def __init__(self, model: nn.Module, config: AttributionConfig = AttributionConfig(), *,
                 cam_layer: str | None = None, fc_layer: str | None = None,
                 device: torch.device | str | None = None) -> None:
        self.config = config
        wrapped = as_predictor(model, cam_layer, fc_layer)
        if device is None:
            first = next(wrapped.parameters(), None)
            device = first.device if first is not None else torch.device("cpu")
        self.device = torch.device(device)
        self.model: PredictorModule = copy.deepcopy(wrapped).to(self.device).eval()
        for parameter in self.model.parameters():
            parameter.requires_grad_(True)  # Grad-CAM needs gradients at the target layer
        self._cam = None
        if config.method != "occlusion":
            self._cam = self._monai_cam(config.method)

    def _monai_cam(self, method: str):
        from monai.visualize import CAM, GradCAM

        if self.model.cam_layer is None:
            raise ModelConfigError(f"{method} needs the predictor's spatial feature layer; give cam_layer "
                                   "(a name from the model's named_modules()).")
        identity = lambda x: x  # noqa: E731 - normalisation is ours (MONAI's default flips the map)
        if method == "cam":
            if self.model.fc_layer is None:
                raise ModelConfigError("plain CAM needs the linear layer after global pooling; give "
                                       "fc_layer, or use gradcam.")
            fc = self.model.get_submodule(self.model.fc_layer)
            return CAM(self.model, self.model.cam_layer, postprocessing=identity,
                       fc_layers=lambda _: lambda a: two_class_logits(fc(a)))
        kind = GradCAM if method == "gradcam" else _batched_gradcampp()
        return kind(self.model, self.model.cam_layer, postprocessing=identity)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Maps ``[B, D, H, W]`` in [0, 1] (on the CPU, float32) of a batch ``x`` ``[B, 1, D, H, W]``."""
        if x.ndim != 5 or x.shape[1] != 1:
            raise ModelConfigError(f"expected a batch [B, 1, D, H, W], got {tuple(x.shape)}.")
        x = x.to(self.device).float()
        if self.config.method == "occlusion":
            raw = self._occlusion(x)
        elif self.config.method == "cam":
            with torch.no_grad():
                raw = self._cam(x, class_idx=[1] * len(x))[:, 0]
        else:
            raw = self._cam(x.clone().requires_grad_(True), class_idx=1)[:, 0]
        return normalise_maps(raw.detach(), signed=self.config.method == "cam").cpu()

    @torch.no_grad()
    def _occlusion(self, x: torch.Tensor) -> torch.Tensor:
        c = self.config
        spatial = x.shape[2:]
        sizes = [min(c.occlusion_size, n) for n in spatial]
        starts = [sorted({*range(0, n - m + 1, c.occlusion_stride), n - m}) for n, m in zip(spatial, sizes)]
        boxes = [(a, b, d) for a in starts[0] for b in starts[1] for d in starts[2]]
        base = torch.softmax(self.model(x).float(), dim=1)[:, 1]
        total = torch.zeros_like(x[:, 0])
        count = torch.zeros(spatial, device=x.device)
        for first in range(0, len(boxes), max(1, c.occlusion_batch // len(x))):
            chunk = boxes[first:first + max(1, c.occlusion_batch // len(x))]
            occluded = x.repeat(len(chunk), 1, 1, 1, 1)  # [len(chunk) * B, 1, ...], box-major
            for k, (a, b, d) in enumerate(chunk):
                box = (slice(a, a + sizes[0]), slice(b, b + sizes[1]), slice(d, d + sizes[2]))
                occluded[(slice(k * len(x), (k + 1) * len(x)), slice(None), *box)] = c.occlusion_fill
            prob = torch.softmax(self.model(occluded).float(), dim=1)[:, 1].view(len(chunk), len(x))
            for k, (a, b, d) in enumerate(chunk):
                region = (slice(None), slice(a, a + sizes[0]), slice(b, b + sizes[1]), slice(d, d + sizes[2]))
                total[region] += (base - prob[k]).view(-1, 1, 1, 1)
                count[region[1:]] += 1
        return total / count.clamp(min=1)


def _batched_gradcampp():
    """The Grad-CAM++ class (built on first use: MONAI is imported late, it is slow to import)."""
    from monai.visualize import GradCAMpp

    class BatchedGradCAMpp(GradCAMpp):
        """MONAI's Grad-CAM++ with the class score ``[B]`` broadcast per patch (MONAI multiplies it along
        the last spatial axis, which is only right for one patch per call)."""

        def compute_map(self, x, class_idx=None, retain_graph=False, layer_idx=-1, **kwargs):
            _, acti, grad = self.nn_module(x, class_idx=class_idx, retain_graph=retain_graph, **kwargs)
            acti, grad = acti[layer_idx], grad[layer_idx]
            b, c = grad.shape[:2]
            ones = [1] * (grad.ndim - 2)
            alpha_nr = grad.pow(2)
            alpha_dr = alpha_nr.mul(2) + acti.mul(grad.pow(3)).reshape(b, c, -1).sum(-1).view(b, c, *ones)
            alpha = alpha_nr / (torch.where(alpha_dr != 0.0, alpha_dr, torch.ones_like(alpha_dr)) + 1e-7)
            score = self.nn_module.score.reshape(b, 1, *ones)
            weights = (alpha * torch.relu(score.exp() * grad)).reshape(b, c, -1).sum(-1).view(b, c, *ones)
            return torch.relu((weights * acti).sum(1, keepdim=True))

    return BatchedGradCAMpp


def attribution_maps(model: nn.Module, images, config: AttributionConfig = AttributionConfig(), *,
                     device: torch.device | str | None = None, batch_size: int = 8,
                     cam_layer: str | None = None, fc_layer: str | None = None,
                     progress: Callable[[int, int], None] | None = None,
                     cancel: Callable[[], bool] | None = None) -> np.ndarray:
    """Attribution maps ``(n, D, H, W)`` float32 in [0, 1] of patches ``images`` ``(n, D, H, W)`` in [0, 1].

    Batched over patches (``batch_size`` per call); ``progress(done, total)`` after each batch and
    ``cancel()`` before each (True raises :class:`~wsnodule_core.errors.SegmentationCancelled`).
    """
    attributor = Attributor(model, config, cam_layer=cam_layer, fc_layer=fc_layer, device=device)
    images = np.asarray(images) if not isinstance(images, torch.Tensor) else images
    if images.ndim != 4:
        raise ModelConfigError(f"images must be (n, D, H, W) patches, got shape {tuple(images.shape)}.")
    out = np.zeros(tuple(images.shape), np.float32)
    n = len(images)
    for start in range(0, n, batch_size):
        if cancel is not None and cancel():
            raise SegmentationCancelled(f"attribution was cancelled after {start} of {n} patches.")
        x = torch.as_tensor(images[start:start + batch_size]).float()[:, None]
        out[start:start + len(x)] = attributor(x).numpy()
        if progress is not None:
            progress(min(start + batch_size, n), n)
    return out


# --- threshold rules ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ThresholdRule:
    """How a [0, 1] map becomes a mask (see the module docstring): ``kind`` "fraction" (``value`` in
    (0, 1], of the max in the lungs), "otsu" (no value) or "top_percent" (``value`` in (0, 100])."""

    kind: str = "fraction"
    value: float = 0.5

    def __post_init__(self) -> None:
        if self.kind not in RULES:
            raise ModelConfigError(f"threshold rule must be one of {RULES}, got {self.kind!r}.")
        if self.kind == "fraction" and not 0 < self.value <= 1:
            raise ModelConfigError(f"the fraction rule needs a value in (0, 1], got {self.value}.")
        if self.kind == "top_percent" and not 0 < self.value <= 100:
            raise ModelConfigError(f"the top_percent rule needs a value in (0, 100], got {self.value}.")


def _one_mask(values: np.ndarray, lungs: np.ndarray, rule: ThresholdRule) -> np.ndarray:
    mask = np.zeros(values.shape, bool)
    inside = values[lungs]
    if inside.size == 0 or not np.any(inside > 0):
        return mask
    if rule.kind == "fraction":
        keep = values >= rule.value * inside.max()
    elif rule.kind == "otsu":
        if np.ptp(inside) == 0:
            keep = values >= inside.max()
        else:
            from skimage.filters import threshold_otsu

            keep = values > threshold_otsu(inside)
    else:
        k = max(1, int(round(rule.value / 100.0 * inside.size)))
        cut = np.partition(inside, inside.size - k)[inside.size - k]
        keep = values >= cut
    return keep & lungs & (values > 0)


def keep_central(masks: np.ndarray) -> np.ndarray:
    """Each ``(D, H, W)`` mask of ``(n, D, H, W)`` (or one mask) reduced to its 26-connected piece at the
    patch centre, or the piece nearest to it: a patch guided at one candidate marks one nodule, and
    the other pieces are its rim noise or a neighbour's edge."""
    from scipy import ndimage

    masks = np.asarray(masks, bool)
    if masks.ndim == 3:
        return keep_central(masks[None])[0]
    out = np.zeros_like(masks)
    for i, mask in enumerate(masks):
        labels, n = ndimage.label(mask, np.ones((3, 3, 3), bool))
        if n == 0:
            continue
        centre = tuple(s // 2 for s in mask.shape)
        label = labels[centre]
        if label == 0:
            _, (zi, yi, xi) = ndimage.distance_transform_edt(labels == 0, return_indices=True)
            label = labels[zi[centre], yi[centre], xi[centre]]
        out[i] = labels == label
    return out


def mask_from_map(maps, lungs=None, rule: ThresholdRule = ThresholdRule()) -> np.ndarray:
    """Binary masks from maps: one ``(D, H, W)`` map or a batch ``(n, D, H, W)``; ``lungs`` of the same
    shape (None: the whole patch counts as lung). Voxels outside the lungs are never kept."""
    values = np.asarray(maps.detach().cpu() if isinstance(maps, torch.Tensor) else maps, np.float32)
    if values.ndim not in (3, 4):
        raise ModelConfigError(f"maps must be (D, H, W) or (n, D, H, W), got shape {values.shape}.")
    inside = np.ones(values.shape, bool) if lungs is None else np.asarray(lungs, bool)
    if inside.shape != values.shape:
        raise ModelConfigError(f"lungs have shape {inside.shape}, the maps {values.shape}; give one lung "
                               "crop per map.")
    if values.ndim == 3:
        return _one_mask(values, inside, rule)
    return np.stack([_one_mask(v, m, rule) for v, m in zip(values, inside)]) if len(values) else inside.copy()
