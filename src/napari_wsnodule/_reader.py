"""npe2 reader: DICOM series folders (or one of their files), NIfTI, MetaImage and NRRD, with geometry."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from pydicom.misc import is_dicom

from wsnodule_core.errors import MultipleSeriesError
from wsnodule_core.image.window import LUNG_VIEW_WINDOW
from wsnodule_core.io import read_volume
from wsnodule_core.io.naming import VolumeName, volume_name
from wsnodule_core.io.volume import Volume
from napari_wsnodule._geometry import VOLUME_KEY, layer_geometry

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".mhd", ".mha", ".nrrd", ".nhdr")
NAME_KEY = "wsnodule_name"  # layer.metadata: the VolumeName a CT layer was named with (derived layers use .short)
LUNG_WINDOW = LUNG_VIEW_WINDOW  # every CT layer opens in it
DICOM_PROBE_FILES = 20  # a folder is taken as DICOM when one of its first files is

LayerData = tuple[Any, dict[str, Any], str]


def _is_dicom_file(path: Path) -> bool:
    try:
        return path.is_file() and not path.name.startswith(".") and is_dicom(path)
    except OSError:
        return False


def _is_dicom_folder(path: Path) -> bool:
    try:
        files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    except OSError:
        return False
    return any(_is_dicom_file(p) for p in files[:DICOM_PROBE_FILES])


def _is_volume_path(path: Path) -> bool:
    if path.is_dir():
        return _is_dicom_folder(path)
    return any(path.name.lower().endswith(s) for s in VOLUME_SUFFIXES) or _is_dicom_file(path)


def get_reader(path: str | list[str]) -> Callable[[str | list[str]], list[LayerData]] | None:
    """Return :func:`read_layers` when ``path`` looks like a volume wsnodule reads, else None."""
    paths = [path] if isinstance(path, str) else list(path)
    if not paths or not all(_is_volume_path(Path(p)) for p in paths):
        return None
    return read_layers


def volume_layer_data(volume: Volume, name: str | VolumeName) -> LayerData:
    """An image layer for a CT volume: named ``name.full`` (the VolumeName kept in the metadata for the
    layers derived from it), lung window (CT only), geometry kept, the Volume in the metadata."""
    given = name if isinstance(name, VolumeName) else VolumeName(name, name)
    kwargs: dict[str, Any] = {"name": given.full, "metadata": {VOLUME_KEY: volume, NAME_KEY: given},
                              **layer_geometry(volume)}
    if volume.metadata.is_ct:
        kwargs["contrast_limits"] = LUNG_WINDOW
    return (volume.array, kwargs, "image")


def read_layers(path: str | list[str]) -> list[LayerData]:
    paths = [path] if isinstance(path, str) else list(path)
    layers = []
    for p in paths:
        try:
            volume = read_volume(p)
        except MultipleSeriesError as error:
            raise MultipleSeriesError(
                f"{error}\nIn napari, open this folder with the Load CT widget (Plugins > wsnodule > Load "
                "CT), which lets you pick the series."
            ) from error
        source = volume.metadata.source_path if volume.metadata.source_format == "dicom" else None
        layers.append(volume_layer_data(volume, volume_name(volume.metadata, fallback=source or p)))
    return layers
