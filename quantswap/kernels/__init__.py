"""Packed W1/A1 kernels: binary convolution and linear layers by XOR + popcount on 1-bit words.

``torch.ops.quantswap.bconv2d`` and ``torch.ops.quantswap.blinear`` take activations in float32,
binarize and pack them, and multiply them with weights kept packed (1 bit each) by counting
differing bits: exact integer dot products, then one multiply-add per output channel. On the CPU a
C++/OpenMP kernel (AVX-512 VPOPCNTDQ or AVX2 on x86-64, NEON on aarch64, or portable code, chosen at
run time) does the work; it is compiled once (``quantswap kernels``, or the first use) and
cached. Without a compiler the same ops run a pure-PyTorch reference.
:func:`quantswap.freeze` routes every W1/A1 layer through them.

Example:
    >>> import torch
    >>> from quantswap import kernels
    >>> codes = torch.randint(0, 2, (16, 8, 3, 3), dtype=torch.int8) * 2 - 1
    >>> x, alpha = torch.randn(1, 8, 5, 5), torch.rand(16)
    >>> y = kernels.bconv2d(x, kernels.pack_weight(codes), alpha, None, in_channels=8, padding=(1, 1))
    >>> signs = torch.where(x >= 0, 1.0, -1.0)
    >>> expected = torch.nn.functional.conv2d(signs, codes.float(), padding=1) * alpha.view(-1, 1, 1)
    >>> torch.equal(y, expected)
    True
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from quantswap.kernels.layout import pack_weight, unpack_weight
from quantswap.kernels.native import ISAS, KernelInfo, ensure_loaded, info, load, set_isa

__all__ = ["ISAS", "KernelInfo", "bconv2d", "blinear", "info", "load", "pack_weight", "set_isa", "unpack_weight"]


def _pair(v: int | Sequence[int]) -> list[int]:
    return [v, v] if isinstance(v, int) else list(v)


def bconv2d(x: torch.Tensor, weight: torch.Tensor, alpha: torch.Tensor, bias: torch.Tensor | None = None, *,
            in_channels: int, stride: int | Sequence[int] = 1, padding: int | Sequence[int] = 0,
            dilation: int | Sequence[int] = 1, offset: torch.Tensor | None = None) -> torch.Tensor:
    """``alpha · conv2d(sign(x), codes) + bias`` with ``codes`` packed by :func:`pack_weight`; an ``offset``
    ``[3, O]`` adds the terms of binary sets that are not ±1 (:mod:`quantswap.kernels.affine`)."""
    ensure_loaded()
    return torch.ops.quantswap.bconv2d(x, weight, alpha, bias, in_channels, _pair(stride), _pair(padding),
                                       _pair(dilation), offset)


def blinear(x: torch.Tensor, weight: torch.Tensor, alpha: torch.Tensor, bias: torch.Tensor | None = None,
            offset: torch.Tensor | None = None) -> torch.Tensor:
    """``alpha · linear(sign(x), codes) + bias`` for ``x`` ``[N, C]`` and codes ``[O, C]`` packed by :func:`pack_weight`
    (``offset`` as in :func:`bconv2d`)."""
    ensure_loaded()
    return torch.ops.quantswap.blinear(x, weight, alpha, bias, offset)
