"""Pure quantization math: sign with straight-through estimators, scales and ternarization.

Every function here is stateless and works on plain tensors; the `quantswap.nn` modules and the
methods in `quantswap.methods` are built from them.

Sign convention: quantswap's ``sign`` maps 0 to +1 (``sign(x) = +1 if x >= 0 else -1``), so a
binarized tensor holds exactly two values and packs into one bit per element. ``torch.sign`` maps 0
to 0, which would silently make a binary weight ternary.

The backward rules (docs/methods.md#conventions):

========================  ==========================================  ==================
estimator                 d sign(x) / dx                              used by
========================  ==========================================  ==================
``clipped``               ``1[|x| <= 1]``                             XNOR-Net, Bi-Real weights
``approx``                ``max(0, 2 - 2|x|)`` (ApproxSign)           Bi-Real activations
``ede``                   ``k * t * (1 - tanh(t x)^2)``               IR-Net
``identity``              ``1``                                       McDonnell
========================  ==========================================  ==================

Example:
    >>> import torch
    >>> from quantswap.functional import sign, sign_ste
    >>> sign(torch.tensor([-0.5, 0.0, 2.0]))
    tensor([-1.,  1.,  1.])
    >>> x = torch.tensor([-2.0, -0.5, 0.5, 2.0], requires_grad=True)
    >>> sign_ste(x, "approx").sum().backward()
    >>> x.grad
    tensor([0., 1., 1., 0.])
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import NamedTuple

import torch

__all__ = [
    "ESTIMATORS",
    "sign",
    "fast_sign",
    "channel_piecewise",
    "channel_scale",
    "clipped_grad",
    "approx_grad",
    "ede_grad",
    "sign_ste",
    "sign_ede",
    "scaled_sign_identity",
    "per_channel_mean_abs",
    "mean_abs_sign",
    "mean_abs_sign_with_statistics",
    "RowSign",
    "row_sign_apply",
    "ede_schedule",
    "check_ede_range",
    "ternary_branches",
    "ternary_levels",
    "ternary_combine",
    "ternary_expand",
    "ternary_expand_with_statistics",
    "ternary_apply",
]

ESTIMATORS = ("clipped", "approx", "identity")


def sign(x: torch.Tensor) -> torch.Tensor:
    """Binary sign with ``sign(0) = +1``; no gradient rule (use :func:`sign_ste` for training)."""
    return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)


def _tracing() -> bool:
    """Under ``torch.compile`` or ``torch.export`` (and so ONNX export): the plain formulas, which the
    compiler fuses itself and an exporter translates."""
    return torch.compiler.is_compiling() or torch.compiler.is_exporting()


def _native(*tensors: torch.Tensor) -> bool:
    """Whether the fused C++ kernels (``quantswap/kernels/training.cpp``) take these tensors: eager mode,
    CPU, float32, contiguous. Builds them at first use."""
    if _tracing() or not all(
            t.device.type == "cpu" and t.dtype == torch.float32 and t.is_contiguous() for t in tensors):
        return False
    return _native_module().loaded()


@functools.cache
def _native_module():
    from quantswap.kernels import native  # imported on first use: building the kernels needs a compiler

    return native


def _kernels():
    return torch.ops.quantswap_native


def fast_sign(x: torch.Tensor, scale: torch.Tensor | float = 1.0) -> torch.Tensor:
    """``scale · sign(x)``, the training forward's sign (``scale >= 0``, broadcast against ``x``).

    Equals ``scale * sign(x)`` for every number, ``-0.0`` included, without the boolean mask and
    ``where`` that :func:`sign` reads, which on the CPU cost ten times a multiplication: one fused
    pass where the native kernels run (a scalar or one scale per row of ``x``), else
    ``copysign(scale, x + 0.0)`` (``-0.0 + 0.0`` is ``+0.0``). A NaN in ``x`` gives ``±scale`` here
    where :func:`sign` gives ``-1``.
    """
    if _tracing():  # ONNX has no copysign: this is GreaterOrEqual + Where there
        return sign(x) * scale
    if _native(x):
        if not isinstance(scale, torch.Tensor):
            out = _kernels().scaled_sign(x, None)
            return out if scale == 1.0 else out.mul_(scale)
        if scale.dtype == x.dtype and scale.dim() == x.dim() and scale.numel() == x.shape[0] and x.dim() > 0:
            return _kernels().scaled_sign(x, scale.reshape(-1).contiguous())
    return torch.copysign(torch.as_tensor(scale, dtype=x.dtype, device=x.device), x + 0.0)


def clipped_grad(grad: torch.Tensor, x: torch.Tensor, bound: float | torch.Tensor = 1.0,
                 inclusive: bool = True) -> torch.Tensor:
    """``grad · 1[|x| <= bound]`` (``inclusive``) or ``grad · 1[|x| < bound]``, in one pass.

    The inclusive bound is the next number above ``bound`` in ``x``'s precision, so ``|x| = bound``
    (a Hardtanh output) passes its gradient, as the clipped straight-through estimator says. A tensor
    ``bound`` (ReCU's clamp level) takes a few more passes.
    """
    if isinstance(bound, torch.Tensor):  # a bound computed in the forward: no sync, nothing for torch.compile to break on
        edge = torch.nextafter(bound, bound + 1) if inclusive else bound  # |x| < edge
        return (edge - x.abs()).sign_().clamp_min_(0).mul_(grad)
    if inclusive:
        bound *= 1.0 + torch.finfo(x.dtype).eps
    return torch.ops.aten.hardtanh_backward(grad, x, -bound, bound)


def approx_grad(grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``grad · max(0, 2 − 2|x|)``: Bi-Real's ApproxSign derivative (bit for bit the formula)."""
    if _native(grad, x) and grad.stride() == x.stride():
        return _kernels().approx_grad(grad, x)
    return torch.rsub(x.abs(), 2, alpha=2).clamp_min_(0).mul_(grad)


def ede_grad(grad: torch.Tensor, x: torch.Tensor, k: torch.Tensor | float, t: torch.Tensor | float) -> torch.Tensor:
    """``grad · k·t·(1 − tanh²(t·x))``, the Error Decay Estimator's derivative.

    Computed as ``4·k·t·z(1 − z)`` with ``z = sigmoid(−2t|x|)``, the same function: one sigmoid is
    vectorized on the CPU where ``tanh`` is not, and ``z <= 1/2`` keeps the tails accurate. The native
    kernel computes ``4·k·t·e/(1 + e)²`` with ``e = exp(−2t|x|)``, in one pass.
    """
    if _native(grad, x) and grad.stride() == x.stride():
        return _kernels().ede_grad(grad, x, float(k), float(t))
    z = torch.sigmoid(x.abs().mul_(-2 * t))
    return torch.addcmul(z, z, z, value=-1).mul_(grad).mul_(4 * k * t)


class _SignSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, estimator: str) -> torch.Tensor:
        ctx.estimator = estimator
        if estimator == "clipped" and _native(x):  # the backward needs only where |x| <= 1: one byte, not four
            out, mask = _kernels().sign_with_mask(x)
            ctx.save_for_backward(mask)
            return out
        if estimator != "identity":
            ctx.save_for_backward(x)
        return fast_sign(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        if ctx.estimator == "identity":
            return grad, None
        (saved,) = ctx.saved_tensors
        if saved.dtype == torch.uint8:
            return _kernels().masked_grad(grad.contiguous(), saved), None
        return (clipped_grad(grad, saved) if ctx.estimator == "clipped" else approx_grad(grad, saved)), None


def sign_ste(x: torch.Tensor, estimator: str = "clipped") -> torch.Tensor:
    """``sign(x)`` forward, the named straight-through estimator backward.

    Args:
        x: any tensor.
        estimator: ``"clipped"`` (``1[|x| <= 1]``), ``"approx"`` (Bi-Real's ApproxSign,
            ``max(0, 2 - 2|x|)``) or ``"identity"``.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; choose one of {ESTIMATORS}")
    return _SignSTE.apply(x, estimator)


class _SignEDE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, k: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, k, t)
        return fast_sign(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, k, t = ctx.saved_tensors
        return ede_grad(grad, x, k, t), None, None


def sign_ede(x: torch.Tensor, k: float | torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
    """IR-Net's Error Decay Estimator: ``sign(x)`` forward, ``k·t·(1 − tanh²(t·x))`` backward.

    ``k`` and ``t`` may be numbers or 0-d tensors (a quantizer passes tensors, so that changing them
    does not make torch.compile recompile).
    """
    k, t = (torch.as_tensor(v, device=x.device) for v in (k, t))
    return _SignEDE.apply(x, k, t)


def check_ede_range(t_min: float, t_max: float) -> None:
    """``ValueError`` unless ``0 < t_min < t_max`` (the end points of :func:`ede_schedule`)."""
    if not 0 < t_min < t_max:
        raise ValueError(f"EDE needs 0 < t_min < t_max, got t_min={t_min}, t_max={t_max}")


def ede_schedule(progress: float, t_min: float = 0.1, t_max: float = 10.0) -> tuple[float, float]:
    """IR-Net's EDE schedule at a training ``progress`` in [0, 1]: returns ``(k, t)``.

    ``t = t_min · 10^(progress · log10(t_max / t_min))`` and ``k = max(1/t, 1)`` (docs/methods.md#ir-net).

    Example:
        >>> ede_schedule(0.0)
        (10.0, 0.1)
        >>> ede_schedule(1.0)
        (1.0, 10.0)
    """
    t = t_min * 10 ** (progress * math.log10(t_max / t_min))
    if progress == 1.0:
        t = t_max  # avoid 9.999999999999998 from the float power
    return max(1.0 / t, 1.0), t


class _ScaledSignIdentity(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w: torch.Tensor, scale: float) -> torch.Tensor:
        return fast_sign(w, scale)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


def scaled_sign_identity(w: torch.Tensor, scale: float) -> torch.Tensor:
    """``scale · sign(w)`` forward; backward passes the gradient through unchanged (not scaled).

    McDonnell's rule (docs/methods.md#mcdonnell-one-bit-per-weight): ``∂L/∂W = ∂L/∂Ŵ``, the constant is not applied to the gradient.
    """
    return _ScaledSignIdentity.apply(w, scale)


def per_channel_mean_abs(w: torch.Tensor) -> torch.Tensor:
    """Per-output-channel ``mean|W|``, shaped to broadcast against ``w`` (``[C_out, 1, ...]``).

    One pass summing in double where the native kernels run (the forward and the codecs both read
    this, so they agree bit for bit either way)."""
    if w.dim() > 1 and not (torch.is_grad_enabled() and w.requires_grad) and _native(w):
        return _kernels().row_mean_abs(w).view((-1,) + (1,) * (w.dim() - 1))
    return w.abs().mean(dim=tuple(range(1, w.dim())), keepdim=True)


class RowSign(NamedTuple):
    """A per-row binary weight's numbers, one per output channel: the weight is
    ``(scale if (W − centre)·inverse >= 0 else −scale) + offset`` row by row (absent: ``scale`` 1,
    ``centre`` 0, ``inverse`` 1, no offset). What a weight quantizer's forward returns for
    :func:`row_sign_apply` to compute its weight again in one pass (the backward does)."""

    scale: torch.Tensor | None = None
    centre: torch.Tensor | None = None
    inverse: torch.Tensor | None = None
    offset: torch.Tensor | None = None


@torch.no_grad()
def row_sign_apply(w: torch.Tensor, statistics: RowSign) -> torch.Tensor:
    """The weight a per-row binary quantizer computed from ``w``, again from its :class:`RowSign`: the same
    expression as its native forward, so the same bits, without the per-row sums."""
    return _kernels().row_sign_apply(w, *statistics)


class _MeanAbsSign(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w: torch.Tensor, scale_grad: bool):
        ctx.scale_grad = scale_grad
        if w.dim() > 1 and _native(w):  # one read of each row: per_channel_mean_abs and fast_sign's numbers
            out, scale = _kernels().mean_abs_sign(w)
            ctx.save_for_backward(w, scale.view((-1,) + (1,) * (w.dim() - 1)))  # as per_channel_mean_abs shapes it
            return out, RowSign(scale)
        scale = per_channel_mean_abs(w.detach())
        ctx.save_for_backward(w, scale)
        return fast_sign(w, scale), None

    @staticmethod
    def backward(ctx, grad: torch.Tensor, *_):
        w, scale = ctx.saved_tensors
        if w.dim() > 1 and _native(grad, w):
            return _kernels().mean_abs_sign_backward(grad, w, scale.reshape(-1), ctx.scale_grad), None
        grad_w = clipped_grad(grad, w).mul_(scale)
        if ctx.scale_grad:  # d mean|W| / dW = sgn(W) / n, with sgn(0) = 0 as autograd's abs
            grad_scale = (grad * fast_sign(w)).sum(tuple(range(1, w.dim())), keepdim=True) / w[0].numel()
            grad_w.addcmul_(torch.sign(w), grad_scale)
        return grad_w, None


def mean_abs_sign(w: torch.Tensor, scale_grad: bool = True) -> torch.Tensor:
    """``α · sign(W)`` with ``α = mean|W|`` per output channel; clipped straight-through backward.

    ``scale_grad=True`` (XNOR-Net) also differentiates ``α``:
    ``∂L/∂W = α·g·1[|W| <= 1] + sgn(W)·Σ_j g_j sign(W_j) / n``; ``False`` (Bi-Real's magnitude-aware
    gradient) keeps the first term. The same numbers as composing :func:`per_channel_mean_abs` and
    :func:`sign_ste` under autograd, in a few passes and saving only ``W`` and ``α``.
    """
    return mean_abs_sign_with_statistics(w, scale_grad)[0]


def mean_abs_sign_with_statistics(w: torch.Tensor, scale_grad: bool = True) -> tuple[torch.Tensor, RowSign | None]:
    """:func:`mean_abs_sign`, and where the native kernels ran its :class:`RowSign` (``α`` per row)."""
    return _MeanAbsSign.apply(w, scale_grad)


class _ChannelPiecewise(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, shift_in, pos, neg, shift_out):
        ctx.save_for_backward(x, shift_in, pos, neg)
        return _kernels().channel_piecewise(x, shift_in, pos, neg, shift_out)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, shift_in, pos, neg = ctx.saved_tensors
        grad_x, sums = _kernels().channel_piecewise_backward(grad.contiguous(), x, shift_in, pos, neg)
        return grad_x, -sums[3], sums[0], sums[1], sums[2]


def channel_piecewise(x: torch.Tensor, shift_in: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor,
                      shift_out: torch.Tensor) -> torch.Tensor:
    """Per channel ``c`` (dimension 1 of ``x``): ``(pos_c if u > 0 else neg_c) · u + shift_out_c`` with
    ``u = x − shift_in_c``: RPReLU (``pos = 1``), Maxout (no shifts) and ChannelScale (``pos = neg``).

    Where the native kernels run, one pass forward and one backward (each parameter's gradient summed
    per channel in double, in a fixed order), saving only ``x``; elsewhere the same formula in PyTorch.
    A parameter may be passed twice (ChannelScale): autograd adds its two gradients.
    """
    if x.dim() >= 2 and _native(x, shift_in, pos, neg, shift_out):
        return _ChannelPiecewise.apply(x, shift_in, pos, neg, shift_out)
    params = (shift_in, pos, neg, shift_out)
    no_grad = not torch.is_grad_enabled() or not any(t.requires_grad for t in (x, *params))
    if no_grad and x.dim() == 4 and _native(x.permute(0, 2, 3, 1), *params):  # channels_last inference (packed)
        return _kernels().channel_piecewise(x, *params)
    shape = (1, -1) + (1,) * (x.dim() - 2)
    u = x - shift_in.view(shape)
    return torch.where(u > 0, pos.view(shape), neg.view(shape)) * u + shift_out.view(shape)


class _ChannelScale(torch.autograd.Function):
    """``x · s`` per channel, saving its output rather than its input: the BatchNorm after it (ReCU's
    layout) saves that same tensor, so the two keep one copy. ``∂L/∂s_c = Σ g·x = Σ g·y / s_c``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        zero = torch.zeros_like(scale)
        out = _kernels().channel_piecewise(x, zero, scale, scale, zero)
        ctx.save_for_backward(out, scale)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        out, scale = ctx.saved_tensors
        grad_x, sums = _kernels().channel_scale_backward(grad.contiguous(), out, scale)
        return grad_x, sums / scale


def channel_scale(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``x · scale_c`` per channel ``c`` (dimension 1 of ``x``), ReCU's learned output scale.

    Where the native kernels run and no scale is 0, one pass each way that saves the output, not the
    input (a BatchNorm after it keeps the same tensor); otherwise :func:`channel_piecewise` with
    ``pos = neg = scale``.
    """
    if x.dim() >= 2 and _native(x, scale) and bool(scale.ne(0).all()):
        return _ChannelScale.apply(x, scale)
    zero = torch.zeros_like(scale)
    return channel_piecewise(x, zero, scale, scale, zero)


def ternary_branches(w: torch.Tensor, thresholds: Sequence[float]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per threshold ``τ``, the mask ``|W| >= τ·max|W|`` (as 0/1 in ``w``'s dtype) and the scale
    ``α = mean(|W| : mask)``.

    The single definition the forward (:func:`ternary_expand`), :func:`ternary_levels` and the
    ternary codec share, so codes decode to the forward's weight bit for bit. Masks come from
    float arithmetic rather than comparisons into boolean tensors (ten times slower on the CPU).
    """
    w = w.detach()
    # the forward's α where it runs natively (summed in double by its kernel), else the float sums below
    native_alphas = _kernels().ternary_expand(w, list(thresholds))[1].unbind() if _native(w) else None
    mag = w.abs()
    peak = mag.max()
    branches = []
    for i, tau in enumerate(thresholds):
        below = torch.nextafter(tau * peak, -peak.new_ones(()))  # |W| > below  <=>  |W| >= tau * peak
        mask = (mag - below).sign_().clamp_min_(0)  # x - y is never 0 for floats x > y
        if native_alphas is not None:
            branches.append((mask, native_alphas[i]))
            continue
        # a float sum of ones: exact to 2^24 weights, a rounding of 1e-7 beyond (the codec reads the same α)
        count = mask.sum().clamp_min(1)
        branches.append((mask, (mag * mask).sum() / count))  # α stays a tensor: no sync
    return branches


@torch.no_grad()
def ternary_levels(w: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One ternarization branch: codes in {-1, 0, +1} and the per-layer scale ``α``.

    ``δ = threshold · max|W|``; a weight is non-zero when ``|W| >= δ``, with the sign of ``W``;
    ``α = mean(|W| : |W| >= δ)`` (docs/methods.md#ternary-weights-with-residual-expansion). The authors' code maps ``W = −δ`` exactly to 0,
    an asymmetry of measure zero that quantswap does not copy: here ``±δ`` both map to ``±1``.
    """
    ((mask, alpha),) = ternary_branches(w, (threshold,))
    return fast_sign(w, mask), alpha


def ternary_combine(masks: Sequence[torch.Tensor], alphas: Sequence[torch.Tensor], negative: torch.Tensor,
                    dtype: torch.dtype) -> torch.Tensor:
    """``Σ_b α_b·mask_b`` with the sign applied once: ``-levels`` where ``negative``."""
    levels = _ternary_levels_sum(masks, alphas, dtype)
    return torch.where(negative, -levels, levels)


def _ternary_levels_sum(masks: Sequence[torch.Tensor], alphas: Sequence[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    levels = torch.zeros(masks[0].shape, dtype=dtype, device=masks[0].device)
    for mask, alpha in zip(masks, alphas, strict=True):
        levels.addcmul_(mask.to(dtype), alpha.to(dtype))
    return levels


class _TernaryExpand(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w: torch.Tensor, thresholds: tuple[float, ...]):
        ctx.save_for_backward(w)
        ctx.branches = len(thresholds)
        if _native(w):
            out, alphas, deltas = _kernels().ternary_expand(w, list(thresholds))
            return out, (deltas, alphas)
        masks, alphas = zip(*ternary_branches(w, thresholds), strict=True)
        return fast_sign(w, _ternary_levels_sum(masks, alphas, w.dtype)), None  # = ternary_combine(..., w < 0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor, *_):
        (w,) = ctx.saved_tensors
        if _native(grad, w):
            return _kernels().clipped_scaled_grad(grad, w, 1.0, float(ctx.branches)), None
        return clipped_grad(grad, w, inclusive=False).mul_(ctx.branches), None


def ternary_expand(w: torch.Tensor, thresholds: Sequence[float]) -> torch.Tensor:
    """Residual-expansion ternary weight: ``Σ_b α_b · T_b(W)``, one branch per threshold.

    Summing the branch weights and running one convolution equals summing ``t`` branch
    convolutions (convolution is linear), at a ``t``-th of the cost. Backward is the
    straight-through estimator of every branch added up: ``∂L/∂W = t · g · 1[|W| < 1]``;
    ``α`` and ``δ`` are not differentiated (docs/methods.md#ternary-weights-with-residual-expansion).
    """
    return ternary_expand_with_statistics(w, thresholds)[0]


def ternary_expand_with_statistics(w: torch.Tensor, thresholds: Sequence[float]
                                   ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
    """:func:`ternary_expand`, and where the native kernels ran its ``(δ, α)`` per branch, with which
    :func:`ternary_apply` computes the same weight again in one pass (``None`` elsewhere)."""
    return _TernaryExpand.apply(w, tuple(thresholds))


@torch.no_grad()
def ternary_apply(w: torch.Tensor, statistics: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """``sign(W) · Σ_b α_b · 1[|W| >= δ_b]`` from :func:`ternary_expand_with_statistics`' ``(δ, α)``: its
    weight bit for bit, without the pass for ``max|W|`` and the one summing each branch's ``α``."""
    deltas, alphas = statistics
    return _kernels().ternary_apply(w, deltas, alphas)
