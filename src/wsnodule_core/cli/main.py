"""Entry point of the ``wsnodule`` command: one module per subcommand, each with ``register``."""

from __future__ import annotations

import argparse
import re
import sys
import warnings
from typing import Sequence

from wsnodule_core import __version__
from wsnodule_core.cli import data, demo, evaluate, export, models, segment, train
from wsnodule_core.errors import WsnoduleError, WsnoduleWarning

SUBCOMMANDS = (demo, data, train, segment, export, evaluate, models)


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


# the library's advice names Python arguments; on the command line the same advice is a flag
_CLI_WORDS = (
    (re.compile(r"overwrite=True(?: \(--overwrite\))?"), "--overwrite"),
    (re.compile(r"resume=True(?: \(--resume\))?"), "--resume"),
    (re.compile(r"series_uid=\.\.\."), "--series-uid UID"),
)


def cli_message(error: BaseException) -> str:
    """An error's message with the library's Python-argument advice given as command-line flags."""
    text = str(error)
    for pattern, flag in _CLI_WORDS:
        text = pattern.sub(flag, text)
    return text


def _show_warning(command: str, fallback):
    """``warnings.showwarning`` that prints wsnodule's own warnings as one plain line."""
    def show(message, category, filename, lineno, file=None, line=None):
        if not issubclass(category, WsnoduleWarning):
            return fallback(message, category, filename, lineno, file, line)
        text = " ".join(str(message).split())
        print(f"wsnodule {command}: warning: {text}", file=sys.stderr if file is None else file)
    return show


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always", WsnoduleWarning)
            warnings.showwarning = _show_warning(args.command, warnings.showwarning)
            return int(args.func(args) or 0)
    except WsnoduleError as error:
        print(f"wsnodule {args.command}: error: {cli_message(error)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"wsnodule {args.command}: cancelled", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
