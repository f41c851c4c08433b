"""Quantizer modules: what a quantized layer applies to its weight and to its input.

Weight quantizers map the latent float weight to the quantized weight used in the forward pass.
Binary ones also expose :meth:`BinaryWeightQuantizer.binarize`, the exact ``(signs, scale)`` pair
the forward uses, which is what a packed checkpoint stores.
"""

from __future__ import annotations

import abc

import torch
from torch import nn

from quantswap import functional as QF

__all__ = [
    "ScheduledQuantizer",
    "BinaryWeightQuantizer",
    "SignActivation",
    "EDESignActivation",
]


class ScheduledQuantizer(nn.Module):
    """A quantizer whose backward depends on where training stands (see ``quantswap.set_progress``)."""

    @abc.abstractmethod
    def set_progress(self, progress: float) -> None:
        """Update the schedule for ``progress`` = fraction of training done, in [0, 1]."""


class BinaryWeightQuantizer(nn.Module):
    """Base of the binary weight quantizers: ``W_q = scale · sign(transform(W))``."""

    #: ``"channel"`` (one scale per output channel), ``"tensor"`` (one per layer) or ``"constant"``
    #: (derived from the weight's shape, nothing to store).
    scale_granularity: str = "channel"

    @abc.abstractmethod
    def binarize(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(signs, scale)``: a bool tensor (True for +1) shaped like ``w`` and a scale that
        broadcasts against it, such that ``forward(w) == scale * (2 * signs - 1)`` exactly."""


class SignActivation(nn.Module):
    """``sign(x)`` with a straight-through estimator (``"clipped"``, ``"approx"`` or ``"identity"``)."""

    def __init__(self, estimator: str = "clipped"):
        super().__init__()
        if estimator not in QF.ESTIMATORS:
            raise ValueError(f"unknown estimator {estimator!r}; choose one of {QF.ESTIMATORS}")
        self.estimator = estimator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return QF.sign_ste(x, self.estimator)

    def extra_repr(self) -> str:
        return f"estimator={self.estimator!r}"


class EDESignActivation(ScheduledQuantizer):
    """``sign(x)`` with IR-Net's Error Decay Estimator, scheduled from ``t_min`` to ``t_max``."""

    def __init__(self, t_min: float = 0.1, t_max: float = 10.0):
        super().__init__()
        self.t_min, self.t_max = t_min, t_max
        self.set_progress(0.0)

    def set_progress(self, progress: float) -> None:
        self.k, self.t = QF.ede_schedule(progress, self.t_min, self.t_max)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return QF.sign_ede(x, self.k, self.t)

    def extra_repr(self) -> str:
        return f"k={self.k:.4g}, t={self.t:.4g}"
