"""Argument types the subcommands share."""

from __future__ import annotations

import argparse

import yaml

__all__ = ["key_value"]


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
