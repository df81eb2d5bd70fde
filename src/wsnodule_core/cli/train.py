"""``wsnodule train``: train a model from weak labels (planned: the NAM/R-NAM issue)."""

from wsnodule_core.cli.planned import register_planned

PLAN = (
    "It will train the NAM multi-GAP slice classifier (and later the PW4MedSeg transformer and the\n"
    "flow-guidance predictors) on a data set folder written by `wsnodule data`, from slice-level\n"
    "labels only, writing self-describing checkpoints that can be resumed."
)


def register(subparsers) -> None:
    register_planned(subparsers, "train", "Train a model from weak labels on a data set folder.", PLAN)
