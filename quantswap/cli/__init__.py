"""The ``quantswap`` command line: one module per subcommand."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from quantswap.cli import summary as _summary
from quantswap.version import __version__

__all__ = ["main"]

_COMMANDS = {"summary": _summary}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="quantswap", description=__doc__)
    parser.add_argument("--version", action="version", version=f"quantswap {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in _COMMANDS.items():
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args) or 0
    except (ValueError, TypeError) as err:
        print(f"quantswap {args.command}: error: {err}", file=sys.stderr)
        return 2
