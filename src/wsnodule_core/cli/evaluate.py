"""``wsnodule evaluate``: the papers' tables on a data set folder (planned: the NAM/R-NAM issue)."""

from wsnodule_core.cli.planned import register_planned

PLAN = (
    "It will segment every test case of a data set folder with trained checkpoints and write the\n"
    "NAM paper's Table 1 and Fig. 3 (JSON, Markdown, PNG) with the metrics of wsnodule_core.metrics."
)


def register(subparsers) -> None:
    register_planned(subparsers, "evaluate", "Evaluate trained models on a data set folder.", PLAN)
