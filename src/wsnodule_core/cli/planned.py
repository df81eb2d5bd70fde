"""Subcommands whose method has not landed yet say what they will do and exit non-zero."""

from __future__ import annotations

import argparse
import sys

NOT_YET_EXIT_CODE = 3


def not_yet(command: str, plan: str) -> int:
    print(
        f"wsnodule {command}: not available in this version yet.\n{plan}",
        file=sys.stderr,
    )
    return NOT_YET_EXIT_CODE


def register_planned(subparsers: argparse._SubParsersAction, name: str, summary: str, plan: str) -> None:
    parser = subparsers.add_parser(name, help=summary, description=f"{summary}\n\n{plan}",
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.set_defaults(func=lambda args: not_yet(name, plan))
