"""How the CLI shows the library's log: ``quantswap`` INFO messages on stdout, written through tqdm
so they never break a progress bar; under ``torchrun`` only rank 0 speaks."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator

from tqdm.contrib.logging import logging_redirect_tqdm

__all__ = ["console_logging"]


@contextlib.contextmanager
def console_logging() -> Iterator[None]:
    """Within the block, the ``quantswap`` logger prints its messages (no prefix) to stdout."""
    logger = logging.getLogger("quantswap")
    saved = logger.level, logger.propagate, list(logger.handlers)
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.handlers = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO if os.environ.get("RANK", "0") == "0" else logging.WARNING)
    try:
        with logging_redirect_tqdm(loggers=[logger]):
            yield
    finally:
        logger.setLevel(saved[0])
        logger.propagate = saved[1]
        logger.handlers = saved[2]
