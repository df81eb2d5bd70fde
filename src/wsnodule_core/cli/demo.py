"""``wsnodule demo``: the main job on built-in data (placeholder)."""

from wsnodule_core.cli.planned import register_planned


def register(subparsers) -> None:
    register_planned(subparsers, "demo", "Run the end-to-end demo on built-in data.", "")
