"""The ``quantswap`` command line: one module per subcommand."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from quantswap.cli import evaluate as _evaluate
from quantswap.cli import export as _export
from quantswap.cli import finetune as _finetune
from quantswap.cli import hub as _hub
from quantswap.cli import kernels as _kernels
from quantswap.cli import plot as _plot
from quantswap.cli import summary as _summary
from quantswap.version import __version__

__all__ = ["main"]

_COMMANDS = (_finetune, _evaluate, _summary, _plot, _hub, _export, _kernels)  # each adds its subcommand(s) with add_parser


DESCRIPTION = """Binarize or ternarize a pretrained PyTorch vision model: fine-tune it from its float weights
(finetune), measure it (eval, summary, plot), and ship it small (push, download, export to ONNX).
Run `quantswap COMMAND --help` for a command's options and examples."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="quantswap", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"quantswap {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in _COMMANDS:
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args) or 0
    except (ValueError, TypeError, OSError, ImportError) as err:
        print(f"quantswap {args.command}: error: {err}", file=sys.stderr)
        return 2
