"""A small method that exists only in the tests: registering it is all it takes for the method, codec,
freeze, checkpoint and CLI tests (every test using the ``variant`` fixture) to cover it too.

``W_q = mean|W| · sign(W)`` with one detached scale per layer and the identity straight-through
gradient; activations real by default, ``sign(x)`` with the clipped estimator when asked.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

import quantswap
from quantswap import functional as QF
from quantswap.config import QuantConfig, Variant
from quantswap.nn import BinaryWeightQuantizer, SignActivation

__all__ = ["ThrowawayConfig", "ThrowawayWeight"]


class ThrowawayWeight(BinaryWeightQuantizer):
    scale_granularity = "tensor"

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w.detach().abs().mean() * QF.sign_ste(w, "identity")

    @torch.no_grad()
    def binarize(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return w >= 0, w.abs().mean()


@quantswap.register_method
@dataclasses.dataclass
class ThrowawayConfig(QuantConfig):
    method = "throwaway"
    paper = "a method registered by quantswap's tests"
    supports_binary_activations = True
    variants = (Variant("throwaway", "throwaway", benchmark=False),
                Variant("throwaway-a1", "throwaway", {"activations": True}, benchmark=False))

    def weight_quantizer(self, layer: nn.Module) -> nn.Module:
        return ThrowawayWeight()

    def input_quantizer(self, layer: nn.Module) -> nn.Module | None:
        return SignActivation("clipped") if self.activations else None
