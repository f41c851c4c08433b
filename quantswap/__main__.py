"""``python -m quantswap`` (and ``torchrun -m quantswap``): the command line."""

import sys

from quantswap.cli import main

sys.exit(main())
