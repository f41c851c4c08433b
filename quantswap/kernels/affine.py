"""Binary layers whose two values are not ±1 (AdaBin), computed from exact integer sums.

An input binarized to ``a·s_x + b`` (``s_x = ±1``; AdaBin's learned pair ``β ∓ α`` is ``a = α``, ``b = β``)
against a weight ``α_o·s_w + β_o`` per output channel gives, over the ``K`` valid taps × channels of a
window (zero padding adds nothing),

    Σ x·w = (a·α_o)·D + (a·β_o)·S_x + (b·α_o)·S_w + (b·β_o)·K,

``D = Σ s_x·s_w``, ``S_x = Σ s_x``, ``S_w = Σ s_w``: sums of ±1 that float32 holds exactly, which the packed
kernel counts with popcounts. Every form of such a layer (the swapped model in eval mode, ``freeze`` with
either backend, the ONNX graph) combines them in one order with the coefficients of :func:`coefficients`,

    y = (D·c0 + S_x·c1) + ((S_w·c2 + K·c3) + bias),

so they round alike. A ±1 input (``a = 1, b = 0``) or a weight centred on 0 (``β_o = 0``) is the same
formula with terms that vanish; those layers keep the shorter ``y = D·c0 + bias``.

Example:
    >>> import torch
    >>> from torch.nn import functional as F
    >>> from quantswap.kernels import affine
    >>> s, unit = torch.randn(2, 4, 5, 5).sign(), torch.randn(6, 4, 3, 3).sign()
    >>> alpha_w, beta_w, a, b = torch.rand(6), torch.randn(6), torch.tensor(0.7), torch.tensor(-0.2)
    >>> c0, offset = affine.coefficients(alpha_w, beta_w, a, b)
    >>> y = affine.conv2d(s, unit, c0, offset, None, stride=1, padding=1, dilation=1, groups=1)
    >>> x, w = a * s + b, alpha_w.view(-1, 1, 1, 1) * unit + beta_w.view(-1, 1, 1, 1)
    >>> torch.allclose(y, F.conv2d(x, w, padding=1), atol=1e-5)
    True
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.nn import functional as F

__all__ = ["coefficients", "combine", "conv2d", "conv2d_sums", "finish", "linear", "linear_sums"]


def coefficients(alpha_w: torch.Tensor, beta_w: torch.Tensor | None, a: torch.Tensor | None = None,
                 b: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(c0, offset)``: ``c0 = a·α_w`` ``[O]`` and ``offset = [a·β_w; b·α_w; b·β_w]`` ``[3, O]`` (``None`` when
    the input is ±1 and the weight centred: then ``c0 = α_w``). ``a``, ``b``: 0-d; ``None`` means 1 and 0."""
    if a is None:
        a, b = torch.ones((), dtype=alpha_w.dtype), torch.zeros((), dtype=alpha_w.dtype)
        if beta_w is None:
            return alpha_w, None
    if beta_w is None:
        beta_w = torch.zeros_like(alpha_w)
    a, b = a.to(alpha_w), b.to(alpha_w)
    return a * alpha_w, torch.stack([a * beta_w, b * alpha_w, b * beta_w])


def conv2d_sums(s: torch.Tensor, unit: torch.Tensor, stride, padding, dilation, groups: int
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(S_x, S_w, K)`` of a convolution: ``[N, 1 or O, OH, OW]``, ``[1, O, OH, OW]``, ``[1, 1, OH, OW]``."""
    n, c, h, w = s.shape
    taps = torch.ones((groups, 1) + tuple(unit.shape[2:]), dtype=s.dtype, device=s.device)
    channel_sums = s.reshape(n, groups, c // groups, h, w).sum(2)
    s_x = F.conv2d(channel_sums, taps, None, stride, padding, dilation, groups)
    if groups > 1:
        s_x = s_x.repeat_interleave(unit.shape[0] // groups, dim=1)
    ones = s.new_ones((1, 1, h, w))  # the valid region: zero padding counts nothing
    s_w = F.conv2d(ones, unit.sum(1, keepdim=True), None, stride, padding, dilation)
    k = F.conv2d(ones, taps[:1], None, stride, padding, dilation) * (c // groups)
    return s_x, s_w, k


def linear_sums(s: torch.Tensor, unit: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(S_x, S_w, K)`` of a linear layer: ``[..., 1]``, ``[O]``, 0-d."""
    return s.sum(-1, keepdim=True), unit.sum(1), torch.tensor(float(s.shape[-1]), dtype=s.dtype, device=s.device)


def combine(scaled: torch.Tensor, sums: tuple[torch.Tensor, torch.Tensor, torch.Tensor], offset: torch.Tensor,
            bias: torch.Tensor | None, dims: int) -> torch.Tensor:
    """``(scaled + S_x·c1) + ((S_w·c2 + K·c3) + bias)`` with ``scaled = D·c0``; ``dims`` trailing spatial axes."""
    c1, c2, c3 = (row.view((-1,) + (1,) * dims) for row in offset)
    s_x, s_w, k = sums
    rest = s_w * c2 + k * c3
    if bias is not None:
        rest = rest + bias.view((-1,) + (1,) * dims)
    return (scaled + s_x * c1) + rest


def finish(scaled: torch.Tensor, offset: torch.Tensor | None, bias: torch.Tensor | None, dims: int,
           sums: Callable[[], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """``scaled + bias`` without an offset, else :func:`combine` with ``sums()`` (computed only then)."""
    if offset is None:
        return scaled if bias is None else scaled + bias.view((-1,) + (1,) * dims)
    return combine(scaled, sums(), offset, bias, dims)


def conv2d(s: torch.Tensor, unit: torch.Tensor, c0: torch.Tensor, offset: torch.Tensor | None,
           bias: torch.Tensor | None, stride, padding, dilation, groups: int) -> torch.Tensor:
    """The layer's output from ±1 input ``s`` and ±1 weight ``unit`` (see the module docstring)."""
    scaled = F.conv2d(s, unit, None, stride, padding, dilation, groups) * c0.view(-1, 1, 1)
    return finish(scaled, offset, bias, 2, lambda: conv2d_sums(s, unit, stride, padding, dilation, groups))


def linear(s: torch.Tensor, unit: torch.Tensor, c0: torch.Tensor, offset: torch.Tensor | None,
           bias: torch.Tensor | None) -> torch.Tensor:
    return finish(F.linear(s, unit) * c0, offset, bias, 0, lambda: linear_sums(s, unit))
