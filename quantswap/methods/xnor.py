"""XNOR-Net (Rastegari et al., ECCV 2016), as in jiecaoyu/XNOR-Net-PyTorch (docs/methods.md#xnor-net).

* Weights: ``W̃ = α · sign(W)`` with ``α = mean|W|`` per output channel, **left in the autograd
  graph**. Autograd then yields the corrected gradient of the port's notes,
  ``∂C/∂W_i = (1/n)·sign(W_i)·Σ_j g_j·sign(W_j) + α·g_i·1[|W_i| ≤ 1]``, without the port's extra
  ``(1 − 1/C_in)·n`` rescale. The in-place mean-centring and clamping of the latent weights that
  both authors' codes do outside autograd is not applied.
* Activations (W1/A1, the default): ``sign(x)`` with the clipped straight-through estimator
  ``1[|x| ≤ 1]``. The per-patch activation scale ``K`` of the paper is not used, as in both
  implementations. ``activations=False`` gives BWN (W1/A32).
* With binary activations, each ReLU feeding a binary layer becomes ``Hardtanh``: ``sign`` of a ReLU
  output is always +1. This follows BiBench's XNOR protocol (Hardtanh activations).

Example:
    >>> import torch, quantswap
    >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3),
    ...                             torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 1))
    >>> bnn = quantswap.binarize(model, method="xnor")
    >>> type(bnn.get_submodule("2")).__name__, type(bnn.get_submodule("1")).__name__
    ('QuantConv2d', 'Hardtanh')
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from quantswap import functional as QF
from quantswap._registry import register_method
from quantswap.config import QuantConfig, Variant
from quantswap.nn.quantizers import BinaryWeightQuantizer, SignActivation

__all__ = ["XnorConfig", "XnorWeight"]


class XnorWeight(BinaryWeightQuantizer):
    """``α · sign(W)``, ``α = mean|W|`` per output channel, differentiated through."""

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return self.quantize(w)[0]

    def quantize(self, w: torch.Tensor) -> tuple[torch.Tensor, QF.RowSign | None]:
        return QF.mean_abs_sign_with_statistics(w, scale_grad=True)


@register_method
@dataclasses.dataclass
class XnorConfig(QuantConfig):
    """XNOR-Net: W1/A1 by default, BWN with ``activations=False``."""

    method = "xnor"
    paper = "XNOR-Net (Rastegari et al., ECCV 2016)"
    citation = ("Rastegari, Ordonez, Redmon, Farhadi. XNOR-Net: ImageNet Classification Using Binary "
                "Convolutional Neural Networks. ECCV 2016. arXiv:1603.05279")
    code = "allenai/XNOR-Net; jiecaoyu/XNOR-Net-PyTorch"
    default_activations = True
    supports_binary_activations = True
    variants = (Variant("xnor", "xnor"),)

    def weight_quantizer(self, layer: nn.Module) -> nn.Module:
        return XnorWeight()

    def input_quantizer(self, layer: nn.Module) -> nn.Module | None:
        return SignActivation("clipped") if self.activations else None

    def activation_replacement(self):
        return nn.Hardtanh if self.activations else None
