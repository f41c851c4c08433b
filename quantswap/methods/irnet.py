"""IR-Net (Qin et al., CVPR 2020), as in htqin/IR-Net (docs/methods.md#ir-net).

* Weights (Libra-PB), per output channel: balance ``Ŵ = W − mean(W)``, standardize
  ``Ŵ_std = Ŵ / std(Ŵ)`` (unbiased std, as in the code; mean and std are differentiated), scale
  ``s = 2^round(log2(mean|Ŵ_std|))`` (detached), ``Q_w = s · sign(Ŵ_std)``. The code has no ε: a
  constant filter divides by zero. quantswap computes in float32 and gives a filter whose std is
  below ``1e-6 · |mean W|`` (a constant one, whatever the constant) a zero weight; a filter of one
  weight uses the biased std (0).
* Backward through ``sign`` (weights and activations): the Error Decay Estimator
  ``k·t·(1 − tanh²(t·x))``, with ``t = T_min·10^(p·log10(T_max/T_min))`` and ``k = max(1/t, 1)`` at
  training progress ``p`` (``quantswap.set_progress``); defaults ``T_min = 0.1``, ``T_max = 10``.
* W1/A1 (default): activations ``sign(x)`` with the same EDE, and each ReLU feeding a binary layer
  becomes ``Hardtanh`` (README: "Hardtanh replaces ReLU"). ``activations=False`` gives W1/A32 and
  keeps ReLU, as the authors' 1w32a models do.
* Downsample convolutions (1×1, stride > 1) stay real, as in the authors' ResNets
  (``keep_downsample=False`` binarizes them too).

Example:
    >>> import quantswap
    >>> from torchvision.models import resnet18
    >>> bnn = quantswap.binarize(resnet18(), method="irnet")
    >>> quantswap.set_progress(bnn, 1.0)
    >>> (bnn.layer1[0].conv1.weight_quantizer.k, bnn.layer1[0].conv1.weight_quantizer.t)
    (1.0, 10.0)
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from quantswap import functional as QF
from quantswap._registry import register_method
from quantswap.config import QuantConfig, Variant
from quantswap.nn.quantizers import BinaryWeightQuantizer, EDEScheduled, EDESignActivation

__all__ = ["IRNetConfig", "IRNetWeight", "is_downsample_conv"]


def is_downsample_conv(layer: nn.Module) -> bool:
    """A 1×1 convolution with stride > 1: a ResNet-style projection shortcut."""
    return isinstance(layer, nn.Conv2d) and layer.kernel_size == (1, 1) and max(layer.stride) > 1


def _standardized(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(Ŵ_std, mean, 1/std)`` per output channel, flattened to ``[C_out, n]``, in float32 at least.

    A filter whose spread is below float32 rounding of its values (``std <= 1e-6 · |mean W|``: a
    constant filter, whatever the constant) gets ``1/std = 0``, so it standardizes to 0. The std is
    the unbiased one (the authors' ``torch.std``), summed by hand: ``Tensor.std`` is several times
    slower on the CPU.
    """
    flat = w.flatten(1).to(torch.promote_types(w.dtype, torch.float32))
    mean = flat.mean(dim=1, keepdim=True)
    balanced = flat - mean
    dof = max(flat.shape[1] - 1, 1)  # a one-weight filter: std 0, not NaN
    std = balanced.square().sum(dim=1, keepdim=True).div_(dof).sqrt_()
    constant = std <= 1e-6 * mean.abs()
    inverse = torch.where(constant, torch.zeros_like(std), 1.0 / torch.where(constant, torch.ones_like(std), std))
    return balanced.mul_(inverse), mean, inverse


def _power_of_two_scale(w_std: torch.Tensor) -> torch.Tensor:
    return torch.exp2(torch.round(torch.log2(w_std.abs().mean(dim=1, keepdim=True))))


class _LibraSign(torch.autograd.Function):
    """Libra-PB's ``s · sign(Ŵ_std)`` with the EDE backward through the standardization, in closed form:
    with ``h = s·g·EDE'(Ŵ_std)``, ``∂L/∂W = (h − mean h − Ŵ_std · Σ(h·Ŵ_std)/(n − 1)) / std``."""

    @staticmethod
    def forward(ctx, w: torch.Tensor, kt: torch.Tensor) -> tuple[torch.Tensor, QF.RowSign | None]:
        if w.dim() > 1 and QF._native(w):  # the same numbers in one fused kernel per pass
            out, mean, inverse, scale = QF._kernels().libra_sign(w)
            ctx.save_for_backward(w, mean, inverse, scale, kt)
            return out, QF.RowSign(scale, mean, inverse)
        w_std, mean, inverse = _standardized(w)
        scale = _power_of_two_scale(w_std)
        ctx.save_for_backward(w, mean, inverse, scale, kt)
        return QF.fast_sign(w_std, scale).view(w.shape).to(w.dtype), None

    @staticmethod
    def backward(ctx, grad: torch.Tensor, *_):
        w, mean, inverse, scale, kt = ctx.saved_tensors
        if mean.dim() == 1:  # the native forward's per-row numbers
            k, t = kt.tolist()
            return QF._kernels().libra_sign_backward(grad.contiguous(), w, mean, inverse, scale, k, t), None
        flat = w.flatten(1).to(mean.dtype)
        w_std = (flat - mean).mul_(inverse)
        h = QF.ede_grad(grad.flatten(1).to(mean.dtype), w_std, kt[0], kt[1]).mul_(scale)
        dof = max(flat.shape[1] - 1, 1)
        spread = (h * w_std).sum(dim=1, keepdim=True).div_(dof)
        grad_w = h.sub_(h.mean(dim=1, keepdim=True)).sub_(w_std.mul_(spread)).mul_(inverse)
        return grad_w.view(w.shape).to(w.dtype), None


class IRNetWeight(BinaryWeightQuantizer, EDEScheduled):
    """Libra-PB: ``s · sign(standardize(W − mean W))`` per output channel, EDE backward.

    Takes ``t_min`` and ``t_max``, the EDE schedule's end points (:class:`EDEScheduled`).
    """

    @staticmethod
    def standardize(w: torch.Tensor) -> torch.Tensor:
        """Per output channel ``(W − mean W) / std(W − mean W)``, in float32 at least (float64 stays);
        a constant filter standardizes to 0, so its quantized weight is 0."""
        return _standardized(w)[0].view(w.shape)

    @staticmethod
    def power_of_two_scale(w_std: torch.Tensor) -> torch.Tensor:
        """``2^round(log2(mean|Ŵ_std|))`` per output channel, shaped like ``QF.per_channel_mean_abs``."""
        return _power_of_two_scale(w_std.flatten(1)).view((-1,) + (1,) * (w_std.dim() - 1))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return self.quantize(w)[0]

    def quantize(self, w: torch.Tensor) -> tuple[torch.Tensor, QF.RowSign | None]:
        return _LibraSign.apply(w, self.kt)

    @torch.no_grad()
    def binarize(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if w.dim() > 1 and QF._native(w):  # the forward's own numbers: codes decode to it bit for bit
            out, _, _, scale = QF._kernels().libra_sign(w)
            return out >= 0, scale.view((-1,) + (1,) * (w.dim() - 1))
        w_std = self.standardize(w)
        return w_std >= 0, self.power_of_two_scale(w_std).to(w.dtype)


@register_method
@dataclasses.dataclass
class IRNetConfig(QuantConfig):
    """IR-Net: W1/A1 by default, W1/A32 with ``activations=False``.

    Args:
        t_min, t_max: the EDE schedule's end points (docs/methods.md#ir-net).
        keep_downsample: keep 1×1 stride-2 projection convs real.
    """

    method = "irnet"
    paper = "IR-Net (Qin et al., CVPR 2020)"
    citation = ("Qin et al. Forward and Backward Information Retention for Accurate Binary Neural Networks. "
                "CVPR 2020. arXiv:1909.10788")
    code = "htqin/IR-Net"
    default_activations = True
    supports_binary_activations = True
    variants = (Variant("irnet", "irnet"), Variant("irnet-w1a32", "irnet", {"activations": False}))

    t_min: float = 0.1
    t_max: float = 10.0
    keep_downsample: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        QF.check_ede_range(self.t_min, self.t_max)

    def weight_quantizer(self, layer: nn.Module) -> nn.Module:
        return IRNetWeight(self.t_min, self.t_max)

    def input_quantizer(self, layer: nn.Module) -> nn.Module | None:
        return EDESignActivation(self.t_min, self.t_max) if self.activations else None

    def activation_replacement(self):
        return nn.Hardtanh if self.activations else None

    def keep_real(self, layer: nn.Module) -> bool:
        return self.keep_downsample and is_downsample_conv(layer)
