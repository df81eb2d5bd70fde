"""Lung-centred axial slice sets with slice-level labels, in memory (the NAM classifier's and the
U-Net baseline's training data).

Each case's slices are cropped around the lungs (:func:`wsnodule_core.data.lung.lung_crop`),
optionally resampled to a pixel spacing, and normalised to [0, 1] with
:func:`~wsnodule_core.image.window.apply_window`. Positive slices hold at least
``min_nodule_area_mm2`` of nodule; negatives hold no nodule voxel and enough lung; slices with
a smaller nodule are ambiguous and left out (the paper keeps only clear slices). Images are
kept as float16 and masks as uint8 to save memory; the nodule masks ride along for evaluation.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import numpy as np

from wsnodule_core.errors import GeometryMismatchError, TrainingDataError
from wsnodule_core.image.window import NAM_WINDOW, apply_window
from wsnodule_core.io.volume import Volume


@dataclass(frozen=True)
class SliceConfig:
    """How slices are cut: crop ``size`` pixels at ``pixel_spacing_mm`` (None = the scan's own spacing,
    as in the paper's 384 x 384 crop), the HU ``window``, the positive rule and the lung rule."""

    size: int = 384
    pixel_spacing_mm: float | None = None
    window: tuple[float, float] = NAM_WINDOW
    min_nodule_area_mm2: float = 0.0
    min_lung_fraction: float = 0.1  # of the case's largest lung cross-section, for negatives
    use_unsafe_negatives: bool = False  # take negatives from cases marked negatives_ok=False
    negatives_per_case: int | None = None  # keep at most this many negatives per case (drawn by case id)

    def to_dict(self) -> dict:
        return {**asdict(self), "window": list(self.window)}

    @classmethod
    def from_dict(cls, data: dict) -> "SliceConfig":
        values = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        if "window" in values:
            values["window"] = tuple(values["window"])
        return cls(**values)


@dataclass(frozen=True, eq=False)
class SliceSet:
    """Labelled slices: ``images`` (n, H, W) float16 in [0, 1], ``labels`` (n,) int8, ``masks``
    (n, H, W) uint8 nodule masks (all 0 where unknown), and where each came from."""

    images: np.ndarray
    labels: np.ndarray
    masks: np.ndarray
    case_ids: np.ndarray
    slice_index: np.ndarray
    spacing_mm: np.ndarray  # (n, 2) in-plane pixel spacing of each crop
    config: SliceConfig = field(default_factory=SliceConfig)

    def __len__(self) -> int:
        return int(len(self.labels))

    @property
    def n_positive(self) -> int:
        return int(np.count_nonzero(self.labels == 1))

    @property
    def n_negative(self) -> int:
        return int(np.count_nonzero(self.labels == 0))

    def subset(self, indices: Sequence[int] | np.ndarray) -> "SliceSet":
        idx = np.asarray(indices, dtype=np.int64)
        return SliceSet(self.images[idx], self.labels[idx], self.masks[idx], self.case_ids[idx],
                        self.slice_index[idx], self.spacing_mm[idx], self.config)

    def split(self, val_fraction: float = 0.2, seed: int = 0) -> tuple["SliceSet", "SliceSet"]:
        """(train, val), each class split in ``val_fraction`` at random; for one volume in memory,
        where no subject-level split exists (neighbouring slices make the validation optimistic)."""
        if not 0.0 < val_fraction < 1.0:
            raise TrainingDataError(f"val_fraction must lie strictly between 0 and 1, got {val_fraction}.")
        rng = np.random.default_rng(seed)
        val = []
        for label in (0, 1):
            members = rng.permutation(np.flatnonzero(self.labels == label))
            val.extend(members[: int(round(val_fraction * len(members)))].tolist())
        is_val = np.zeros(len(self), bool)
        is_val[val] = True
        return self.subset(np.flatnonzero(~is_val)), self.subset(np.flatnonzero(is_val))

    def describe(self) -> dict:
        return {"n_slices": len(self), "n_positive": self.n_positive, "n_negative": self.n_negative,
                "n_cases": int(len(np.unique(self.case_ids))), "image_size": list(self.images.shape[1:]),
                "slice_config": self.config.to_dict()}

    @staticmethod
    def concatenate(sets: Sequence["SliceSet"], config: SliceConfig | None = None) -> "SliceSet":
        sets = [s for s in sets if len(s)]
        config = config or (sets[0].config if sets else SliceConfig())
        if not sets:
            n = config.size
            return SliceSet(np.zeros((0, n, n), np.float16), np.zeros(0, np.int8), np.zeros((0, n, n), np.uint8),
                            np.zeros(0, dtype=object), np.zeros(0, np.int32), np.zeros((0, 2), np.float32), config)
        return SliceSet(*(np.concatenate([getattr(s, k) for s in sets]) for k in
                          ("images", "labels", "masks", "case_ids", "slice_index", "spacing_mm")), config)


def slices_from_arrays(case_id: str, image: Volume, lungs: np.ndarray, *, config: SliceConfig,
                       nodule_mask: np.ndarray | None = None, slice_labels: np.ndarray | None = None,
                       negatives_ok: bool = True, unsafe_slices: Sequence[int] = ()) -> SliceSet:
    """The labelled slices of one volume.

    Give ``nodule_mask`` (voxel labels on ``image``'s grid; slice labels then follow the area
    rule) or ``slice_labels`` (z,) of 0/1 (weak labels only: masks stay empty, and -1 marks a
    slice to leave out). ``unsafe_slices`` give no negatives (they may hold an unlabelled lesion).
    With ``config.negatives_per_case`` at most that many negatives are kept, drawn with a seed from
    ``case_id`` (cases of one background then keep different slices of it).
    """
    from wsnodule_core.data.lung import crop_mask, lung_crop

    lungs = np.asarray(lungs, bool)
    if lungs.shape != image.shape:
        raise GeometryMismatchError(f"case {case_id}: lung mask shape {lungs.shape} differs from image {image.shape}.")
    crop = lung_crop(image, lungs, size=config.size, pixel_spacing_mm=config.pixel_spacing_mm)
    lung_crop_mask = crop_mask(lungs, crop)
    lung_area = lung_crop_mask.sum(axis=(1, 2)).astype(float)
    has_lung = lung_area >= config.min_lung_fraction * max(lung_area.max(), 1.0)
    if nodule_mask is not None:
        nodules = np.asarray(nodule_mask) > 0
        if nodules.shape != image.shape:
            raise GeometryMismatchError(f"case {case_id}: nodule mask shape {nodules.shape} differs from image "
                                        f"{image.shape}.")
        area = nodules.sum(axis=(1, 2)) * float(image.spacing[1] * image.spacing[2])
        labels = np.where(area == 0, 0, np.where(area >= max(config.min_nodule_area_mm2, 1e-9), 1, -1))
        masks = crop_mask(nodules, crop).astype(np.uint8)
    elif slice_labels is not None:
        labels = np.asarray(slice_labels).astype(int).ravel()
        if labels.shape != (image.shape[0],):
            raise GeometryMismatchError(f"case {case_id}: {labels.size} slice labels for {image.shape[0]} slices.")
        masks = np.zeros(crop.volume.shape, np.uint8)
    else:
        raise TrainingDataError(f"case {case_id}: give a nodule mask or slice labels.")
    keep_neg = (labels == 0) & has_lung & (negatives_ok or config.use_unsafe_negatives)
    unsafe = [int(z) for z in unsafe_slices if 0 <= int(z) < len(labels)]
    if unsafe and not config.use_unsafe_negatives:
        keep_neg[unsafe] = False
    if config.negatives_per_case is not None and keep_neg.sum() > config.negatives_per_case:
        rng = np.random.default_rng(list(case_id.encode()) or [0])
        chosen = rng.choice(np.flatnonzero(keep_neg), size=config.negatives_per_case, replace=False)
        keep_neg[:] = False
        keep_neg[chosen] = True
    keep = np.flatnonzero((labels == 1) | keep_neg)
    images = apply_window(np.asarray(crop.volume.array)[keep], config.window).astype(np.float16)
    spacing = np.tile(np.asarray(crop.volume.spacing[1:], np.float32), (len(keep), 1))
    return SliceSet(images, labels[keep].astype(np.int8), masks[keep], np.full(len(keep), case_id, dtype=object),
                    keep.astype(np.int32), spacing, config)


def slices_from_case(case, config: SliceConfig) -> SliceSet:
    """The labelled slices of a :class:`wsnodule_core.data.cases.Case`."""
    return slices_from_arrays(case.case_id, case.image, case.lungs, config=config, nodule_mask=case.mask.array,
                              negatives_ok=bool(case.negatives_ok), unsafe_slices=case.unsafe_slices)


def slices_from_dataset(dataset, split: str | None, config: SliceConfig, *,
                        progress: Callable[[int, int], None] | None = None,
                        cancel: Callable[[], bool] | None = None) -> SliceSet:
    """The slices of every case of ``split`` of a data set (a folder or a loaded ``Dataset``)."""
    from wsnodule_core.data.dataset import load_dataset

    if isinstance(dataset, (str, os.PathLike)):
        dataset = load_dataset(dataset)
    entries = dataset.entries(split)
    parts = []
    for done, entry in enumerate(entries):
        if cancel is not None and cancel():
            break
        parts.append(slices_from_case(dataset.load_case(entry), config))
        if progress is not None:
            progress(done + 1, len(entries))
    return SliceSet.concatenate(parts, config)


def slices_from_volumes(items: Sequence[tuple], config: SliceConfig) -> SliceSet:
    """Slices from volumes in memory (e.g. the one open in napari).

    Each item is ``(volume, labels)`` or ``(volume, labels, lungs)``: ``labels`` is a nodule
    mask on the volume's grid (array or Volume) or per-slice labels (z,) of 0/1 (-1 = skip);
    lungs are segmented with :func:`wsnodule_core.data.lung.segment_lungs` when not given.
    """
    parts = []
    for i, item in enumerate(items):
        volume, labels = item[0], item[1]
        lungs = item[2] if len(item) > 2 else None
        if lungs is None:
            from wsnodule_core.data.lung import segment_lungs

            lungs = segment_lungs(volume).lungs
        lungs = np.asarray(lungs.array if isinstance(lungs, Volume) else lungs, bool)
        array = np.asarray(labels.array if isinstance(labels, Volume) else labels)
        kwargs = {"slice_labels": array} if array.ndim == 1 else {"nodule_mask": array}
        parts.append(slices_from_arrays(f"volume_{i}", volume, lungs, config=config, **kwargs))
    return SliceSet.concatenate(parts, config)
