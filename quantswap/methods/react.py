"""ReActNet (Liu et al., ECCV 2020), as in liuzechun/ReActNet (docs/methods.md#reactnet).

* Activations, **RSign**: ``sign(x + b_c)`` with a learnable per-input-channel bias ``b`` (init 0;
  the paper's threshold ``α_c = −b_c``), ApproxSign backward ``max(0, 2 − 2|x + b|)`` to both ``x``
  and ``b``. ``sign(0) = +1`` as everywhere in quantswap (the paper writes ``x > α``).
* Weights: Bi-Real's binarizer, ``α · sign(W)`` with ``α = mean|W|`` per output channel, detached,
  magnitude-aware gradient (quantswap's Bi-Real; the authors' ReActNet code drops ``α`` from the
  gradient, as their Bi-Real code does).
* Structure: the Bi-Real layout (a shortcut around every binary conv and its BatchNorm; ReLUs feeding
  binary layers removed; downsample convs kept real), and after each shortcut's sum an **RPReLU**:
  ``PReLU_β(x − γ_c) + ζ_c`` per output channel (``γ = ζ = 0``, ``β = 0.25`` at the start).
* Training: the distributional loss (cross-entropy to a real teacher's softmax) is
  ``quantswap finetune``'s default distillation; the two-step recipe (binary activations with real
  weights, ``weights=False``, then binary weights) is ``recipes/resnet18-react-imagenet.yaml``.

RSign is the plain ``sign`` of ``x + b`` (:meth:`RSign.sign_input`), so a frozen layer adds ``b`` and
runs the packed kernels.

Example:
    >>> import quantswap
    >>> from torchvision.models import resnet18
    >>> bnn = quantswap.binarize(resnet18(), method="react")
    >>> type(bnn.layer1[0].conv1.input_quantizer).__name__, bnn.layer1[0].conv1_rprelu
    ('RSign', RPReLU(channels=64))
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from quantswap import functional as QF
from quantswap._registry import register_method
from quantswap.config import Variant
from quantswap.fx.passes import add_react_shortcuts
from quantswap.methods.bireal import BiRealLayout, BiRealWeight

__all__ = ["ReActConfig", "RSign"]


class RSign(nn.Module):
    """``sign(x + b)``, ``b`` learnable per input channel, ApproxSign backward.

    The channels are dimension 1 of a convolution's input (``channel_dim=1``) and the last dimension of
    a Linear layer's (``channel_dim=-1``: ``[N, C]``, or ``[N, ..., C]`` in a transformer).
    """

    def __init__(self, channels: int, channel_dim: int = 1):
        super().__init__()
        if channel_dim not in (1, -1):
            raise ValueError(f"channel_dim must be 1 (convolution input) or -1 (Linear input), got {channel_dim}")
        self.channel_dim = channel_dim
        self.bias = nn.Parameter(torch.zeros(channels))

    def sign_input(self, x: torch.Tensor) -> torch.Tensor:
        """``x + b``, whose plain sign the forward is: a packed layer adds ``b`` and binarizes itself."""
        return x + (self.bias if self.channel_dim == -1 else self.bias.view((1, -1) + (1,) * (x.dim() - 2)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channel_dim == 1 and x.dim() >= 2 and QF._native(x, self.bias):
            return _ShiftedSign.apply(x, self.bias)
        return QF.sign_ste(self.sign_input(x), "approx")

    def extra_repr(self) -> str:
        return f"channels={self.bias.numel()}, channel_dim={self.channel_dim}"


class _ShiftedSign(torch.autograd.Function):
    """RSign in one native pass each way: ``sign(x + b)``, ApproxSign backward to ``x`` and ``b`` (summed
    per channel); saves ``x``, not ``x + b``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, bias)
        return QF._kernels().channel_shift_sign(x, bias)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, bias = ctx.saved_tensors
        return QF._kernels().channel_shift_sign_backward(grad.contiguous(), x, bias)


@register_method
@dataclasses.dataclass
class ReActConfig(BiRealLayout):
    """ReActNet: W1/A1 with RSign, RPReLU and the Bi-Real structure.

    Args:
        keep_downsample: as :class:`~quantswap.methods.bireal.BiRealLayout`.
    """

    method = "react"
    paper = "ReActNet (Liu et al., ECCV 2020)"
    citation = ("Liu, Shen, Savvides, Cheng. ReActNet: Towards Precise Binary Neural Network with Generalized "
                "Activation Functions. ECCV 2020. arXiv:2003.03488")
    code = "liuzechun/ReActNet"
    variants = (Variant("react", "react"),)

    def weight_quantizer(self, layer: nn.Module) -> nn.Module:
        return BiRealWeight()

    def input_quantizer(self, layer: nn.Module) -> nn.Module | None:
        if not self.activations:
            return None
        return RSign(layer.in_channels, 1) if isinstance(layer, nn.Conv2d) else RSign(layer.in_features, -1)

    def shortcut_pass(self):
        return add_react_shortcuts
