"""wsnodule core: weakly supervised lung nodule segmentation in chest CT, without napari or Qt."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("napari-wsnodule")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
