"""One bit per weight (McDonnell, ICLR 2018), as in McDonnell-Lab/1-bit-per-weight (docs/methods.md#mcdonnell-one-bit-per-weight).

* Weights: ``Ŵ = sqrt(2 / fan_in) · sign(W)``, a per-layer constant (the He-init std; ``fan_in =
  C_in/groups · k²``), never learned. Backward: the identity, ``∂L/∂W = ∂L/∂Ŵ`` (the constant is
  not applied to the gradient). Activations stay real.
* ``bn_affine=False`` gives the paper's BatchNorm without learned scale and offset (γ = 1, β = 0)
  on every BatchNorm right after a binary conv. ``shifted_relu=True`` replaces each ReLU feeding a
  binary layer with ``max(x, −1)`` (the ACIRS 2019 variant's nonlinearity; its removal of BN is
  not done).
* Defaults for fine-tuning a pretrained model: ``bn_affine=True`` and ``shifted_relu=False``. The
  pretrained BatchNorm γ/β and the ReLUs are part of what the parent learned; resetting γ to 1 and
  β to 0, or shifting every ReLU, throws that away and makes the first epochs relearn it. The
  paper's settings are for training from scratch.

Example:
    >>> import quantswap
    >>> from torchvision.models import resnet18
    >>> bwn = quantswap.binarize(resnet18(), method="mcdonnell", bn_affine=False)
    >>> bwn.layer1[0].bn1.affine
    False
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from quantswap import functional as QF
from quantswap._registry import register_method
from quantswap.config import QuantConfig, Variant
from quantswap.fx.passes import freeze_bn_affine
from quantswap.nn.blocks import ShiftedReLU
from quantswap.nn.quantizers import BinaryWeightQuantizer

__all__ = ["McDonnellConfig", "McDonnellWeight"]


class McDonnellWeight(BinaryWeightQuantizer):
    """``sqrt(2 / fan_in) · sign(W)`` with the identity straight-through gradient."""

    scale_granularity = "constant"

    @staticmethod
    def constant(w: torch.Tensor) -> float:
        return math.sqrt(2.0 / w[0].numel())

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return QF.scaled_sign_identity(w, self.constant(w))

    @torch.no_grad()
    def binarize(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return w >= 0, self.constant_scale(w, w.dtype)

    def constant_scale(self, codes: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return torch.tensor(self.constant(codes), dtype=dtype, device=codes.device)


@register_method
@dataclasses.dataclass
class McDonnellConfig(QuantConfig):
    """McDonnell's 1 bit per weight, real activations (W1/A32).

    Args:
        bn_affine: keep the learned γ/β of BatchNorms after binary convs (False: γ = 1, β = 0 fixed).
        shifted_relu: replace ReLUs feeding binary layers with ``max(x, −1)``.
    """

    method = "mcdonnell"
    paper = "1 bit per weight (McDonnell, ICLR 2018)"
    citation = ("McDonnell. Training Wide Residual Networks for Deployment Using a Single Bit for Each Weight. "
                "ICLR 2018. arXiv:1802.08530")
    code = "McDonnell-Lab/1-bit-per-weight; szagoruyko/binary-wide-resnet"
    variants = (
        Variant("mcdonnell", "mcdonnell"),
        Variant("mcdonnell-paper", "mcdonnell", {"bn_affine": False, "shifted_relu": True}, benchmark=False),
    )

    bn_affine: bool = True
    shifted_relu: bool = False

    def weight_quantizer(self, layer: nn.Module) -> nn.Module:
        return McDonnellWeight()

    def activation_replacement(self):
        return ShiftedReLU if self.shifted_relu else None

    def graph_passes(self):
        return () if self.bn_affine else (freeze_bn_affine,)
