"""Bi-Real Net (Liu et al., ECCV 2018), as in liuzechun/Bi-Real-net (docs/methods.md#bi-real-net).

* Activations: ``sign(x)`` with the ApproxSign backward ``max(0, 2 − 2|x|)``.
* Weights: ``α · sign(W)``, ``α = mean|W|`` per output channel, detached, with the paper's
  **magnitude-aware** gradient ``∂L/∂W = α · 1[|W| ≤ 1] · g`` (as Larq's ``MagnitudeAwareSign``).
  The authors' PyTorch code drops the ``α`` factor (``1[|W| ≤ 1] · g``) and their Caffe code uses
  the identity; quantswap follows the paper.
* Structure, made by rewriting the graph: every binary convolution, with the BatchNorm right after
  it, gets its own real-valued shortcut, ``out = BN(conv(sign(x))) + shortcut(x)``: the identity
  where shapes match, ``AvgPool2d → 1×1 conv → BN`` where they do not. ReLUs feeding binary layers
  are removed (the Bi-Real body has no nonlinearity but ``sign``). The model's own residual
  connections stay (``block_residual=True``, the default: fine-tuned from a pretrained torchvision
  ResNet this scored higher, BENCHMARKS.md's structure table), and downsample convolutions (1×1,
  stride > 1) stay real, as in the paper. ``block_residual=False`` builds the authors' Bi-Real-18:
  where a block's every binary conv got its own shortcut, the block's own residual and its projection
  are removed, so ResNet-18 has 16 shortcut sums and 3 real 1×1 convs (:mod:`quantswap.fx.residuals`).

Example:
    >>> import quantswap
    >>> from torchvision.models import resnet18
    >>> bnn = quantswap.binarize(resnet18(), method="bireal")
    >>> len(bnn.meta["quantswap"].shortcuts)
    16
    >>> authors = quantswap.binarize(resnet18(), method="bireal", block_residual=False)
    >>> len(authors.meta["quantswap"].blocks_rewired)
    8
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from quantswap import functional as QF
from quantswap._registry import register_method
from quantswap.config import GraphPass, QuantConfig, Variant
from quantswap.fx.passes import add_bireal_shortcuts, remove_block_residuals
from quantswap.methods.irnet import is_downsample_conv
from quantswap.nn.quantizers import BinaryWeightQuantizer, SignActivation

__all__ = ["BiRealConfig", "BiRealLayout", "BiRealWeight"]


class BiRealWeight(BinaryWeightQuantizer):
    """``α · sign(W)``, ``α = mean|W|`` per output channel (detached): ``∂L/∂W = α·1[|W| ≤ 1]·g``."""

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return self.quantize(w)[0]

    def quantize(self, w: torch.Tensor) -> tuple[torch.Tensor, QF.RowSign | None]:
        return QF.mean_abs_sign_with_statistics(w, scale_grad=False)


@dataclasses.dataclass
class BiRealLayout(QuantConfig):
    """What the methods built on Bi-Real's layout share (Bi-Real, ReActNet, ReCU, AdaBin): W1/A1 by default,
    the ReLUs feeding binary layers removed, and a shortcut around every binary conv (:meth:`shortcut_pass`).

    Args:
        keep_downsample: keep 1×1 stride-2 projection convs real (they get no shortcut).
        block_residual: keep each residual block's own residual (and projection) on top of the per-conv
            shortcuts (the default, which fine-tuned from a pretrained ResNet scored higher than the authors'
            structure: BENCHMARKS.md). ``False`` builds the authors' networks: the block residuals the
            per-conv shortcuts make redundant are removed, with the methods' stem activations.
    """

    default_activations = True
    supports_binary_activations = True

    keep_downsample: bool = True
    block_residual: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.block_residual, bool):
            raise TypeError(f"block_residual must be True or False, got {self.block_residual!r}")

    @property
    def structure(self) -> str:
        """Which network is built: ``"authors"`` (per-conv shortcuts only) or ``"block residual"``."""
        return "block residual" if self.block_residual else "authors"

    def shortcut_pass(self) -> GraphPass:
        """The pass wrapping each binary conv in its shortcut (Bi-Real's; the others add an activation)."""
        return add_bireal_shortcuts

    def stem_activation(self, channels: int) -> nn.Module | None:
        """The authors' activation after the stem, where the swap removed its ReLU (none in Bi-Real)."""
        return None

    def graph_passes(self) -> tuple[GraphPass, ...]:
        if self.block_residual:
            return (self.shortcut_pass(),)
        return (self.shortcut_pass(), remove_block_residuals)

    def activation_replacement(self):
        return nn.Identity if self.activations else None

    def keep_real(self, layer: nn.Module) -> bool:
        return self.keep_downsample and is_downsample_conv(layer)


@register_method
@dataclasses.dataclass
class BiRealConfig(BiRealLayout):
    """Bi-Real: W1/A1 with a shortcut around every binary conv (options: :class:`BiRealLayout`)."""

    method = "bireal"
    paper = "Bi-Real Net (Liu et al., ECCV 2018)"
    citation = ("Liu, Wu, Luo, Yang, Liu, Cheng. Bi-Real Net: Enhancing the Performance of 1-bit CNNs with "
                "Improved Representational Capability and Advanced Training Algorithm. ECCV 2018. arXiv:1808.00278")
    code = "liuzechun/Bi-Real-net"
    variants = (Variant("bireal", "bireal"),)

    def weight_quantizer(self, layer: nn.Module) -> nn.Module:
        return BiRealWeight()

    def input_quantizer(self, layer: nn.Module) -> nn.Module | None:
        return SignActivation("approx") if self.activations else None
