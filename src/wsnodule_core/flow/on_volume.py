"""Flow guidance on a CT: patches cut around world points at the prior's protocol, guided, thresholded.

:func:`guide_at_points` cuts an isotropic cube around each centre (the prior's patch size and
spacing, the CT's direction, so every patch keeps a geometry that overlays the CT exactly), takes
the batch through :func:`~wsnodule_core.flow.guidance.guide` and thresholds the difference with a
:class:`~wsnodule_core.flow.attribution.ThresholdRule`. The result holds, per patch, the
counterfactual, the difference ``|x - x_cf|`` (HU), the return-path trajectory and the mask on the
patch grid, and the masks and differences pasted back onto the CT's own grid (nearest for the mask,
linear for the difference; the union of the patches), ready to export like any other mask.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from wsnodule_core.errors import FlowProtocolError, PatchCentreError
from wsnodule_core.io.volume import Volume

AIR_HU = -1024.0  # outside the CT (as flow/patches.py cuts its patches)

Progress = Callable[[int, int], None]
Cancel = Callable[[], bool]


@dataclass(frozen=True, eq=False)
class FlowVolumeResult:
    """One guidance run on a CT: per patch i, arrays on ``patches[i]``'s grid, plus the CT-grid maps."""

    centres_xyz: np.ndarray         # (B, 3) world mm
    patches: list[Volume]           # the input patches, HU, each with its geometry
    counterfactual: np.ndarray      # (B, s, s, s) HU
    difference: np.ndarray          # (B, s, s, s) HU: |reference - counterfactual|
    trajectory: np.ndarray          # (B, n_steps + 1, s, s, s) HU, t0 down to 0
    times: tuple[float, ...]
    masks: np.ndarray               # (B, s, s, s) bool
    p_before: np.ndarray
    p_after: np.ndarray
    config: Any                     # GuidanceConfig
    device: str
    mask: Volume                    # uint8 on the CT's grid: the union of the patch masks
    difference_map: Volume          # float32 HU on the CT's grid, the largest where patches overlap


def intensity_bounds(prior_config: Any) -> tuple[float, float]:
    """The prior's intensity range ``(low, high)`` (e.g. (0, 1) for "unit")."""
    from wsnodule_core.flow.train_prior import INTENSITY_RANGES

    return INTENSITY_RANGES[prior_config.intensity_range]


def patch_protocol(prior_config: Any, patch_config: Any) -> tuple[int, float]:
    """``(size, spacing_mm)`` of the guidance patches; :class:`FlowProtocolError` when the predictor was
    trained on other patches than the prior (it sees the prior's clean estimates as they are)."""
    size = int(prior_config.patch)
    spacing = prior_config.spacing_mm
    fix = ("Load a predictor trained on the prior's patches (train_predictor with PatchConfig(size={s}, "
           "spacing_mm={m})) or a prior trained on the predictor's.")
    if prior_config.intensity_range != "unit":
        raise FlowProtocolError(
            f"the prior works in the {prior_config.intensity_range!r} range "
            f"{intensity_bounds(prior_config)}, the patch predictors take [0, 1]; load a prior trained with "
            "intensity_range='unit'.")
    if patch_config is not None:
        if int(patch_config.size) != size:
            raise FlowProtocolError(f"the prior makes {size}³ patches, the predictor was trained on "
                                    f"{patch_config.size}³. " + fix.format(s=size, m=spacing))
        if spacing is not None and abs(float(patch_config.spacing_mm) - float(spacing)) > 1e-6:
            raise FlowProtocolError(f"the prior's patches are at {spacing:g} mm, the predictor's at "
                                    f"{patch_config.spacing_mm:g} mm. " + fix.format(s=size, m=spacing))
        if tuple(float(w) for w in patch_config.window) != tuple(float(w) for w in prior_config.hu_window):
            raise FlowProtocolError(f"the prior maps HU {tuple(prior_config.hu_window)} to its range, the "
                                    f"predictor HU {tuple(patch_config.window)}. "
                                    + fix.format(s=size, m=spacing))
        if spacing is None:  # a prior trained on native grids: cut at the predictor's spacing
            spacing = float(patch_config.spacing_mm)
    if spacing is None:
        from wsnodule_core.flow.patches import PatchConfig

        spacing = PatchConfig().spacing_mm
    return size, float(spacing)


def check_inside(volume: Volume, centres_xyz: np.ndarray, name: str) -> None:
    """:class:`PatchCentreError` for a centre outside the CT's voxels (``name``: the CT, in the message)."""
    for i, centre in enumerate(np.asarray(centres_xyz, float).reshape(-1, 3)):
        index = volume.world_to_index(centre)
        if np.any(index < -0.5) or np.any(index > np.asarray(volume.shape) - 0.5):
            which = f"point {i + 1}" if len(centres_xyz) > 1 else "the patch centre"
            raise PatchCentreError(
                f"{which} (x, y, z = {', '.join(f'{v:.1f}' for v in centre)} mm) lies outside {name!r} "
                f"(voxel {', '.join(f'{v:.1f}' for v in index)} of {volume.shape}): move the point, or the "
                "viewer's slider and view, onto the CT.")


def cut_patch(volume: Volume, centre_xyz: Sequence[float], size: int, spacing_mm: float, *,
              fill: float = AIR_HU, interpolator: str = "linear") -> Volume:
    """An isotropic cube of ``size`` voxels at ``spacing_mm`` whose voxel ``size // 2`` lies on the
    world point, with the CT's direction: first cropped on the CT's own grid (cheap), then resampled."""
    from wsnodule_core.data.luna16 import extract_patch

    # the cube has the CT's direction, so a crop of its extent plus a margin for interpolation holds it
    box = np.ceil(size * spacing_mm / np.asarray(volume.spacing)).astype(int) + 4
    local = extract_patch(volume, centre_xyz, size_vox=box, fill=fill)
    return extract_patch(local, centre_xyz, size_vox=int(size), spacing=float(spacing_mm), fill=fill,
                         interpolator=interpolator)  # type: ignore[arg-type]


def paste_on_grid(patches: Sequence[Volume], reference: Volume, *, interpolator: str,
                  combine: Callable[[np.ndarray, np.ndarray], np.ndarray], dtype: Any) -> Volume:
    """The patches resampled onto ``reference``'s grid and combined there (zero outside every patch).

    Each patch is resampled onto the part of the reference grid its box covers (``interpolator``
    "nearest" or "linear", 0 outside the patch), then ``combine(old, new)`` (``np.maximum`` for a
    union) writes it, so a later patch never erases an earlier one.
    """
    from wsnodule_core.image.resample import Grid, resample_to_grid

    out = np.zeros(reference.shape, dtype)
    upper = np.asarray(reference.shape) - 1
    for patch in patches:
        if not np.allclose(patch.direction, reference.direction, atol=1e-6):
            raise PatchCentreError("a patch does not share the CT's direction; cut it with cut_patch.")
        ends = [(-0.5, n - 0.5) for n in patch.shape]
        corners = np.array([[z, y, x] for z in ends[0] for y in ends[1] for x in ends[2]], float)
        index = reference.world_to_index(patch.index_to_world(corners))
        low = np.clip(np.floor(index.min(axis=0)).astype(int), 0, upper)
        high = np.clip(np.ceil(index.max(axis=0)).astype(int), 0, upper)
        if np.any(index.max(axis=0) < -0.5) or np.any(index.min(axis=0) > upper + 0.5):
            continue  # the patch lies outside the reference
        # the crop low..high of the reference grid
        crop = Grid(high - low + 1, reference.spacing, reference.index_to_world(low.astype(float)),
                    reference.direction)
        local = resample_to_grid(patch, crop, interpolator=interpolator, fill=0)  # type: ignore[arg-type]
        region = tuple(slice(a, b + 1) for a, b in zip(low, high))
        out[region] = combine(out[region], np.asarray(local.array).astype(dtype))
    return reference.with_array(out)


def guide_at_points(volume: Volume, centres_xyz: np.ndarray, velocity_model: Any, predictor: Any, config: Any,
                    rule: Any, *, prior_config: Any, patch_config: Any = None, floor_hu: float = 0.0,
                    central: bool = False, lungs: Volume | None = None, name: str = "the CT",
                    progress: Progress | None = None, cancel: Cancel | None = None) -> FlowVolumeResult:
    """Guide the prior towards "no nodule" in patches around world points of a CT and threshold the change.

    Parameters
    ----------
    volume
        The CT in HU, with its geometry.
    centres_xyz
        ``(B, 3)`` world points (x, y, z) mm; each must lie inside the CT.
    velocity_model
        The frozen prior (eval mode); the predictor is moved to its device when needed.
    predictor
        The patch predictor (logits of "nodule").
    config
        :class:`~wsnodule_core.flow.guidance.GuidanceConfig`.
    rule
        :class:`~wsnodule_core.flow.attribution.ThresholdRule` of the mask.
    prior_config
        The prior's ``PriorTrainConfig`` (patch size, spacing, HU window, intensity range).
    patch_config
        The predictor's ``PatchConfig`` when its checkpoint recorded one: checked against the prior's.
    floor_hu
        Differences below this many HU are ignored first (reconstruction noise gives an empty mask).
    central
        Keep only each patch mask's piece at (or nearest to) the patch centre
        (:func:`~wsnodule_core.flow.attribution.keep_central`).
    lungs
        Optional lung mask on the CT's grid: the masks are kept inside it.
    name
        What to call the CT in error messages.
    progress, cancel
        ``progress(done, total)`` per integration step; ``cancel()`` True raises
        :class:`~wsnodule_core.flow.rectified_flow.SamplingCancelled`.

    Returns
    -------
    FlowVolumeResult
        Per-patch arrays and the CT-grid mask and difference.

    Examples
    --------
    >>> result = guide_at_points(ct, [[-40.0, 12.5, -110.0]], prior, predictor, GuidanceConfig(),
    ...                          ThresholdRule("otsu"), prior_config=prior_config)  # doctest: +SKIP
    >>> write_mask(result.mask, "flow_mask.nii.gz")  # doctest: +SKIP
    """
    import torch

    from wsnodule_core.flow.attribution import keep_central
    from wsnodule_core.flow.guidance import difference_mask, guide
    from wsnodule_core.flow.rectified_flow import SamplingCancelled

    centres = np.asarray(centres_xyz, float).reshape(-1, 3)
    if not len(centres):
        raise PatchCentreError("no patch centres were given: give at least one world point on the CT.")
    size, spacing = patch_protocol(prior_config, patch_config)
    check_inside(volume, centres, name)
    low, high = prior_config.hu_window
    a, b = intensity_bounds(prior_config)
    hu_per_unit = (high - low) / (b - a)
    patches = [cut_patch(volume, c, size, spacing) for c in centres]
    lung_crops = None if lungs is None else np.stack(
        [cut_patch(lungs, c, size, spacing, fill=0, interpolator="nearest").array > 0 for c in centres])
    if cancel is not None and cancel():
        raise SamplingCancelled("flow guidance cancelled before the first integration step.")
    device = next(velocity_model.parameters()).device
    net = predictor
    if next(net.parameters(), None) is not None and next(net.parameters()).device != device:
        net = net.to(device)
    hu = np.stack([np.asarray(p.array, np.float32) for p in patches])
    x = torch.from_numpy(np.asarray(prior_config.to_model(hu), np.float32))[:, None].to(device)
    result = guide(velocity_model, net, x, config, keep_trajectory=True, cancel=cancel, progress=progress)
    floor = float(floor_hu) / hu_per_unit  # HU -> the prior's intensity units
    masks = np.asarray(difference_mask(result.difference, lung_crops, rule, floor=floor), bool)
    if central:
        masks = keep_central(masks)
    to_hu = prior_config.to_hu
    states = torch.stack(result.trajectory.states, dim=1)[:, :, 0]  # (B, T, s, s, s)
    difference = (result.difference[:, 0].numpy() * hu_per_unit).astype(np.float32)
    mask_patches = [p.with_array(m.astype(np.uint8)) for p, m in zip(patches, masks)]
    diff_patches = [p.with_array(d) for p, d in zip(patches, difference)]
    return FlowVolumeResult(
        centres, patches, np.asarray(to_hu(result.counterfactual[:, 0].numpy()), np.float32), difference,
        np.asarray(to_hu(states.float().numpy()), np.float32), tuple(result.trajectory.times), masks,
        result.p_before.numpy(), result.p_after.numpy(), config, str(device),
        paste_on_grid(mask_patches, volume, interpolator="nearest", combine=np.maximum, dtype=np.uint8),
        paste_on_grid(diff_patches, volume, interpolator="linear", combine=np.maximum, dtype=np.float32))
