"""Quantizer modules: what a quantized layer applies to its weight and to its input.

Weight quantizers map the latent float weight to the quantized weight used in the forward pass.
Every one is also a codec: :meth:`WeightQuantizer.encode` gives the exact integer codes and scales
the forward uses, :meth:`WeightQuantizer.decode` rebuilds the quantized weight from them bit for
bit. Codes are what :func:`quantswap.freeze` keeps and what a packed checkpoint stores.

Example:
    >>> import torch
    >>> from quantswap.methods.xnor import XnorWeight
    >>> q, w = XnorWeight().eval(), torch.randn(4, 3, 3, 3)
    >>> codes, scale = q.encode(w)
    >>> codes.dtype, tuple(scale.shape), torch.equal(q.decode(codes, scale), q(w))
    (torch.int8, (4,), True)
"""

from __future__ import annotations

import abc
from typing import Any

import torch
from torch import nn

from quantswap import functional as QF

__all__ = [
    "ScheduledQuantizer",
    "EDEScheduled",
    "WeightQuantizer",
    "BinaryWeightQuantizer",
    "FrozenWeight",
    "RealWeight",
    "SignActivation",
    "EDESignActivation",
]


class ScheduledQuantizer(nn.Module):
    """A quantizer whose backward depends on where training stands (see ``quantswap.set_progress``)."""

    @abc.abstractmethod
    def set_progress(self, progress: float) -> None:
        """Update the schedule for ``progress`` = fraction of training done, in [0, 1]."""


class EDEScheduled(ScheduledQuantizer):
    """IR-Net's Error Decay Estimator schedule: ``(k, t)`` from ``t_min`` to ``t_max`` as training goes.

    The one home of the schedule's state, shared by IR-Net's weight and activation quantizers.
    """

    def __init__(self, t_min: float = 0.1, t_max: float = 10.0):
        super().__init__()
        self.t_min, self.t_max = t_min, t_max
        # (k, t) also as a tensor, which the forward reads: torch.compile guards on Python numbers, so a
        # schedule held only in floats would recompile the model at every step. Not in the state dict.
        self.register_buffer("kt", torch.zeros(2), persistent=False)
        self.set_progress(0.0)

    def set_progress(self, progress: float) -> None:
        self.k, self.t = QF.ede_schedule(progress, self.t_min, self.t_max)
        self.kt.copy_(torch.tensor((self.k, self.t), dtype=self.kt.dtype))

    def extra_repr(self) -> str:
        return f"k={self.k:.4g}, t={self.t:.4g}"


class WeightQuantizer(nn.Module):
    """A weight quantizer that is also an exact codec for the weight it produces.

    ``decode(*encode(w))`` equals ``forward(w)`` bit for bit. Codes are ``int8``: ``±1`` for binary
    weights (``code_levels = 2``), ``-1, 0, +1`` for ternary ones (``code_levels = 3``); quantizers
    with several branches (residual expansion) stack them on a leading dimension of ``branches``.
    """

    code_levels: int = 2
    #: Float values stored per output channel (AdaBin's ``α`` and ``β``: 2); counted by ``summary``.
    scales_per_channel: int = 1
    #: Whether the quantized weight is ``Σ scale · codes`` with no offset (see :meth:`dequantize_offset`).
    centred: bool = True

    @property
    def branches(self) -> int:
        return 1

    def cache_key(self) -> tuple:
        """What, besides the latent weight, the forward's value depends on (a quantizer with such state
        returns it): an eval-mode layer reuses its quantized weight while weight and key are unchanged."""
        return ()

    def quantize(self, w: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """``forward(w)``, and what :meth:`requantize` may reuse to compute it again (``None``: nothing).

        A training layer does not keep its quantized weight for the backward (the convolution's input
        gradient needs it); it computes it again there. A quantizer whose forward reduces the weight to a
        few statistics (per row: a mean, a spread, a scale; ternary: ``max|W|`` and a mean per branch)
        returns them here, so that the second time is one pass.
        """
        return self(w), None

    @torch.no_grad()
    def requantize(self, w: torch.Tensor, statistics: Any = None) -> torch.Tensor:
        """``forward(w)`` without autograd, from :meth:`quantize`'s statistics of this same ``w`` (a
        :class:`~quantswap.functional.RowSign`: one pass; ``None``: the forward again)."""
        if isinstance(statistics, QF.RowSign):
            return QF.row_sign_apply(w, statistics)
        return self(w)

    @abc.abstractmethod
    def encode(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(codes, scale)`` of the quantized weight; ``scale`` is ``None`` when it follows from the shape."""

    @abc.abstractmethod
    def decode(self, codes: torch.Tensor, scale: torch.Tensor | None, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The quantized weight from :meth:`encode`'s output, in ``dtype`` (default: the scale's)."""

    def dequantize_terms(self, codes: torch.Tensor, scale: torch.Tensor | None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The quantized weight as ``Σ scale_b · codes_b``: per term, ``int8`` codes shaped like the weight
        and a float scale, either 0-d (per layer) or one per output channel (``[C_out]``).

        This is how ONNX stores the weight (:func:`quantswap.export_onnx`: one INT2 ``Cast`` and ``Mul`` per
        term); the sum must equal :meth:`decode` in float32. A codec that cannot be written so raises
        ``NotImplementedError``.
        """
        raise NotImplementedError(f"{type(self).__name__} does not say how to write its weight as codes × scales")

    def scale_problem(self, scale: torch.Tensor) -> str | None:
        """Why a stored ``scale`` cannot be this codec's (a checkpoint is checked on load), or ``None``."""
        if not bool((torch.isfinite(scale) & (scale >= 0)).all()):
            return "a scale that is negative, infinite or NaN"
        return None

    def dequantize_offset(self, codes: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor | None:
        """A float offset per output channel added to :meth:`dequantize_terms`' sum (AdaBin's binary set
        ``{β − α, β + α}`` has one), or ``None`` (the default: a weight centred on 0)."""
        return None


class BinaryWeightQuantizer(WeightQuantizer):
    """Base of the binary weight quantizers: ``W_q = scale · sign(transform(W))``.

    The default :meth:`binarize` is XNOR-Net's: ``sign(W)`` and ``mean|W|`` per output channel.
    """

    #: ``"channel"`` (one scale per output channel), ``"tensor"`` (one per layer) or ``"constant"``
    #: (derived from the weight's shape by :meth:`constant_scale`, nothing to store).
    scale_granularity: str = "channel"

    @torch.no_grad()
    def binarize(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(signs, scale)``: a bool tensor (True for +1) shaped like ``w`` and a scale that
        broadcasts against it, such that ``forward(w) == scale * (2 * signs - 1)`` exactly."""
        return w >= 0, QF.per_channel_mean_abs(w)

    def constant_scale(self, codes: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} has scale_granularity={self.scale_granularity!r}")

    @torch.no_grad()
    def encode(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        signs, scale = self.binarize(w)
        codes = torch.where(signs, 1, -1).to(torch.int8)
        if self.scale_granularity == "constant":
            return codes, None
        return codes, scale.reshape(-1) if self.scale_granularity == "channel" else scale.reshape(())

    def dequantize_terms(self, codes: torch.Tensor, scale: torch.Tensor | None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        if scale is None:
            scale = self.constant_scale(codes, torch.float32)
        return [(codes, scale.float())]

    def decode(self, codes: torch.Tensor, scale: torch.Tensor | None, dtype: torch.dtype | None = None) -> torch.Tensor:
        if scale is None:
            scale = self.constant_scale(codes, dtype or torch.get_default_dtype())
        elif self.scale_granularity == "channel":
            scale = scale.view(-1, *(1,) * (codes.dim() - 1))
        scale = scale.to(dtype or scale.dtype)
        return scale * codes.to(scale.dtype)


def codes_problem(codes: torch.Tensor, codec: nn.Module) -> str | None:
    """What is wrong with ``codes`` for ``codec`` (a value outside its levels: ``-1, +1``, or ``-1, 0, +1`` for a
    ternary codec), or ``None``."""
    allowed = (-1, 0, 1) if getattr(codec, "code_levels", 2) == 3 else (-1, 1)
    if codes.is_floating_point() and not bool((codes == codes.round()).all()):
        return f"codes must be whole numbers in {allowed}"
    bad = ~torch.isin(codes, torch.tensor(allowed, dtype=codes.dtype, device=codes.device))
    if bool(bad.any()):
        return f"codes must be in {allowed}, found {codes[bad].flatten()[0].item()!r}"
    return None


class FrozenWeight(nn.Module):
    """Takes a weight quantizer's place in a frozen layer (see :func:`quantswap.freeze`).

    Holds the quantizer's ``codes`` and ``scale`` (the layer's persistent state) and the original
    quantizer as ``codec`` (to decode them). Its forward is the identity: the frozen layer's
    ``weight`` already is the quantized weight, decoded once.
    """

    def __init__(self, codec: WeightQuantizer, codes: torch.Tensor, scale: torch.Tensor | None):
        super().__init__()
        self.codec = codec
        self.register_buffer("codes", codes)
        self.register_buffer("scale", scale)

    def decode(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        return self.codec.decode(self.codes, self.scale, dtype)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        codes = state_dict.get(prefix + "codes")
        problem = codes_problem(codes, self.codec) if isinstance(codes, torch.Tensor) else None
        if problem:
            error_msgs.append(f"{prefix}codes: {problem}")
            return
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w


class RealWeight(nn.Module):
    """The weight "quantizer" of a W32/A1 layer (``binarize(model, method, weights=False)``): the
    latent weight itself. Such a model is the first stage of two-step training; it is not a codec, so
    it neither freezes nor saves until :func:`quantswap.quantize_weights` gives it the method's
    weight quantizers (the second stage)."""

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w


class SignActivation(nn.Module):
    """``sign(x)`` with a straight-through estimator (``"clipped"``, ``"approx"`` or ``"identity"``)."""

    #: The forward is exactly :func:`quantswap.functional.sign`: a packed layer may binarize for it.
    plain_sign = True

    def __init__(self, estimator: str = "clipped"):
        super().__init__()
        if estimator not in QF.ESTIMATORS:
            raise ValueError(f"unknown estimator {estimator!r}; choose one of {QF.ESTIMATORS}")
        self.estimator = estimator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return QF.sign_ste(x, self.estimator)

    def extra_repr(self) -> str:
        return f"estimator={self.estimator!r}"


class EDESignActivation(EDEScheduled):
    """``sign(x)`` with IR-Net's Error Decay Estimator, scheduled from ``t_min`` to ``t_max``."""

    plain_sign = True  # as SignActivation's

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return QF.sign_ede(x, self.kt[0], self.kt[1])
