"""``python -m quantswap.kernels``: the same as ``quantswap kernels`` (:mod:`quantswap.cli.kernels`)."""

import sys

from quantswap.cli import main

if __name__ == "__main__":
    sys.exit(main(["kernels"]))
