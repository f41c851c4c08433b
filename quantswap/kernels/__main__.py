"""``python -m quantswap.kernels``: build the native kernels now, as ``make install`` does, and say which
kernels the packed ops will run (the build is cached, so a later call only loads them).

Example (a shell)::

    $ python -m quantswap.kernels
    native (avx512-vpopcntdq, 2 threads): ~/.cache/torch_extensions/.../quantswap_kernels_<key>.so
"""

import logging
import sys

from quantswap import kernels

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # the one line that says it is building
    report = kernels.load()
    print(report)
    sys.exit(0 if report.backend == "native" else 1)
