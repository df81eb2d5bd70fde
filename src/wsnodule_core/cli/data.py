"""``wsnodule data``: build data sets (placeholder until the data engineer's version lands)."""

from wsnodule_core.cli.planned import register_planned


def register(subparsers) -> None:
    register_planned(subparsers, "data", "Build nodule data sets (phantom, hybrid, lidc, luna16).",
                     "It will write data set folders with a dataset.json.")
