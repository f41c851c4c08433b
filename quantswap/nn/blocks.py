"""Modules the structural rewrites insert: Bi-Real shortcuts and McDonnell's shifted ReLU."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ShiftedReLU", "bireal_shortcut"]


class ShiftedReLU(nn.Module):
    """``max(x, -1)``: McDonnell et al.'s shifted ReLU (docs/methods.md#mcdonnell-one-bit-per-weight)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp_min(x, -1.0)


def bireal_shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    """Bi-Real's real-valued downsampling shortcut: ``AvgPool2d(stride) → 1×1 conv → BN``.

    The pool uses ``ceil_mode=True`` so its output size equals that of a stride-``stride`` conv with
    "same"-style padding (``ceil(H / stride)``); with ``stride == 1`` only the 1×1 conv and BN remain
    (a channel change without downsampling).
    """
    layers: list[nn.Module] = []
    if stride > 1:
        layers.append(nn.AvgPool2d(stride, stride=stride, ceil_mode=True, count_include_pad=False))
    layers += [nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels)]
    return nn.Sequential(*layers)
