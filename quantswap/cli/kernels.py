"""``quantswap kernels``: build the packed kernels now (once per install; ``make install`` runs it) and say which run."""

from __future__ import annotations

import argparse

__all__ = ["add_parser", "run"]


def add_parser(sub) -> None:
    p = sub.add_parser("kernels", help=__doc__.split(":", 1)[1].strip().removesuffix("."),
                       description="Build the native kernels (about 30 s, cached; later calls only load them) and "
                                   "print which the packed ops run: native with its instruction set, or the "
                                   "pure-PyTorch reference and why. Exit status 1 for the reference.")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from quantswap import kernels

    report = kernels.load()
    print(report)
    return 0 if report.backend == "native" else 1
