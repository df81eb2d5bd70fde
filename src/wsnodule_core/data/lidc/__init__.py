"""LIDC-IDRI through pylidc: scans, nodules, reader masks, slice labels and nodule shapes.

pylidc is imported only through :func:`compat.import_pylidc` (which fixes its numpy and
setuptools problems). Masks are ``(z, y, x)``; see ``docs/lidc_luna16.md``.
"""

from wsnodule_core.data.lidc.annotations import (
    RATING_NAMES,
    LidcNodule,
    ScanInfo,
    cluster_nodules,
    get_scan,
    list_scans,
    select_nodules,
)
from wsnodule_core.data.lidc.compat import check_dicom_root, import_pylidc, lidc_dicom_path
from wsnodule_core.data.lidc.consensus import (
    MergedMask,
    NoduleSize,
    equivalent_diameter_mm,
    merge_reader_masks,
    nodule_size,
    volume_mm3,
)
from wsnodule_core.data.lidc.labels import IGNORE, NEGATIVE, POSITIVE, SliceLabels, slice_labels
from wsnodule_core.data.lidc.scan import (
    AnnotationMask,
    LidcGrid,
    LidcScanData,
    align_masks,
    load_lidc_scan,
    reader_masks,
    scan_grid,
)
from wsnodule_core.data.lidc.shapes import (
    LidcStatistics,
    lidc_database_statistics,
    lidc_nodule_shapes,
    nodule_shape,
)

__all__ = [
    "IGNORE",
    "NEGATIVE",
    "POSITIVE",
    "RATING_NAMES",
    "AnnotationMask",
    "LidcGrid",
    "LidcNodule",
    "LidcScanData",
    "LidcStatistics",
    "MergedMask",
    "NoduleSize",
    "ScanInfo",
    "SliceLabels",
    "align_masks",
    "cluster_nodules",
    "equivalent_diameter_mm",
    "get_scan",
    "import_pylidc",
    "lidc_database_statistics",
    "lidc_dicom_path",
    "check_dicom_root",
    "lidc_nodule_shapes",
    "list_scans",
    "load_lidc_scan",
    "merge_reader_masks",
    "nodule_shape",
    "nodule_size",
    "reader_masks",
    "scan_grid",
    "select_nodules",
    "slice_labels",
    "volume_mm3",
]
