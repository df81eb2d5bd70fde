"""LUNA16-style cubic patches with geometry, labels, nodule and lung crops (the flow method's data).

Each patch is a cube of ``size`` voxels at an isotropic ``spacing_mm`` (default 32^3 at 1.5 mm on
the CPU, 64^3 at 1 mm on a GPU: :meth:`PatchConfig.for_device`), cut by
:func:`wsnodule_core.data.luna16.extract_patch` around a world point, so that the centre voxel
(index ``size // 2``) lies exactly on that point and the patch has its own origin and the case's
direction: every patch is a :class:`~wsnodule_core.io.volume.Volume` (:meth:`PatchSet.volume`).
The case is first cropped on its own grid around the point (cheap for a large CT), then resampled
(SimpleITK: linear for the image, nearest neighbour for the label map and the lungs).

Labels: 1 for a patch centred on a nodule (one exactly centred, the others shifted by a uniform
jitter of at most ``jitter_fraction`` of the side per axis, so the nodule centre stays in the
central region); 0 for a patch centred on a lung voxel whose cube, widened by ``negative_margin_mm``
on each side, holds no nodule voxel (none from a case with ``negatives_ok`` False). A case with
``negative_sites_xyz`` (nodule-free crops of real lung) gives its negatives there instead, cut and
jittered as its positives are.
Intensities: HU over ``window`` = [-1000, 1000] mapped to [0, 1] (clipped), as for the flow prior.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np

from wsnodule_core.data.luna16 import extract_patch
from wsnodule_core.errors import ModelConfigError, SegmentationCancelled
from wsnodule_core.image.window import AIR_HU, FLOW_WINDOW, apply_window, invert_window
from wsnodule_core.io.volume import Volume


@dataclass(frozen=True)
class PatchConfig:
    """How patches are cut (see the module docstring); ``size`` in voxels of the isotropic grid."""

    size: int = 32
    spacing_mm: float = 1.5
    window: tuple[float, float] = FLOW_WINDOW
    positives_per_nodule: int = 2
    jitter_fraction: float = 0.25
    negatives_per_case: int = 4
    negative_margin_mm: float = 4.0
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "window", tuple(float(w) for w in self.window))
        if int(self.size) < 4 or not self.spacing_mm > 0:
            raise ModelConfigError(f"PatchConfig: size must be >= 4 voxels and spacing_mm > 0, got "
                                   f"{self.size} and {self.spacing_mm}.")
        if not self.window[1] > self.window[0]:
            raise ModelConfigError(f"PatchConfig: window must be (low, high) HU with high > low, got "
                                   f"{self.window}.")
        if not 0 <= self.jitter_fraction < 0.5:
            raise ModelConfigError(f"PatchConfig: jitter_fraction must be in [0, 0.5) (a shift of half the "
                                   f"side would put the nodule on the border), got {self.jitter_fraction}.")
        if self.positives_per_nodule < 1 or self.negatives_per_case < 0 or self.negative_margin_mm < 0:
            raise ModelConfigError(
                "PatchConfig: positives_per_nodule must be >= 1, negatives_per_case >= 0 and "
                f"negative_margin_mm >= 0, got {self.positives_per_nodule}, {self.negatives_per_case}, "
                f"{self.negative_margin_mm}.")

    @classmethod
    def for_device(cls, device: str = "cpu", **changes) -> "PatchConfig":
        """The default patch for a device type: 64^3 at 1 mm on CUDA, 32^3 at 1.5 mm elsewhere."""
        base = {"size": 64, "spacing_mm": 1.0} if str(device).startswith("cuda") else {}
        return cls(**{**base, **changes})

    def to_dict(self) -> dict:
        data = asdict(self)
        data["window"] = list(self.window)
        return data


@dataclass(frozen=True, eq=False)
class PatchSet:
    """``n`` patches of ``s^3`` voxels and what belongs to each.

    ``images`` (n, s, s, s) float16 in [0, 1]; ``labels`` (n,) int8; ``masks`` (n, s, s, s) uint16,
    the case's nodule label map cropped (0 background, k = nodule k); ``lungs`` (n, s, s, s) bool;
    ``nodule_labels`` (n,) the label of the nodule a positive is centred on (0 for negatives);
    ``case_ids``; ``origins`` (n, 3) world (x, y, z) mm of voxel [0, 0, 0] and ``directions``
    (n, 3, 3); ``centres_xyz`` (n, 3) world point of the centre voxel ``s // 2``.
    """

    images: np.ndarray
    labels: np.ndarray
    masks: np.ndarray
    lungs: np.ndarray
    nodule_labels: np.ndarray
    case_ids: np.ndarray
    origins: np.ndarray
    directions: np.ndarray
    centres_xyz: np.ndarray
    config: PatchConfig

    def __post_init__(self) -> None:
        n, s = len(self.labels), int(self.config.size)
        for name in ("images", "masks", "lungs"):
            if np.shape(getattr(self, name)) != (n, s, s, s):
                raise ModelConfigError(f"PatchSet: {name} has shape {np.shape(getattr(self, name))}, "
                                       f"expected {(n, s, s, s)} for {n} patches of size {s}.")

    def __len__(self) -> int:
        return int(len(self.labels))

    @property
    def n_positive(self) -> int:
        return int(np.count_nonzero(self.labels == 1))

    @property
    def n_negative(self) -> int:
        return int(np.count_nonzero(self.labels == 0))

    @property
    def nodule_masks(self) -> np.ndarray:
        """(n, s, s, s) bool: every nodule voxel in each patch (the segmentation ground truth)."""
        return np.asarray(self.masks) > 0

    def volume(self, i: int, kind: str = "image") -> Volume:
        """Patch ``i`` as a Volume: ``kind`` "image" ([0, 1] float32), "hu", "mask" (label map) or "lungs"."""
        arrays = {"image": lambda: np.asarray(self.images[i], np.float32),
                  "hu": lambda: invert_window(self.images[i], self.config.window),
                  "mask": lambda: np.asarray(self.masks[i]),
                  "lungs": lambda: np.asarray(self.lungs[i], np.uint8)}
        if kind not in arrays:
            raise ModelConfigError(f"kind must be one of {sorted(arrays)}, got {kind!r}.")
        spacing = (float(self.config.spacing_mm),) * 3
        return Volume(arrays[kind](), spacing, tuple(self.origins[i]), self.directions[i])

    def subset(self, index) -> "PatchSet":
        """The patches at ``index`` (indices or a boolean mask), in that order."""
        index = np.asarray(index)
        index = np.flatnonzero(index) if index.dtype == bool else index.astype(int)
        return PatchSet(*(getattr(self, name)[index] for name in _ARRAYS), config=self.config)

    def describe(self) -> dict:
        return {"n": len(self), "positive": self.n_positive, "negative": self.n_negative,
                "cases": sorted({str(c) for c in self.case_ids}), "config": self.config.to_dict()}

    @staticmethod
    def concatenate(sets: "Sequence[PatchSet]", config: PatchConfig) -> "PatchSet":
        if not sets:
            return empty_patch_set(config)
        for other in sets:
            if other.config.size != config.size or other.config.spacing_mm != config.spacing_mm:
                raise ModelConfigError(f"cannot join patch sets of {other.config.size} voxels at "
                                       f"{other.config.spacing_mm} mm with {config.size} at "
                                       f"{config.spacing_mm} mm.")
        joined = (np.concatenate([getattr(p, name) for p in sets]) for name in _ARRAYS)
        return PatchSet(*joined, config=config)


_ARRAYS = ("images", "labels", "masks", "lungs", "nodule_labels", "case_ids", "origins", "directions",
           "centres_xyz")


def empty_patch_set(config: PatchConfig) -> PatchSet:
    s = int(config.size)
    cube = (0, s, s, s)
    return PatchSet(np.zeros(cube, np.float16), np.zeros(0, np.int8), np.zeros(cube, np.uint16),
                    np.zeros(cube, bool), np.zeros(0, np.int32), np.zeros(0, object), np.zeros((0, 3)),
                    np.zeros((0, 3, 3)), np.zeros((0, 3)), config)


# --- cutting ------------------------------------------------------------------------------------


class _CaseCutter:
    """Cuts isotropic cubes around world points from one case's image, label map and lungs."""

    def __init__(self, case, config: PatchConfig) -> None:
        self.case, self.config = case, config
        self.lungs = case.image.with_array(np.asarray(case.lungs, np.uint8))

    def _box(self, size: int) -> np.ndarray:
        # a crop on the case's own grid that holds the rotated cube (half-diagonal) plus two voxels
        extent = size * self.config.spacing_mm * math.sqrt(3.0)
        return np.ceil(extent / np.asarray(self.case.image.spacing)).astype(int) + 4

    def _cut(self, volume: Volume, centre_xyz, size: int, fill: float, interpolator: str) -> Volume:
        local = extract_patch(volume, centre_xyz, size_vox=self._box(size), fill=fill)
        return extract_patch(local, centre_xyz, size_vox=size, spacing=self.config.spacing_mm, fill=fill,
                             interpolator=interpolator)  # type: ignore[arg-type]

    def mask(self, centre_xyz, size: int) -> Volume:
        return self._cut(self.case.mask, centre_xyz, size, 0, "nearest")

    def patch(self, centre_xyz) -> tuple[Volume, Volume, Volume]:
        s = int(self.config.size)
        image = self._cut(self.case.image, centre_xyz, s, AIR_HU, "linear")
        return image, self.mask(centre_xyz, s), self._cut(self.lungs, centre_xyz, s, 0, "nearest")


def case_patches(case, config: PatchConfig = PatchConfig()) -> PatchSet:
    """The labelled patches of one :class:`~wsnodule_core.data.cases.Case` (see the module docstring)."""
    s, spacing = int(config.size), float(config.spacing_mm)
    cutter = _CaseCutter(case, config)
    rng = np.random.default_rng([int(config.seed), *[ord(c) for c in str(case.case_id)]])
    reach_mm = config.jitter_fraction * s * spacing
    points: list[tuple[np.ndarray, int, int]] = []  # (centre xyz, label, nodule label)
    direction = np.asarray(case.image.direction, float)
    sites = [(record.centre_xyz, 1, int(record.label)) for record in case.nodules]
    sites += [(site, 0, 0) for site in case.negative_sites_xyz]  # nodule-free crops: cut as positives are
    for site, label, nodule in sites:
        for k in range(config.positives_per_nodule):
            shift = np.zeros(3) if k == 0 else rng.uniform(-reach_mm, reach_mm, 3)
            points.append((np.asarray(site, float) + direction @ shift, label, nodule))  # along the patch axes
    if case.negatives_ok and config.negatives_per_case > 0 and not case.negative_sites_xyz:
        lungs = np.flatnonzero(np.asarray(case.lungs, bool))
        margin = int(math.ceil(config.negative_margin_mm / spacing))
        want, found, tries = config.negatives_per_case, 0, 0
        while lungs.size and found < want and tries < 30 * want:
            tries += 1
            index = np.unravel_index(int(lungs[rng.integers(lungs.size)]), case.image.shape)
            centre = case.image.index_to_world(np.asarray(index, float))
            if np.any(np.asarray(cutter.mask(centre, s + 2 * margin).array)):
                continue
            points.append((centre, 0, 0))
            found += 1
    if not points:
        return empty_patch_set(config)
    cut = [cutter.patch(centre) for centre, _, _ in points]
    return PatchSet(
        images=np.stack([apply_window(np.asarray(im.array), config.window)
                         for im, _, _ in cut]).astype(np.float16),
        labels=np.array([p[1] for p in points], np.int8),
        masks=np.stack([np.asarray(m.array) for _, m, _ in cut]).astype(np.uint16),
        lungs=np.stack([np.asarray(lu.array) > 0 for _, _, lu in cut]),
        nodule_labels=np.array([p[2] for p in points], np.int32),
        case_ids=np.full(len(points), str(case.case_id), dtype=object),
        origins=np.array([im.origin for im, _, _ in cut], float),
        directions=np.stack([im.direction for im, _, _ in cut]),
        centres_xyz=np.array([p[0] for p in points], float),
        config=config)


def patches_from_dataset(data, split: str | None, config: PatchConfig = PatchConfig(), *,
                         progress: Callable[[int, int], None] | None = None,
                         cancel: Callable[[], bool] | None = None) -> PatchSet:
    """All patches of a data-set split (``data``: a folder of ``build_dataset`` or a loaded ``Dataset``).

    ``progress(done, total)`` after each case; ``cancel()`` returning True raises
    :class:`~wsnodule_core.errors.SegmentationCancelled`.
    """
    from wsnodule_core.data.dataset import load_dataset

    dataset = load_dataset(data) if isinstance(data, (str, os.PathLike)) else data
    entries = dataset.entries(split)
    sets = []
    for i, entry in enumerate(entries):
        if cancel is not None and cancel():
            raise SegmentationCancelled(f"cutting flow patches was cancelled after {i} case(s).")
        sets.append(case_patches(dataset.load_case(entry), config))
        if progress is not None:
            progress(i + 1, len(entries))
    return PatchSet.concatenate(sets, config)
