"""``wsnodule segment``: segment nodules in a CT volume (planned: the NAM/R-NAM issue)."""

from wsnodule_core.cli.planned import register_planned

PLAN = (
    "It will read IMAGE (DICOM folder, NIfTI, MetaImage or NRRD), run a trained checkpoint\n"
    "(NAM/R-NAM first) and write the nodule mask in the image's own geometry, with --maps DIR\n"
    "writing the intermediate activation maps too."
)


def register(subparsers) -> None:
    register_planned(subparsers, "segment", "Segment lung nodules in a CT volume with a trained model.", PLAN)
