"""ReCU (Xu et al., ICCV 2021), as in z-hXu/ReCU (docs/methods.md#recu).

* Weights, per output channel: standardize ``Ŵ = (W − mean W) / (sqrt(var W + 1e-5) / (2√2))``
  (unbiased variance, as in the code), clamp at the quantile ``Q_τ = −mean|Ŵ| · ln(2 − 2τ)`` (``mean``
  over the whole layer, detached), binarize ``sign(clamp(Ŵ, −Q_τ, Q_τ))`` with the identity
  straight-through gradient. The clamp changes no sign, only the backward: weights beyond ``Q_τ`` get
  no gradient, so they stop drifting ("rectified clamp unit"). ``τ`` rises from ``tau_min = 0.85`` to
  ``tau_max = 0.99`` as ``τ = A·e^p + B`` at training progress ``p`` (``quantswap.set_progress``).
* Scale: a learnable factor per output channel multiplies the layer's output (a ``ChannelScale``
  module after each binary layer, before its BatchNorm). The authors initialize it uniformly in
  [0, 1); from a pretrained model quantswap starts at ``mean|W|`` per channel (XNOR's scale), so the
  swapped model starts near its parent.
* Activations: ``sign(x)``; in training, the ApproxSign backward is taken at ``x / sqrt(var x + 1e-5)``
  (variance per sample over the other dimensions, as in the code), in eval at ``x``. The forward is a
  plain sign either way, so a frozen ReCU model runs the packed kernels.
* Structure (the authors' ResNets): a shortcut around every binary conv and its BatchNorm, with a
  Hardtanh after each sum (Bi-Real's layout with ReCU's nonlinearity); ReLUs feeding binary layers
  removed; downsample convs real.

Example:
    >>> import quantswap
    >>> from torchvision.models import resnet18
    >>> bnn = quantswap.binarize(resnet18(), method="recu")
    >>> quantswap.set_progress(bnn, 1.0)
    >>> round(bnn.layer1[0].conv1.weight_quantizer.tau.item(), 4), bnn.layer1[0].conv1_scale
    (0.99, ChannelScale(channels=64, channel_dim=1))
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from quantswap import functional as QF
from quantswap._registry import register_method
from quantswap.config import Variant
from quantswap.fx.passes import scale_quantized_outputs, shortcuts_followed_by
from quantswap.methods.bireal import BiRealLayout
from quantswap.nn.quantizers import BinaryWeightQuantizer, ScheduledQuantizer

__all__ = ["ReCUConfig", "ReCUSign", "ReCUWeight", "recu_tau"]


def recu_tau(progress: float, tau_min: float = 0.85, tau_max: float = 0.99) -> float:
    """ReCU's clamp level at training ``progress`` in [0, 1]: ``A·e^p + B`` from ``tau_min`` to ``tau_max``.

    Example:
        >>> recu_tau(0.0), recu_tau(1.0)
        (0.85, 0.99)
    """
    a = (tau_max - tau_min) / (math.e - 1)
    return round(a * math.exp(progress) + tau_min - a, 12)


_SPREAD = 2 * math.sqrt(2)  # Ŵ = (W − mean) / (sqrt(var + 1e-5) / (2√2))


def _standardized(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(Ŵ, mean, d)`` flattened to ``[C_out, n]``: ``Ŵ = (W − mean)/d``, ``d = sqrt(var + 1e-5)/(2√2)``.
    The unbiased variance is summed by hand (``Tensor.var`` is several times slower on the CPU)."""
    flat = w.flatten(1)
    mean = flat.mean(1, keepdim=True)
    centred = flat - mean
    dof = max(flat.shape[1] - 1, 1)  # one weight: variance 0, not NaN
    spread = centred.square().sum(1, keepdim=True).div_(dof).add_(1e-5).sqrt_().div_(_SPREAD)
    return centred.div_(spread), mean, spread


class _RectifiedSign(torch.autograd.Function):
    """``sign(clamp(Ŵ, ±Q_τ))``, identity straight-through, differentiated through the standardization in
    closed form: with ``h = g·1[|Ŵ| <= Q_τ]``,
    ``∂L/∂W = (h − mean h − Ŵ · Σ(h·Ŵ) / (8(n − 1))) / d``."""

    @staticmethod
    def forward(ctx, w: torch.Tensor, tau: torch.Tensor) -> tuple[torch.Tensor, QF.RowSign | None]:
        if w.dim() > 1 and QF._native(w):  # the same numbers, one fused kernel per pass
            out, mean, inverse, abs_sums = QF._kernels().recu_sign(w)
            level = (-(abs_sums.sum() / w.numel()) * torch.log(2 - 2 * tau)).float()
            ctx.save_for_backward(w, mean, inverse, level)
            return out, QF.RowSign(centre=mean)
        w_std, mean, spread = _standardized(w)
        level = (-w_std.abs().mean() * torch.log(2 - 2 * tau)).to(w_std.dtype)  # Q_τ over the layer, detached
        ctx.save_for_backward(w, mean, spread, level)
        return QF.fast_sign(w_std).view(w.shape), None

    @staticmethod
    def backward(ctx, grad: torch.Tensor, *_):
        w, mean, spread, level = ctx.saved_tensors
        if mean.dim() == 1:  # the native forward's per-row numbers (spread holds 1/d)
            return QF._kernels().recu_sign_backward(grad.contiguous(), w, mean, spread, level.item()), None
        w_std = (w.flatten(1) - mean).div_(spread)
        h = QF.clipped_grad(grad.flatten(1), w_std, level)
        dof = max(w_std.shape[1] - 1, 1)
        dot = (h * w_std).sum(1, keepdim=True).div_(dof * _SPREAD**2)
        grad_w = h.sub_(h.mean(1, keepdim=True)).sub_(w_std.mul_(dot)).div_(spread)
        return grad_w.view(w.shape), None


class ReCUWeight(BinaryWeightQuantizer, ScheduledQuantizer):
    """``sign(clamp(standardize(W), ±Q_τ))``, identity straight-through; the scale is the layer's
    ``ChannelScale`` (``scale_granularity = "constant"``: the codes decode to ±1)."""

    scale_granularity = "constant"

    def __init__(self, tau_min: float = 0.85, tau_max: float = 0.99):
        super().__init__()
        self.tau_min, self.tau_max = tau_min, tau_max
        self.register_buffer("tau", torch.zeros(()), persistent=False)  # a tensor: no recompile per step
        self.set_progress(0.0)

    def set_progress(self, progress: float) -> None:
        self.tau.fill_(recu_tau(progress, self.tau_min, self.tau_max))

    @staticmethod
    def standardize(w: torch.Tensor) -> torch.Tensor:
        """``(W − mean W) / (sqrt(var W + 1e-5) / (2√2))`` per output channel (unbiased variance)."""
        return _standardized(w)[0].view(w.shape)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return self.quantize(w)[0]

    def quantize(self, w: torch.Tensor) -> tuple[torch.Tensor, QF.RowSign | None]:
        return _RectifiedSign.apply(w, self.tau)

    @torch.no_grad()
    def binarize(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if w.dim() > 1 and QF._native(w):  # the forward's own mean: codes decode to it bit for bit
            return QF._kernels().recu_sign(w)[0] >= 0, self.constant_scale(w, w.dtype)
        return self.standardize(w) >= 0, self.constant_scale(w, w.dtype)

    def constant_scale(self, codes: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return torch.ones((), dtype=dtype, device=codes.device)

    def extra_repr(self) -> str:
        return f"tau={self.tau.item():.4g}"


class _NormalizedApproxSign(torch.autograd.Function):
    """``sign(x)`` forward; backward ApproxSign at ``z = x/σ``, ``σ = sqrt(var x + 1e-5)`` per sample
    (unbiased variance), differentiated through ``σ`` in closed form: with ``h = g·max(0, 2 − 2|z|)``,
    ``∂L/∂x = (h − (x − mean x)/σ · Σ(h·z)/(n − 1)) / σ``. ``sign(x/σ) = sign(x)``, so only the
    backward needs ``σ``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return QF.fast_sign(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (x,) = ctx.saved_tensors
        if x.dim() > 1 and QF._native(x, grad) and grad.stride() == x.stride():  # one fused kernel per sample
            return QF._kernels().normalized_approx_backward(grad, x)
        dims = tuple(range(1, x.dim()))
        dof = max(x[0].numel() - 1, 1)  # one value per sample: variance 0, not NaN
        mean = x.mean(dim=dims, keepdim=True)
        centred = x - mean
        sigma = centred.square().sum(dim=dims, keepdim=True).div_(dof).add_(1e-5).sqrt_()
        z = x / sigma
        h = QF.approx_grad(grad, z)
        dot = (h * z).sum(dim=dims, keepdim=True).div_(dof)
        return h.sub_(centred.div_(sigma).mul_(dot)).div_(sigma)


class ReCUSign(nn.Module):
    """``sign(x)``; ApproxSign backward, in training at ``x`` divided by its per-sample std."""

    plain_sign = True  # the forward is exactly quantswap.functional.sign: a packed layer may binarize for it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return _NormalizedApproxSign.apply(x)
        return QF.sign_ste(x, "approx")


@register_method
@dataclasses.dataclass
class ReCUConfig(BiRealLayout):
    """ReCU: W1/A1 with a rising clamp on standardized weights and a learned output scale.

    Args:
        tau_min, tau_max: the clamp level's schedule (0 < tau_min <= tau_max < 1).
        keep_downsample: as :class:`~quantswap.methods.bireal.BiRealLayout`.
    """

    method = "recu"
    paper = "ReCU (Xu et al., ICCV 2021)"
    citation = ("Xu, Lin, Zhang, Wang, Chen, Chao, Ji. ReCU: Reviving the Dead Weights in Binary Neural "
                "Networks. ICCV 2021. arXiv:2103.12369")
    code = "z-hXu/ReCU"
    variants = (Variant("recu", "recu"),)

    tau_min: float = 0.85
    tau_max: float = 0.99

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.tau_min <= self.tau_max < 1:
            raise ValueError(f"ReCU needs 0 < tau_min <= tau_max < 1, got tau_min={self.tau_min}, tau_max={self.tau_max}")

    def weight_quantizer(self, layer: nn.Module) -> nn.Module:
        return ReCUWeight(self.tau_min, self.tau_max)

    def input_quantizer(self, layer: nn.Module) -> nn.Module | None:
        return ReCUSign() if self.activations else None

    def shortcut_pass(self):
        return shortcuts_followed_by(lambda channels: nn.Hardtanh(), "hardtanh")

    def stem_activation(self, channels: int) -> nn.Module:
        return nn.Hardtanh()

    def graph_passes(self):
        return (*super().graph_passes(), scale_quantized_outputs)
