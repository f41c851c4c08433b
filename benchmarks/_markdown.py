"""Write one benchmark's section into BENCHMARKS.md, leaving the other sections as they are."""

from __future__ import annotations

import platform
import re
from pathlib import Path

import torch

TITLE = "# Benchmarks\n"


def machine() -> str:
    """The machine a number was measured on, as the README and BENCHMARKS.md state it."""
    cpu = platform.processor() or platform.machine()
    return f"{cpu}, {torch.get_num_threads()} threads, torch {torch.__version__} ({platform.system()}, CPU only)"


def update_section(path: str | Path, heading: str, body: str) -> None:
    """Replace the ``## heading`` section of ``path`` with ``body`` (append it when absent)."""
    path = Path(path)
    text = path.read_text() if path.exists() else TITLE
    section = f"## {heading}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(heading)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text).rstrip() + "\n"
    else:
        text = text.rstrip() + "\n\n" + section
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)
