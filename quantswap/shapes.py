"""One input-size convention for every entry point (``summary``, ``export_onnx``, ``--input-size``): an int
(a square image), ``(H, W)``, ``(C, H, W)`` or ``(N, C, H, W)``, as timm and torchinfo users type them.

Example:
    >>> from quantswap.shapes import input_shape
    >>> input_shape(224), input_shape((160, 128), channels=1), input_shape((8, 3, 32, 32))
    ((1, 3, 224, 224), (1, 1, 160, 128), (8, 3, 32, 32))
    >>> input_shape(32.0)
    Traceback (most recent call last):
    ...
    ValueError: input_size is an image size, (H, W), (C, H, W) or (N, C, H, W) of whole numbers, got 32.0
"""

from __future__ import annotations

from typing import Any

from torch import nn

__all__ = ["input_shape", "first_conv_channels", "MAX_SIDE"]

MAX_SIDE = 2048  # px: larger inputs are almost surely a typo, and a forward pass of them runs out of memory
MAX_BATCH = 1024
MAX_CHANNELS = 64


def first_conv_channels(model: nn.Module) -> int | None:
    """The input channels of the model's first convolution (module order), if it has one."""
    return next((m.in_channels for m in model.modules() if isinstance(m, nn.Conv2d)), None)


def input_shape(value: Any, *, channels: int | None = None, name: str = "input_size",
                min_side: int = 1) -> tuple[int, int, int, int]:
    """``(N, C, H, W)`` from any of the accepted forms. ``channels`` fills in C where it is not given (default 3)
    and, where it is, must match (the model's first convolution); sides from ``min_side`` to MAX_SIDE px."""
    forms = "an image size, (H, W), (C, H, W) or (N, C, H, W)"
    size = (value,) if isinstance(value, int) and not isinstance(value, bool) else value
    try:
        size = tuple(size)
    except TypeError:
        raise ValueError(f"{name} is {forms} of whole numbers, got {value!r}") from None
    if not 1 <= len(size) <= 4 or not all(isinstance(v, int) and not isinstance(v, bool) for v in size):
        raise ValueError(f"{name} is {forms} of whole numbers, got {value!r}")
    if len(size) == 1:
        size = (size[0], size[0])
    if len(size) == 2:
        size = (channels or 3, *size)
    if len(size) == 3:
        size = (1, *size)
    n, c, h, w = size
    if not (1 <= n <= MAX_BATCH and 1 <= c <= MAX_CHANNELS and min_side <= h <= MAX_SIDE and min_side <= w <= MAX_SIDE):
        raise ValueError(f"{name} {tuple(size)} is out of range: batch 1 to {MAX_BATCH}, 1 to {MAX_CHANNELS} channels, "
                         f"sides from {min_side} to {MAX_SIDE} px")
    if channels is not None and c != channels:
        raise ValueError(f"{name} {tuple(size)} has {c} channels, but the model's first convolution takes {channels}: "
                         f"pass ({channels}, {h}, {w})")
    return n, c, h, w
