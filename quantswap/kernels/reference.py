"""The packed ops in pure PyTorch: the fallback where no compiler is found, and the tests' oracle.

Each one unpacks the weight bits to ``±1``, convolves ``sign(x)`` with them in float32 (sums of
``±1`` are exact integers there, below 2^24) and applies the same output transform as the native
kernel, ``dot * alpha + bias`` rounded twice, so the two agree bit for bit. It runs on any device,
keeps the weights packed between calls, and costs about what the float-decoded layer costs.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from quantswap.functional import sign
from quantswap.kernels.layout import weight_sign_bits

__all__ = ["bconv2d", "blinear"]


def _transform(dot: torch.Tensor, alpha: torch.Tensor, bias: torch.Tensor | None, dims: int) -> torch.Tensor:
    shape = (-1,) + (1,) * dims
    y = dot.round() * alpha.view(shape)  # round(): exact already, unless the backend used Winograd
    return y if bias is None else y + bias.view(shape)


def bconv2d(x: torch.Tensor, weight: torch.Tensor, alpha: torch.Tensor, bias: torch.Tensor | None,
            in_channels: int, stride: list[int], padding: list[int], dilation: list[int]) -> torch.Tensor:
    groups = weight.shape[0]
    signs = 1 - 2 * weight_sign_bits(weight, alpha.numel(), in_channels // groups).to(x.dtype)
    dot = F.conv2d(sign(x), signs, None, stride, padding, dilation, groups)
    return _transform(dot, alpha, bias, 2)


def blinear(x: torch.Tensor, weight: torch.Tensor, alpha: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    signs = 1 - 2 * weight_sign_bits(weight, alpha.numel(), x.shape[-1]).to(x.dtype).flatten(1)
    return _transform(F.linear(sign(x), signs), alpha, bias, 0)
