"""The packed ops in pure PyTorch: the fallback where no compiler is found, and the tests' oracle.

Each one unpacks the weight bits to ``±1``, convolves ``sign(x)`` with them in float32 (sums of
``±1`` are exact integers there, below 2^24) and applies the same output transform as the native
kernel, ``dot * alpha + bias`` rounded twice (with an ``offset``, the order of
:mod:`quantswap.kernels.affine`), so the two agree bit for bit. It runs on any device,
keeps the weights packed between calls, and costs about what the float-decoded layer costs.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from quantswap.functional import sign
from quantswap.kernels import affine
from quantswap.kernels.layout import weight_sign_bits

__all__ = ["bconv2d", "blinear"]


def bconv2d(x: torch.Tensor, weight: torch.Tensor, alpha: torch.Tensor, bias: torch.Tensor | None,
            in_channels: int, stride: list[int], padding: list[int], dilation: list[int],
            offset: torch.Tensor | None = None) -> torch.Tensor:
    groups = weight.shape[0]
    signs = 1 - 2 * weight_sign_bits(weight, alpha.numel(), in_channels // groups).to(x.dtype)
    s = sign(x)
    dot = F.conv2d(s, signs, None, stride, padding, dilation, groups).round()  # exact already, unless Winograd
    return affine.finish(dot * alpha.view(-1, 1, 1), offset, bias, 2,
                         lambda: affine.conv2d_sums(s, signs, stride, padding, dilation, groups))


def blinear(x: torch.Tensor, weight: torch.Tensor, alpha: torch.Tensor, bias: torch.Tensor | None,
            offset: torch.Tensor | None = None) -> torch.Tensor:
    signs = 1 - 2 * weight_sign_bits(weight, alpha.numel(), x.shape[-1]).to(x.dtype).flatten(1)
    s = sign(x)
    return affine.finish(F.linear(s, signs).round() * alpha, offset, bias, 0, lambda: affine.linear_sums(s, signs))
