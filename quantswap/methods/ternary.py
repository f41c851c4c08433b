"""Ternary weights with residual expansion layers (He, Gong, Fan, WACV 2019), as in
elliothe/Ternarized_Neural_Network (docs/methods.md#ternary-weights-with-residual-expansion).

* Per branch ``b`` (per layer): ``δ_b = τ_b · max|W|``, ``α_b = mean(|W| : |W| ≥ δ_b)``,
  ``T_b = sign(W) · 1[|W| ≥ δ_b]``. The layer's weight is ``Σ_b α_b · T_b`` over ``t = expansion``
  branches with increasing thresholds ``τ = 0.05, 0.10, 0.15, 0.20`` (the authors' REL: the *same*
  latent weight ternarized with each threshold, not the residual of the previous branch).
* Backward: straight-through, ``1[|W| < 1] · g`` per branch, summed over branches; ``α`` and ``δ``
  are constants. Activations and BatchNorm stay real.
* The sum of branch weights is convolved once; that equals the sum of ``t`` branch convolutions.
  (The authors' Linear adds its bias once per branch; quantswap adds it once.)

Example:
    >>> import quantswap
    >>> from torchvision.models import resnet18
    >>> tnn = quantswap.ternarize(resnet18(), expansion=2)
    >>> tnn.layer1[0].conv1.weight_quantizer.thresholds
    (0.05, 0.1)
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from quantswap import functional as QF
from quantswap._registry import register_method
from quantswap.config import QuantConfig, Variant
from quantswap.nn.quantizers import WeightQuantizer

__all__ = ["TernaryConfig", "TernaryWeight", "DEFAULT_THRESHOLDS"]

DEFAULT_THRESHOLDS = (0.05, 0.10, 0.15, 0.20)
MAX_EXPANSION = 8  # each branch costs a pass over the weights: a config must not ask for hundreds


class TernaryWeight(WeightQuantizer):
    """``Σ_b α_b · T_b(W)`` over the thresholds, straight-through backward.

    As a codec: codes ``[t, *W.shape]`` in {-1, 0, +1} and scales ``[t]`` (one ``α`` per branch).
    """

    scale_granularity = "tensor"
    code_levels = 3

    def __init__(self, thresholds: tuple[float, ...] = (0.05,)):
        super().__init__()
        self.thresholds = tuple(thresholds)

    @property
    def branches(self) -> int:
        return len(self.thresholds)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return QF.ternary_expand(w, self.thresholds)

    def quantize(self, w: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        return QF.ternary_expand_with_statistics(w, self.thresholds)

    @torch.no_grad()
    def requantize(self, w: torch.Tensor, statistics: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        return self(w) if statistics is None else QF.ternary_apply(w, statistics)

    @torch.no_grad()
    def ternarize(self, w: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per branch, ``(codes, alpha)`` with codes in {-1, 0, +1}; the forward is ``Σ α·codes``."""
        return [QF.ternary_levels(w, tau) for tau in self.thresholds]

    @torch.no_grad()
    def encode(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        masks, alphas = zip(*QF.ternary_branches(w, self.thresholds), strict=True)
        sign = torch.where(w < 0, -1, 1).to(torch.int8)
        return torch.stack([sign * mask.to(torch.int8) for mask in masks]), torch.stack(alphas)

    def decode(self, codes: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        return QF.ternary_combine(codes != 0, scale.unbind(), (codes < 0).any(0), dtype or scale.dtype)

    def dequantize_terms(self, codes: torch.Tensor, scale: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(branch, alpha.float()) for branch, alpha in zip(codes.unbind(), scale.unbind(), strict=True)]

    def extra_repr(self) -> str:
        return f"thresholds={self.thresholds}"


@register_method
@dataclasses.dataclass
class TernaryConfig(QuantConfig):
    """Ternary weights, real activations.

    Args:
        expansion: number of residual-expansion branches ``t`` (1 to 4 with the default thresholds).
        thresholds: ``τ_b`` per branch, strictly increasing in (0, 1); default
            ``(0.05, 0.10, 0.15, 0.20)[:expansion]``.
    """

    method = "ternary"
    kind = "ternary"
    paper = "ternary weights with residual expansion (He et al., WACV 2019)"
    citation = ("He, Gong, Fan. Optimize Deep Convolutional Neural Network with Ternarized Weights and High "
                "Accuracy. WACV 2019. arXiv:1807.07948")
    code = "elliothe/Ternarized_Neural_Network"
    variants = tuple(Variant(f"ternary-t{t}", "ternary", {"expansion": t}) for t in (1, 2, 4))

    expansion: int = 1
    thresholds: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.expansion, bool) or not isinstance(self.expansion, int) or not 1 <= self.expansion <= MAX_EXPANSION:
            raise ValueError(f"expansion must be an integer from 1 to {MAX_EXPANSION} (1 to 4 with the default "
                             f"thresholds), got {self.expansion!r}")
        if self.thresholds is None:
            if self.expansion > len(DEFAULT_THRESHOLDS):
                raise ValueError(
                    f"expansion={self.expansion} has no default thresholds (defaults cover 1 to "
                    f"{len(DEFAULT_THRESHOLDS)}); pass thresholds=(...) with {self.expansion} values"
                )
            self.thresholds = DEFAULT_THRESHOLDS[: self.expansion]
        try:
            self.thresholds = tuple(float(t) for t in self.thresholds)
        except (TypeError, ValueError):
            raise TypeError(f"thresholds must be a sequence of numbers, got {self.thresholds!r}") from None
        if len(self.thresholds) != self.expansion:
            raise ValueError(
                f"thresholds has {len(self.thresholds)} values but expansion={self.expansion}; give one per branch"
            )
        if not all(0 < t < 1 for t in self.thresholds) or any(
            a >= b for a, b in zip(self.thresholds, self.thresholds[1:], strict=False)
        ):
            raise ValueError(f"thresholds must be strictly increasing values in (0, 1), got {self.thresholds}")

    def weight_quantizer(self, layer: nn.Module) -> nn.Module:
        return TernaryWeight(self.thresholds)

    @property
    def precision(self) -> str:
        return f"t={self.expansion}"

    @property
    def tag(self) -> str:
        return f"ternary-t{self.expansion}"

    @property
    def description(self) -> str:
        return f"ternary t={self.expansion} (W2x{self.expansion}/A32)"
