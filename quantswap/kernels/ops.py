"""The ``quantswap::bconv2d`` and ``quantswap::blinear`` custom ops: schemas, fake kernels, reference.

The schemas are defined here, with the pure-PyTorch reference (:mod:`quantswap.kernels.reference`)
as the kernel for every device and a fake (meta) kernel, so ``torch.compile`` and ``torch.export``
see the ops as single nodes with known output shapes. The native library
(:mod:`quantswap.kernels.native`) registers a faster CPU kernel on top, which the dispatcher then
prefers for CPU tensors.

``bconv2d(x, weight, alpha, bias, in_channels, stride, padding, dilation)``: ``x`` float32
``[N, C, H, W]``; ``weight`` the ``int64 [G, OB, KH, KW, WG, 8]`` words of
:func:`quantswap.kernels.layout.pack_weight`; ``alpha`` float32 ``[O]``; returns
``alpha * conv(sign(x), codes) + bias``. ``blinear(x, weight, alpha, bias)``: the same for ``x``
``[N, C]`` and a 1x1 one-group weight. An ``offset`` (float32 ``[3, O]``) adds the terms of a binary set
that is not ±1 (:mod:`quantswap.kernels.affine`): ``(D·alpha + S_x·offset[0]) + ((S_w·offset[1] +
K·offset[2]) + bias)``.
"""

from __future__ import annotations

import torch

from quantswap.kernels import reference

__all__ = ["bconv2d", "blinear"]

_LIB = torch.library.Library("quantswap", "DEF")  # noqa: TOR901 - kernels are added below and from C++
_LIB.define(
    "bconv2d(Tensor x, Tensor weight, Tensor alpha, Tensor? bias, int in_channels, int[2] stride, "
    "int[2] padding, int[2] dilation, Tensor? offset=None) -> Tensor"
)
_LIB.define("blinear(Tensor x, Tensor weight, Tensor alpha, Tensor? bias, Tensor? offset=None) -> Tensor")
_LIB.impl("bconv2d", reference.bconv2d, "CompositeExplicitAutograd")
_LIB.impl("blinear", reference.blinear, "CompositeExplicitAutograd")


def _conv_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def check_input_size(size: tuple[int, int], kernel: tuple[int, int], padding, dilation) -> None:
    """Refuse, as ``F.conv2d`` does, a dilated kernel larger than the padded input."""
    padded = [size[i] + 2 * padding[i] for i in range(2)]
    span = [dilation[i] * (kernel[i] - 1) + 1 for i in range(2)]
    if padded[0] < span[0] or padded[1] < span[1]:
        raise RuntimeError(f"Calculated padded input size per channel: ({padded[0]} x {padded[1]}). Kernel size: "
                           f"({span[0]} x {span[1]}). Kernel size can't be greater than actual input size")


@torch.library.register_fake("quantswap::bconv2d")
def _bconv2d_fake(x, weight, alpha, bias, in_channels, stride, padding, dilation, offset=None):
    kernel = weight.shape[2:4]
    check_input_size(tuple(x.shape[2:]), tuple(kernel), padding, dilation)
    height, width = (_conv_size(x.shape[2 + i], kernel[i], stride[i], padding[i], dilation[i]) for i in range(2))
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    return torch.empty((x.shape[0], alpha.shape[0], height, width), dtype=x.dtype, device=x.device,
                       memory_format=torch.channels_last if channels_last else torch.contiguous_format)


@torch.library.register_fake("quantswap::blinear")
def _blinear_fake(x, weight, alpha, bias, offset=None):
    return x.new_empty((x.shape[0], alpha.shape[0]))


bconv2d = torch.ops.quantswap.bconv2d
blinear = torch.ops.quantswap.blinear
