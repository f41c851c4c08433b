"""What the benchmarks share: the machine line, swapping a model by a variant's options, and writing
one section of BENCHMARKS.md while leaving the others as they are."""

from __future__ import annotations

import argparse
import ctypes
import datetime
import json
import platform
import re
from pathlib import Path

import torch
from torch import nn

import quantswap

TITLE = "# Benchmarks\n"


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else the architecture."""
    info = Path("/proc/cpuinfo")
    names = [line.split(":", 1)[1].strip() for line in (info.read_text().splitlines() if info.exists() else [])
             if line.startswith("model name")]
    return names[0] if names else (platform.processor() or platform.machine())


def machine(cuda: bool = False) -> str:
    """The machine a number was measured on, as the README and BENCHMARKS.md state it."""
    cpu = cpu_name()
    if cuda:
        gpus = f"{torch.cuda.device_count()} x {torch.cuda.get_device_name()}"
        return f"{gpus}, CUDA {torch.version.cuda}, torch {torch.__version__}, {cpu} ({platform.system()})"
    threads = torch.get_num_threads()
    return f"{cpu}, {threads} thread{'s' * (threads != 1)}, torch {torch.__version__} ({platform.system()}, CPU only)"


#: Every method variant the benchmarks compare, from the registry: label ("irnet W1/A32") -> options of
#: ``quantswap finetune`` / the swap (``method`` and the method config's fields).
VARIANTS = {v.config().label: {"method": v.method, **v.options} for v in quantswap.list_variants(benchmark=True)}

#: Every registered variant, for the speed and memory benchmarks (one row per label: mcdonnell's two
#: variants differ only in the recipe, not in the layers).
ALL_VARIANTS = {v.config().label: {"method": v.method, **v.options} for v in quantswap.list_variants()}


def keep_freed_memory() -> bool:
    """glibc returns freed blocks above its mmap threshold (and a heap top above its trim threshold)
    to the OS, so every forward faults in fresh pages for its big tensors; raise both thresholds to
    1 GiB (what MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ do). False where this is not glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return all(libc.mallopt(option, 1 << 30) == 1 for option in (m_trim_threshold, m_mmap_threshold))


def convert(model: nn.Module, options: dict) -> nn.Module:
    """Swap ``model`` with a variant's options."""
    return quantswap.swap(model, quantswap.config_for(**options))


def meets(ratio: float, goal: float) -> bool:
    """Whether a ratio meets its goal as the tables print it (two decimals): 1.204 shows as 1.20, within 1.2."""
    return round(ratio, 2) <= goal


def arguments(doc: str, **numbers: int) -> argparse.Namespace:
    """A benchmark's command line: ``--output FILE`` and an integer option per ``numbers`` (name=default);
    seeds torch so every run starts alike."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, default in numbers.items():
        parser.add_argument(f"--{name}", type=int, default=default)
    parser.add_argument("--output", default=None, help="write the markdown section to this file")
    args = parser.parse_args()
    torch.manual_seed(0)
    return args


def publish(lines: list[str], heading: str, output: str | None) -> None:
    """Print a benchmark's section and, given ``output``, write it there under ``## heading``."""
    text = "\n".join(lines) + "\n"
    print(text)
    if output:
        update_section(output, heading, text)


RESULTS = Path(__file__).resolve().parent / "results"


def save_summary(name: str, data: dict) -> Path:
    """Write a benchmark's headline numbers to ``benchmarks/results/<name>.json`` (with the machine and the
    date), atomically: what ``benchmarks/choosing.py`` builds docs/choosing.md from."""
    path = RESULTS / f"{name}.json"
    record = {"machine": machine(), "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              **data}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    tmp.replace(path)
    return path


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
