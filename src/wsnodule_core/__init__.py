"""wsnodule core: weakly supervised lung nodule segmentation in chest CT, without napari or Qt.

The handful of calls a scripted user needs, importable from here (each loads on first use, so
``import wsnodule_core`` stays light):

- :func:`read_volume`: a CT (DICOM folder or file, NIfTI, NRRD, MetaImage) as a Volume with its geometry;
- :func:`load_segmenter`: any trained checkpoint as a segmenter, ``segmenter.segment(ct).mask``;
- :func:`write_mask`: a mask on the CT's grid to NIfTI, NRRD or MetaImage;
- :func:`build_dataset`: a data set folder (phantom or hybrid cases) for training and evaluation;
- :func:`evaluate_dataset`: segmenters on a data set split, the NAM paper's Table 1 and Fig. 3.

Example
-------
>>> from wsnodule_core import load_segmenter, read_volume, write_mask
>>> ct = read_volume("scan/")                                     # doctest: +SKIP
>>> result = load_segmenter("runs/nam1/best.pt").segment(ct)       # doctest: +SKIP
>>> write_mask(result.mask, ct, "nodules.nii.gz")                  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("napari-wsnodule")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

_EXPORTS = {
    "read_volume": "wsnodule_core.io.readers",
    "write_mask": "wsnodule_core.io.writers",
    "load_segmenter": "wsnodule_core.segmentation.load",
    "build_dataset": "wsnodule_core.data.builders",
    "evaluate_dataset": "wsnodule_core.evaluation",
}
__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'wsnodule_core' has no attribute {name!r}")
