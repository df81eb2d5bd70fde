"""npe2 writers: a Labels layer to NIfTI, NRRD or DICOM-SEG, with the geometry it is shown with.

napari calls a single-layer writer as ``writer(path, data, meta)`` where ``meta`` holds the layer's
attributes (``scale``, ``translate``, ``rotate``, ``shear``, ``affine``, ``metadata``, ...). The
geometry written is the layer's own transform, so the file lines up with the CT in other viewers
exactly where napari shows it. Files are never overwritten.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from wsnodule_core.errors import GeometryMismatchError, NotDicomReferenceError, OutputExistsError
from wsnodule_core.io import Volume, write_dicom_seg, write_mask
from napari_wsnodule._geometry import VOLUME_KEY, volume_of_layer
from napari_wsnodule._layers import SOURCE_KEY

GEOMETRY_ATOL_MM = 1e-3  # labels and CT must agree this closely for a DICOM-SEG to reference its slices


class _LayerView:
    """The parts of a layer that :func:`volume_of_layer` reads, rebuilt from a writer's ``meta``."""

    def __init__(self, data: Any, meta: dict[str, Any]) -> None:
        from napari.utils.transforms import Affine

        if meta.get("multiscale") and isinstance(data, (list, tuple)):
            data = data[0]  # the full-resolution level
        self.data = np.asarray(data)
        self.name = str(meta.get("name") or "labels")
        self.metadata = dict(meta.get("metadata") or {})
        ndim = self.data.ndim
        self.scale = np.asarray(meta.get("scale", np.ones(ndim)), dtype=float)
        self.translate = np.asarray(meta.get("translate", np.zeros(ndim)), dtype=float)
        self.rotate = np.asarray(meta.get("rotate", np.eye(ndim)), dtype=float)
        self.shear = np.asarray(meta.get("shear", np.zeros(ndim * (ndim - 1) // 2)), dtype=float)
        affine = meta.get("affine")
        if affine is None:
            affine = np.eye(ndim + 1)
        matrix = getattr(affine, "affine_matrix", affine)
        self.affine = Affine(affine_matrix=np.asarray(matrix, dtype=float))


def _with_extension(path: str, extensions: tuple[str, ...]) -> Path:
    """``path`` with the first of ``extensions`` added when it ends with none of them."""
    if any(path.lower().endswith(ext) for ext in extensions):
        return Path(path)
    return Path(path + extensions[0])


def _refuse_overwrite(path: Path) -> OutputExistsError:
    return OutputExistsError(
        f"{path} already exists and wsnodule never overwrites a file. Save the mask under another "
        "name (or move the old file away first)."
    )


def labels_volume(data: Any, meta: dict[str, Any]) -> Volume:
    """The labels as a Volume with the geometry of the layer they come from."""
    return volume_of_layer(_LayerView(data, meta))


def _write_file(path: str, data: Any, meta: dict[str, Any], extensions: tuple[str, ...]) -> list[str]:
    target = _with_extension(path, extensions)
    volume = labels_volume(data, meta)
    try:
        written = write_mask(volume.array, volume, target)
    except OutputExistsError as error:
        raise _refuse_overwrite(target) from error
    return [str(written)]


def write_labels_nifti(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """Save a Labels layer as a NIfTI mask (.nii.gz or .nii) with the layer's geometry."""
    return _write_file(path, data, meta, (".nii.gz", ".nii"))


def write_labels_nrrd(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """Save a Labels layer as an NRRD mask with the layer's geometry."""
    return _write_file(path, data, meta, (".nrrd",))


def _dicom_volume(candidate: Any) -> Volume | None:
    if isinstance(candidate, Volume) and candidate.metadata.dicom_files:
        return candidate
    return None


def _viewer_dicom_images(labels: Volume) -> list[Volume]:
    """DICOM-read CT volumes of the open viewer that lie on the same grid as ``labels``."""
    try:
        import napari
        from napari.layers import Image

        viewer = napari.current_viewer()
    except Exception:  # no Qt viewer (a script): nothing to look through
        return []
    if viewer is None:
        return []
    found = []
    for layer in viewer.layers:
        if isinstance(layer, Image):
            volume = _dicom_volume(layer.metadata.get(VOLUME_KEY))
            if volume is not None and volume.same_geometry(labels, atol=GEOMETRY_ATOL_MM):
                found.append(volume)
    return found


def dicom_reference(labels: Volume, layer_metadata: dict[str, Any], name: str) -> Volume:
    """The CT (read from DICOM) that ``labels`` were drawn on, for the DICOM-SEG to reference.

    Looked up in this order: the Volume stored with the labels layer; the layer it was computed
    from (``SOURCE_KEY``); the one DICOM image layer of the viewer on the same grid.
    """
    source_layer = layer_metadata.get(SOURCE_KEY)
    source_meta = getattr(source_layer, "metadata", {}) or {}
    for candidate in (layer_metadata.get(VOLUME_KEY), source_meta.get(VOLUME_KEY)):
        volume = _dicom_volume(candidate)
        if volume is not None:
            return volume
    in_viewer = _viewer_dicom_images(labels)
    if len(in_viewer) == 1:
        return in_viewer[0]
    if len(in_viewer) > 1:
        raise NotDicomReferenceError(
            f"the labels layer {name!r} lines up with {len(in_viewer)} DICOM series in the viewer, so it is "
            "not clear which one the DICOM-SEG should reference. Close the other series and save again."
        )
    raise NotDicomReferenceError(
        f"the labels layer {name!r} is not linked to a CT read from a DICOM series, so a DICOM-SEG cannot "
        "reference its slices. Save it as NIfTI (.nii.gz) or NRRD instead, or open the DICOM series folder "
        "with wsnodule (Load CT) and draw or compute the labels on that image."
    )


def write_labels_dicom_seg(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """Save a Labels layer as a DICOM-SEG that references the DICOM CT series it was drawn on."""
    target = _with_extension(path, (".dcm",))
    labels = labels_volume(data, meta)
    name = str(meta.get("name") or "labels")
    reference = dicom_reference(labels, dict(meta.get("metadata") or {}), name)
    if not labels.same_geometry(reference, atol=GEOMETRY_ATOL_MM):
        raise GeometryMismatchError(
            f"the labels layer {name!r} (shape {labels.shape}, spacing {labels.spacing}, origin "
            f"{labels.origin}) does not lie on the grid of its DICOM CT (shape {reference.shape}, spacing "
            f"{reference.spacing}, origin {reference.origin}); it was moved, cropped or resampled. Put it "
            "back on the CT's grid, or save it as NIfTI/NRRD."
        )
    try:
        written = write_dicom_seg(labels.array, reference, target)
    except OutputExistsError as error:
        raise _refuse_overwrite(target) from error
    return [str(written)]
