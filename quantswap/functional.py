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

import math
from collections.abc import Sequence

import torch

__all__ = [
    "ESTIMATORS",
    "sign",
    "sign_ste",
    "sign_ede",
    "scaled_sign_identity",
    "per_channel_mean_abs",
    "ede_schedule",
    "check_ede_range",
    "ternary_branches",
    "ternary_levels",
    "ternary_combine",
    "ternary_expand",
]

ESTIMATORS = ("clipped", "approx", "identity")


def sign(x: torch.Tensor) -> torch.Tensor:
    """Binary sign with ``sign(0) = +1``; no gradient rule (use :func:`sign_ste` for training)."""
    return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)


def _surrogate_grad(x: torch.Tensor, estimator: str) -> torch.Tensor:
    if estimator == "clipped":
        return (x.abs() <= 1).to(x.dtype)
    if estimator == "approx":
        return (2.0 - 2.0 * x.abs()).clamp_min(0.0)
    raise AssertionError(estimator)  # identity never reaches here


class _SignSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, estimator: str) -> torch.Tensor:
        ctx.estimator = estimator
        if estimator != "identity":
            ctx.save_for_backward(x)
        return sign(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        if ctx.estimator == "identity":
            return grad, None
        (x,) = ctx.saved_tensors
        return grad * _surrogate_grad(x, ctx.estimator), None


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
        return sign(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, k, t = ctx.saved_tensors
        return grad * (k * t) * (1.0 - torch.tanh(x * t).square()), None, None


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
        return sign(w) * scale

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


def scaled_sign_identity(w: torch.Tensor, scale: float) -> torch.Tensor:
    """``scale · sign(w)`` forward; backward passes the gradient through unchanged (not scaled).

    McDonnell's rule (docs/methods.md#mcdonnell-one-bit-per-weight): ``∂L/∂W = ∂L/∂Ŵ``, the constant is not applied to the gradient.
    """
    return _ScaledSignIdentity.apply(w, scale)


def per_channel_mean_abs(w: torch.Tensor) -> torch.Tensor:
    """Per-output-channel ``mean|W|``, shaped to broadcast against ``w`` (``[C_out, 1, ...]``)."""
    return w.abs().mean(dim=tuple(range(1, w.dim())), keepdim=True)


def ternary_branches(w: torch.Tensor, thresholds: Sequence[float]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per threshold ``τ``, the mask ``|W| >= τ·max|W|`` and the scale ``α = mean(|W| : mask)``.

    The single definition the forward (:func:`ternary_expand`), :func:`ternary_levels` and the
    ternary codec share, so codes decode to the forward's weight bit for bit.
    """
    mag = w.detach().abs()
    peak = mag.max()
    branches = []
    for tau in thresholds:
        mask = mag >= tau * peak
        branches.append((mask, (mag * mask).sum() / mask.sum().clamp_min(1)))  # α stays a tensor: no sync
    return branches


@torch.no_grad()
def ternary_levels(w: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One ternarization branch: codes in {-1, 0, +1} and the per-layer scale ``α``.

    ``δ = threshold · max|W|``; a weight is non-zero when ``|W| >= δ``, with the sign of ``W``;
    ``α = mean(|W| : |W| >= δ)`` (docs/methods.md#ternary-weights-with-residual-expansion). The authors' code maps ``W = −δ`` exactly to 0,
    an asymmetry of measure zero that quantswap does not copy: here ``±δ`` both map to ``±1``.
    """
    ((mask, alpha),) = ternary_branches(w, (threshold,))
    codes = torch.where(mask, sign(w), torch.zeros((), dtype=w.dtype, device=w.device))
    return codes, alpha


def ternary_combine(masks: Sequence[torch.Tensor], alphas: Sequence[torch.Tensor], negative: torch.Tensor,
                    dtype: torch.dtype) -> torch.Tensor:
    """``Σ_b α_b·mask_b`` with the sign applied once: ``-levels`` where ``negative``."""
    levels = torch.zeros(negative.shape, dtype=dtype, device=negative.device)
    for mask, alpha in zip(masks, alphas, strict=True):
        levels.addcmul_(mask.to(dtype), alpha.to(dtype))
    return torch.where(negative, -levels, levels)


class _TernaryExpand(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w: torch.Tensor, thresholds: tuple[float, ...]) -> torch.Tensor:
        ctx.save_for_backward(w)
        ctx.branches = len(thresholds)
        masks, alphas = zip(*ternary_branches(w, thresholds), strict=True)
        return ternary_combine(masks, alphas, w < 0, w.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (w,) = ctx.saved_tensors
        return grad * (w.abs() < 1).to(grad.dtype) * ctx.branches, None


def ternary_expand(w: torch.Tensor, thresholds: Sequence[float]) -> torch.Tensor:
    """Residual-expansion ternary weight: ``Σ_b α_b · T_b(W)``, one branch per threshold.

    Summing the branch weights and running one convolution equals summing ``t`` branch
    convolutions (convolution is linear), at a ``t``-th of the cost. Backward is the
    straight-through estimator of every branch added up: ``∂L/∂W = t · g · 1[|W| < 1]``;
    ``α`` and ``δ`` are not differentiated (docs/methods.md#ternary-weights-with-residual-expansion).
    """
    return _TernaryExpand.apply(w, tuple(thresholds))
