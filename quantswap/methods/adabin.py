"""AdaBin (Tu et al., ECCV 2022), as in huawei-noah/Efficient-Computing ``BinaryNetworks/AdaBin``
(docs/methods.md#adabin).

* Weights, an adaptive binary set per output channel: ``W_b = α·sign((W − β)/α) + β`` with
  ``β`` the filter's mean and ``α`` its (population) standard deviation, so the two values are
  ``{β − α, β + α}``. Backward: IR-Net's EDE on the standardized weight, scheduled as the authors'
  training script does (``t`` from 1e-3 to 10, log-uniform, ``k = max(1/t, 1)``; their layers start at
  ``k = 10, t = 0.1`` and the script overrides it every epoch), and through ``α`` and ``β``.
* Activations, one adaptive set per layer: ``x_b = α·sign((x − β)/α) + β`` with learnable scalars
  ``α`` (init 1) and ``β`` (init 0), ApproxSign backward at ``(x − β)/α``. The paper's formula; the
  authors' code returns ``α·(sign + β)``, centring the set at ``α·β`` instead (the same family, another
  parameterization).
* Structure: the Bi-Real layout (a shortcut around every binary conv and its BatchNorm, downsample
  convs real) with a **Maxout** after each sum: ``p_c·max(x, 0) − n_c·max(−x, 0)`` per channel.

Its weights are codes ±1 with two values per output channel (``α``, ``β``) in the checkpoint, and an
ONNX file adds ``β`` after the decoded codes. Its layers stay decoded in
:func:`quantswap.freeze`: neither binary set is ±1, so the XOR-popcount kernel would need the offset
terms (``β_x·Σ w`` and ``β_w·Σ x`` over each window).

Example:
    >>> import quantswap
    >>> from torchvision.models import resnet18
    >>> bnn = quantswap.binarize(resnet18(), method="adabin")
    >>> type(bnn.layer1[0].conv1.weight_quantizer).__name__, bnn.layer1[0].conv1_maxout
    ('AdaBinWeight', Maxout(channels=64))
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from quantswap import functional as QF
from quantswap._registry import register_method
from quantswap.config import Variant
from quantswap.fx.passes import shortcuts_followed_by
from quantswap.methods.bireal import BiRealLayout
from quantswap.nn.blocks import Maxout
from quantswap.nn.quantizers import EDEScheduled, WeightQuantizer

__all__ = ["AdaBinConfig", "AdaBinSign", "AdaBinWeight"]

def _centre_and_spread(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(β, α)`` per output channel, shaped to broadcast against ``w``: the mean and the population
    standard deviation of each filter (a constant filter's spread is clamped to 1e-8, not 0)."""
    flat = w.flatten(1)
    beta = flat.mean(1, keepdim=True)
    alpha = (flat - beta).square().mean(1, keepdim=True).sqrt().clamp_min(1e-8)
    shape = (-1,) + (1,) * (w.dim() - 1)
    return beta.view(shape), alpha.view(shape)


class _AdaptiveSign(torch.autograd.Function):
    """``α·sign(u) + β``, ``u = (W − β)/α``, with the EDE backward through ``u``, ``α`` and ``β`` in
    closed form: with ``e = g·EDE'(u)`` and means over each filter,
    ``∂L/∂W = e + mean(g) − mean(e) + u·(mean(g·sign u) − mean(e·u))`` (the last term vanishes where
    ``α`` is clamped at 1e-8)."""

    @staticmethod
    def forward(ctx, w: torch.Tensor, kt: torch.Tensor) -> tuple[torch.Tensor, QF.RowSign | None]:
        if w.dim() > 1 and QF._native(w):  # the same numbers, one fused kernel per pass
            out, beta, alpha = QF._kernels().adaptive_sign(w)
            ctx.save_for_backward(w, beta, alpha, kt)
            return out, QF.RowSign(scale=alpha, centre=beta, offset=beta)
        beta, alpha = _centre_and_spread(w)
        ctx.save_for_backward(w, beta, alpha, kt)
        return QF.fast_sign((w - beta) / alpha, alpha) + beta, None

    @staticmethod
    def backward(ctx, grad: torch.Tensor, *_):
        w, beta, alpha, kt = ctx.saved_tensors
        if beta.dim() == 1:  # the native forward's per-row numbers
            k, t = kt.tolist()
            return QF._kernels().adaptive_sign_backward(grad.contiguous(), w, beta, alpha, k, t), None
        dims = tuple(range(1, w.dim()))
        u = (w - beta) / alpha
        e = QF.ede_grad(grad, u, kt[0], kt[1])
        spread = (grad * QF.fast_sign(u)).mean(dims, keepdim=True) - (e * u).mean(dims, keepdim=True)
        spread = spread * (alpha > 1e-8)
        centre = grad.mean(dims, keepdim=True) - e.mean(dims, keepdim=True)
        return e.add_(centre).addcmul_(u, spread), None


class AdaBinWeight(WeightQuantizer, EDEScheduled):
    """``α·sign((W − β)/α) + β`` per output channel; codes ±1, scale ``[α; β]`` (two rows). EDE backward
    scheduled from ``t_min`` to ``t_max`` (:class:`~quantswap.nn.quantizers.EDEScheduled`)."""

    scales_per_channel = 2
    centred = False

    def __init__(self, t_min: float = 1e-3, t_max: float = 10.0):
        EDEScheduled.__init__(self, t_min, t_max)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return self.quantize(w)[0]

    def quantize(self, w: torch.Tensor) -> tuple[torch.Tensor, QF.RowSign | None]:
        return _AdaptiveSign.apply(w, self.kt)

    @torch.no_grad()
    def encode(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if w.dim() > 1 and QF._native(w):  # the forward's own β and α: codes decode to it bit for bit
            _, beta, alpha = QF._kernels().adaptive_sign(w)
            shape = (-1,) + (1,) * (w.dim() - 1)
            return QF.sign(w - beta.view(shape)).to(torch.int8), torch.stack([alpha, beta])
        beta, alpha = _centre_and_spread(w)
        codes = QF.sign((w - beta) / alpha).to(torch.int8)
        return codes, torch.stack([alpha.flatten(), beta.flatten()])

    def decode(self, codes: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        scale = scale.to(dtype or scale.dtype)
        shape = (-1,) + (1,) * (codes.dim() - 1)
        return codes.to(scale.dtype) * scale[0].view(shape) + scale[1].view(shape)

    def scale_problem(self, scale: torch.Tensor) -> str | None:
        if scale.dim() != 2 or scale.shape[0] != 2 or not bool(torch.isfinite(scale).all()) or bool((scale[0] < 0).any()):
            return "an AdaBin scale that is not two finite rows [α ≥ 0; β]"
        return None

    def dequantize_terms(self, codes: torch.Tensor, scale: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(codes, scale[0].float())]

    def dequantize_offset(self, codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return scale[1].float()


class AdaBinSign(nn.Module):
    """``α·sign((x − β)/α) + β`` with learnable scalars ``α`` (init 1) and ``β`` (init 0); ApproxSign
    backward at ``(x − β)/α``, to ``x``, ``α`` and ``β``."""

    def __init__(self):
        super().__init__()
        self.alpha = nn.Parameter(torch.tensor(1.0))
        self.beta = nn.Parameter(torch.tensor(0.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _AdaptiveActivation.apply(x, self.alpha, self.beta)

    def sign_input(self, x: torch.Tensor) -> torch.Tensor:
        """``(x − β)/α``, whose sign picks the value: a packed layer binarizes it and adds the set's terms.
        Divided in place where no gradient is needed (a packed model's every call)."""
        u = x - self.beta
        return u.div_(self.alpha) if not torch.is_grad_enabled() else u / self.alpha

    def binary_set(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(α, β)``: the output is ``α·s + β`` with ``s = sign(sign_input(x))`` (detached 0-d tensors)."""
        return self.alpha.detach(), self.beta.detach()

    def levels(self) -> tuple[float, float]:
        """The two values of the output, ``(β − α, β + α)``, rounded as the forward rounds them (float32):
        a binary layer saves its input as one byte per element and these two numbers."""
        alpha, beta = self.alpha.detach(), self.beta.detach()
        return (-alpha + beta).item(), (alpha + beta).item()

    def extra_repr(self) -> str:
        return f"alpha={self.alpha.item():.4g}, beta={self.beta.item():.4g}"


class _AdaptiveActivation(torch.autograd.Function):
    """``α·sign(u) + β``, ``u = (x − β)/α``, ApproxSign backward in closed form: with ``d = g·S'(u)``,
    ``∂L/∂x = d``, ``∂L/∂α = Σ g·sign(u) − Σ d·u``, ``∂L/∂β = Σ g − Σ d``. Saves ``x`` and the two scalars."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, alpha, beta)
        if QF._native(x):  # one fused pass each way, the same numbers
            return QF._kernels().adaptive_activation(x, beta.item(), alpha.item())
        return QF.fast_sign((x - beta) / alpha) * alpha + beta  # α may turn negative: multiply, not copysign

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, alpha, beta = ctx.saved_tensors
        if QF._native(x, grad) and grad.stride() == x.stride():
            d, (sign_sum, du_sum, grad_sum, d_sum) = QF._kernels().adaptive_activation_backward(
                grad, x, beta.item(), alpha.item())
            return d, (sign_sum - du_sum).view_as(alpha), (grad_sum - d_sum).view_as(beta)
        u = (x - beta) / alpha
        d = QF.approx_grad(grad, u)
        grad_alpha = (grad * QF.fast_sign(u)).sum() - (d * u).sum()
        grad_beta = grad.sum() - d.sum()
        return d, grad_alpha.view_as(alpha), grad_beta.view_as(beta)


@register_method
@dataclasses.dataclass
class AdaBinConfig(BiRealLayout):
    """AdaBin: W1/A1 with adaptive binary sets, Maxout and the Bi-Real structure.

    Args:
        t_min, t_max: the weights' EDE schedule (the authors' training script: 1e-3 to 10).
        keep_downsample: as :class:`~quantswap.methods.bireal.BiRealLayout`.
    """

    method = "adabin"
    paper = "AdaBin (Tu et al., ECCV 2022)"
    citation = ("Tu, Chen, Ren, Wang. AdaBin: Improving Binary Neural Networks with Adaptive Binary Sets. "
                "ECCV 2022. arXiv:2208.08084")
    code = "huawei-noah/Efficient-Computing"
    variants = (Variant("adabin", "adabin"),)

    t_min: float = 1e-3
    t_max: float = 10.0

    def __post_init__(self) -> None:
        super().__post_init__()
        QF.check_ede_range(self.t_min, self.t_max)

    def weight_quantizer(self, layer: nn.Module) -> nn.Module:
        return AdaBinWeight(self.t_min, self.t_max)

    def input_quantizer(self, layer: nn.Module) -> nn.Module | None:
        return AdaBinSign() if self.activations else None

    def shortcut_pass(self):
        return shortcuts_followed_by(Maxout, "maxout")

    def stem_activation(self, channels: int) -> nn.Module:
        return Maxout(channels)
