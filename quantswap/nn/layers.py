"""Quantized drop-in layers: :class:`QuantConv2d` and :class:`QuantLinear`.

They subclass ``nn.Conv2d`` / ``nn.Linear``, so they keep the latent ``weight`` and ``bias``
parameters (same state-dict keys as the float layer, same optimizer groups) and every convolution
option (stride, padding, dilation, groups, padding_mode). The forward quantizes the weight, and the
input too when the method binarizes activations.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["QuantConv2d", "QuantLinear", "QuantLayer", "is_quantized_layer"]


class _QuantMixin:
    weight_quantizer: nn.Module
    input_quantizer: nn.Module | None

    def _attach(self, weight_quantizer: nn.Module, input_quantizer: nn.Module | None) -> None:
        self.weight_quantizer = weight_quantizer
        self.input_quantizer = input_quantizer

    def quantized_weight(self) -> torch.Tensor:
        """The weight the forward uses (differentiable with the method's estimator)."""
        return self.weight_quantizer(self.weight)

    def _quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.input_quantizer is None else self.input_quantizer(x)

    @property
    def binary_activations(self) -> bool:
        return self.input_quantizer is not None


class QuantConv2d(_QuantMixin, nn.Conv2d):
    """A ``Conv2d`` whose weight (and optionally input) is quantized in the forward pass."""

    def __init__(self, *args, weight_quantizer: nn.Module, input_quantizer: nn.Module | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._attach(weight_quantizer, input_quantizer)

    @classmethod
    def from_float(
        cls, conv: nn.Conv2d, weight_quantizer: nn.Module, input_quantizer: nn.Module | None = None
    ) -> QuantConv2d:
        """Wrap ``conv``'s own weight and bias parameters (not copies) with the quantizers."""
        new = cls(
            conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
            dilation=conv.dilation, groups=conv.groups, bias=conv.bias is not None, padding_mode=conv.padding_mode,
            device="meta", weight_quantizer=weight_quantizer, input_quantizer=input_quantizer,
        )
        new.weight = conv.weight
        new.bias = conv.bias
        new.train(conv.training)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self._quantize_input(x), self.quantized_weight(), self.bias)


class QuantLinear(_QuantMixin, nn.Linear):
    """A ``Linear`` whose weight (and optionally input) is quantized in the forward pass."""

    def __init__(self, *args, weight_quantizer: nn.Module, input_quantizer: nn.Module | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._attach(weight_quantizer, input_quantizer)

    @classmethod
    def from_float(
        cls, linear: nn.Linear, weight_quantizer: nn.Module, input_quantizer: nn.Module | None = None
    ) -> QuantLinear:
        """Wrap ``linear``'s own weight and bias parameters (not copies) with the quantizers."""
        new = cls(
            linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta",
            weight_quantizer=weight_quantizer, input_quantizer=input_quantizer,
        )
        new.weight = linear.weight
        new.bias = linear.bias
        new.train(linear.training)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self._quantize_input(x), self.quantized_weight(), self.bias)


QuantLayer = (QuantConv2d, QuantLinear)


def is_quantized_layer(module: nn.Module) -> bool:
    return isinstance(module, QuantLayer)
