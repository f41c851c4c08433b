""":func:`freeze`: the inference form of a swapped model."""

from __future__ import annotations

import copy

from torch import nn

from quantswap.nn.layers import QuantLayer

__all__ = ["freeze", "is_frozen"]


def freeze(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """The inference form of a swapped model: quantized weights computed once, latent weights dropped.

    Every quantized layer keeps its method's integer codes and scales (its state dict) and a weight
    decoded from them once, so no forward re-quantizes anything. Outputs equal the eval-mode
    swapped model's bit for bit. The result is in eval mode; it cannot be trained further (swap the
    float model again for that, or save with ``keep_latent=True``).

    Example:
        >>> import torch, quantswap
        >>> from torchvision.models import resnet18
        >>> bnn = quantswap.binarize(resnet18(num_classes=10), method="irnet").eval()
        >>> fast = quantswap.freeze(bnn)
        >>> x = torch.randn(2, 3, 32, 32)
        >>> torch.equal(fast(x), bnn(x)), fast.layer1[0].conv1.weight.requires_grad
        (True, False)
        >>> sorted(k for k in fast.state_dict() if k.startswith("layer1.0.conv1."))
        ['layer1.0.conv1.weight_quantizer.codes', 'layer1.0.conv1.weight_quantizer.scale']
    """
    if not any(isinstance(m, QuantLayer) for m in model.modules()):
        raise ValueError("freeze takes a model swapped by quantswap.binarize/ternarize; this one has no quantized layer")
    if not inplace:
        model = copy.deepcopy(model)
    for module in model.modules():
        if isinstance(module, QuantLayer):
            module.freeze()
    return model.eval()


def is_frozen(model: nn.Module) -> bool:
    """Whether ``model`` holds quantized layers and all of them are frozen."""
    layers = [m for m in model.modules() if isinstance(m, QuantLayer)]
    return bool(layers) and all(m.is_frozen for m in layers)
