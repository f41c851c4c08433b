"""Benchmark results that outlive a machine: one small JSON record per training run, committed under
``benchmarks/results/<table>/``.

A record holds what the run was (its row label, seed, training images and every option that decides its
result, the swap configs resolved), what it measured (top-1, size, speed, wall time), and where and when
(machine, CPU threads, quantswap commit, date). A benchmark looks a run up by its options before training
it, so a table can be filled over several sessions and machines and an interrupted one continues from its
records; the tables are built from the records alone.

Options added to quantswap after a record was written are matched by their default: a record that lacks
an option matches a run that leaves it at its default, so a new option does not orphan old records, while
a changed default (a different network) does.

Example:
    >>> import tempfile
    >>> store = Records(Path(tempfile.mkdtemp()))
    >>> run = {"lr": 0.001, "swap": [{"method": "react", "block_residual": False}]}
    >>> store.find(run) is None
    True
    >>> path = store.write("react W1/A1", run, {"top1": 90.1})
    >>> store.find({**run, "new_option": 1}, defaults={"new_option": 1})["top1"]
    90.1
    >>> store.find({**run, "lr": 0.002}) is None
    True
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import hashlib
import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from _common import machine

import quantswap
from quantswap import FinetuneConfig

RESULTS = Path(__file__).resolve().parent / "results"
#: Options that say where a run writes or how it is scheduled, not what it computes (and ``method_options``,
#: which the resolved swap configs hold).
_NOT_OPTIONS = ("output", "overwrite", "resume", "device", "workers", "save_every", "push_to_hub", "weights",
                "teacher_weights", "eval_parent", "method_options")
_FINETUNE_DEFAULTS = {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
                      for f in dataclasses.fields(FinetuneConfig)}


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}, "c": [2]}`` -> ``{"a.b": 1, "c.0": 2}`` (lists and tuples by index)."""
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, (list, tuple)):
        items = ((str(i), v) for i, v in enumerate(value))
    else:
        return {prefix: value}
    flat = {}
    for key, item in items:
        flat.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
    return flat or {prefix: value}


def identity(cfg: FinetuneConfig, start: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """What decides a run's result, flattened, and the defaults of those options (``key -> default``).

    ``start`` names what the run starts from in words that hold on any machine (``"parent"``: the
    benchmark's FP parent; ``"mobilenet_v2 imagenet"``), in place of a local weights path. Each stage's
    swap config is resolved (``QuantConfig.to_dict``, its format version left out), so a changed method
    default changes the identity.
    """
    data = {k: v for k, v in cfg.to_dict().items() if k not in _NOT_OPTIONS}
    defaults = {k: v for k, v in _FINETUNE_DEFAULTS.items() if k not in _NOT_OPTIONS}
    data["start"] = start
    if not cfg.is_float:
        swaps = []
        for stage in cfg.stage_configs():
            config = stage.quant_config()
            swaps.append({k: v for k, v in config.to_dict().items() if k != "version"})
            for f in dataclasses.fields(config):
                if f.default is not dataclasses.MISSING:
                    defaults[f"swap.{len(swaps) - 1}.{f.name}"] = f.default
        data["swap"] = swaps
    flat = json.loads(json.dumps(flatten(data), default=str))
    return flat, json.loads(json.dumps(defaults, default=str))


def digest(options: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()[:16]


def same(recorded: dict[str, Any], options: dict[str, Any], defaults: dict[str, Any]) -> bool:
    """Whether a record's options are ``options``: every recorded option equal, and every option the
    record lacks at its default."""
    if any(key not in options or options[key] != value for key, value in recorded.items()):
        return False
    return all(key in recorded or key in defaults and defaults[key] == value for key, value in options.items())


@functools.cache
def commit() -> str:
    """The quantswap commit this process runs (``+dirty`` with uncommitted changes to the package), or
    ``unknown``; read once, when the first record is written or the benchmark starts, so that commits made
    while a long benchmark runs do not name code it did not import."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "quantswap"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


class Records:
    """The records of one table: a folder of ``<digest>.json`` files."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def all(self) -> list[dict[str, Any]]:
        if not self.folder.is_dir():
            return []
        return [json.loads(p.read_text()) for p in sorted(self.folder.glob("*.json"))]

    def find(self, options: dict[str, Any], defaults: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """The newest record of a run with these options, or ``None``."""
        found = [r for r in self.all() if same(r["options"], options, defaults or {})]
        return max(found, key=lambda r: r["date"]) if found else None

    def write(self, row: str, options: dict[str, Any], measured: dict[str, Any], **where: Any) -> Path:
        """Write a record atomically (a temporary file renamed into place) and return its path. ``where``
        overrides the machine, commit and date (records carried over from an older format)."""
        record = {"row": row, "options": options, **measured, "machine": machine(), "commit": commit(),
                  "quantswap_version": quantswap.__version__,
                  "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), **where}
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{digest(options)}.json"
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=".", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(record, indent=1, sort_keys=False) + "\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
        return path
