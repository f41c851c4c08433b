"""Argument types the subcommands share."""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

__all__ = ["key_value", "load_model"]


def key_value(text: str) -> tuple[str, object]:
    """``"t_min=0.01"`` -> ``("t_min", 0.01)``; the value is read as YAML (numbers, true/false, lists).

    Example:
        >>> key_value("keep-downsample=false")
        ('keep_downsample', False)
    """
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.replace("-", "_"), yaml.safe_load(value)


def load_model(name: str, revision: str | None = None, **kwargs):
    """The model of a run folder (its ``model/``), a checkpoint folder or a Hub id ``ORG/NAME``."""
    import quantswap

    source = Path(name)
    if (source / "model" / "config.json").is_file():  # a run folder written by quantswap finetune
        source = source / "model"
    return quantswap.from_pretrained(source if source.is_dir() else name, revision=revision, **kwargs)
