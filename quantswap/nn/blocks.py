"""Modules the structural rewrites insert: Bi-Real shortcuts, McDonnell's shifted ReLU, ReActNet's RPReLU,
ReCU's channel scale and AdaBin's Maxout."""

from __future__ import annotations

import torch
from torch import nn

from quantswap import functional as QF

__all__ = ["ChannelScale", "Maxout", "RPReLU", "ShiftedReLU", "bireal_shortcut"]


class ShiftedReLU(nn.Module):
    """``max(x, -1)``: McDonnell et al.'s shifted ReLU (docs/methods.md#mcdonnell-one-bit-per-weight)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp_min(x, -1.0)


class ChannelScale(nn.Module):
    """A learnable scale per channel: ``x · α_c`` over dimension 1 (a convolution's output) or the last
    one (a Linear layer's, ``channel_dim=-1``). ReCU's scaling factor (docs/methods.md#recu)."""

    def __init__(self, scale: torch.Tensor, channel_dim: int = 1):
        super().__init__()
        self.channel_dim = channel_dim
        self.scale = nn.Parameter(scale.detach().clone().flatten())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channel_dim == -1:
            return x * self.scale
        return QF.channel_scale(x, self.scale)

    def extra_repr(self) -> str:
        return f"channels={self.scale.numel()}, channel_dim={self.channel_dim}"


class RPReLU(nn.Module):
    """ReActNet's RPReLU, per channel ``c`` (dimension 1): ``PReLU_β(x − γ) + ζ``, i.e. ``x − γ + ζ`` where
    ``x > γ`` and ``β·(x − γ) + ζ`` elsewhere (docs/methods.md#reactnet).

    ``γ`` (``shift_in``) and ``ζ`` (``shift_out``) start at 0 and the slope ``β`` at 0.25, as in the
    authors' code (``nn.PReLU``'s default).
    """

    def __init__(self, channels: int, slope: float = 0.25):
        super().__init__()
        self.shift_in = nn.Parameter(torch.zeros(channels))
        self.slope = nn.Parameter(torch.full((channels,), slope))
        self.shift_out = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return QF.channel_piecewise(x, self.shift_in, torch.ones_like(self.slope), self.slope, self.shift_out)

    def extra_repr(self) -> str:
        return f"channels={self.slope.numel()}"


class Maxout(nn.Module):
    """AdaBin's nonlinearity, per channel ``c`` (dimension 1): ``p_c · max(x, 0) − n_c · max(−x, 0)``,
    a slope for each side, learnable; ``p`` starts at 1 and ``n`` at 0.25 as in the authors' code
    (docs/methods.md#adabin)."""

    def __init__(self, channels: int, negative: float = 0.25, positive: float = 1.0):
        super().__init__()
        self.negative = nn.Parameter(torch.full((channels,), negative))
        self.positive = nn.Parameter(torch.full((channels,), positive))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        zero = torch.zeros_like(self.positive)
        return QF.channel_piecewise(x, zero, self.positive, self.negative, zero)

    def extra_repr(self) -> str:
        return f"channels={self.positive.numel()}"


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
