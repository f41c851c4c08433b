import sys

from quantswap.cli import main

sys.exit(main())
