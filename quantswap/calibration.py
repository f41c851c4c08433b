"""BatchNorm re-estimation after a swap: :func:`recalibrate_bn`.

A swapped model's BatchNorms still hold the parent's running statistics, measured on real-valued
activations; the quantized layers feed them other ones. Re-estimating them on a few batches of
training data (torch's ``update_bn``, the tool of stochastic weight averaging) gives the swapped model
statistics of its own before fine-tuning starts.

Example:
    >>> import torch, quantswap
    >>> from torchvision.models import resnet18
    >>> bnn = quantswap.binarize(resnet18(num_classes=10), method="irnet")
    >>> batches = [(torch.randn(8, 3, 32, 32), torch.zeros(8)) for _ in range(4)]
    >>> bnn = quantswap.recalibrate_bn(bnn, batches, batches=2)
    >>> int(bnn.layer1[0].bn1.num_batches_tracked), bnn.training
    (2, True)
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Iterable

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.optim.swa_utils import update_bn

from quantswap.nn.bn_folding import fold_batchnorms, unfold_batchnorm
from quantswap.nn.packed import PackedConv2d

__all__ = ["recalibrate_bn"]


def recalibrate_bn(model: nn.Module, loader: Iterable, *, batches: int = 100,
                   device: torch.device | str | None = None) -> nn.Module:
    """Re-estimate every BatchNorm's running mean and variance of ``model`` on the first ``batches``
    batches of ``loader`` (tensors, or tuples whose first element is the input), in place.

    The statistics are the plain average over those batches (``momentum=None`` while measuring);
    momentum, parameters and the model's train/eval mode are left as they were. On a packed model
    (``quantswap.freeze``, what ``from_pretrained`` returns) the BatchNorms folded into the packed
    convolutions are unfolded while measuring and folded again with their new statistics. Returns ``model``.
    """
    if isinstance(batches, bool) or not isinstance(batches, int) or batches < 1:
        raise ValueError(f"batches must be a positive integer, got {batches!r}")
    if not any(isinstance(m, _BatchNorm) for m in model.modules()):
        raise ValueError("recalibrate_bn: the model has no BatchNorm layer to re-estimate")
    folded = [m for m in model.modules() if isinstance(m, PackedConv2d) and getattr(m, "folded_bn", None) is not None]
    for conv in folded:  # a folded BatchNorm passes its input through: it would measure nothing
        unfold_batchnorm(conv)
    try:
        with warnings.catch_warnings():  # measuring is what training mode is for here
            warnings.filterwarnings("ignore", message="a packed .frozen. model is for inference")
            update_bn(itertools.islice(loader, batches), model, device=device)
    finally:
        if folded:
            fold_batchnorms(model)
    return model
