"""Entry point of the ``wsnodule`` command: one module per subcommand, each with ``register``."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from wsnodule_core import __version__
from wsnodule_core.cli import data, demo, evaluate, models, segment, train
from wsnodule_core.errors import WsnoduleError

SUBCOMMANDS = (demo, data, train, segment, evaluate, models)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wsnodule",
        description="Weakly supervised lung nodule segmentation in chest CT.",
    )
    parser.add_argument("--version", action="version", version=f"wsnodule {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in SUBCOMMANDS:
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except WsnoduleError as error:
        print(f"wsnodule {args.command}: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"wsnodule {args.command}: cancelled", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
