"""Folding the BatchNorm after a packed convolution into the convolution's output transform.

A packed convolution ends in ``y = alpha * dot + bias`` per output channel (plus AdaBin's offset terms);
an eval-mode BatchNorm right after it is another per-channel affine map, so both fold into one:
``alpha' = alpha * g`` (and each offset coefficient times ``g``), ``bias' = (bias - mean) * g + beta`` with
``g = gamma / sqrt(var + eps)``. :func:`quantswap.freeze`
folds every BatchNorm the traced graph allows (the convolution's only user, a plain
``nn.BatchNorm2d`` with running statistics, each called once); the folded BatchNorm stays in the
model with its state dict (a :class:`FoldedBatchNorm2d` whose forward passes its input through), so
the model saves, loads and unfreezes as before, and loading a state dict refolds.

Example:
    >>> import torch, quantswap
    >>> from torchvision.models import resnet18
    >>> bnn = quantswap.binarize(resnet18(num_classes=10), method="xnor").eval()
    >>> packed = quantswap.freeze(bnn)
    >>> len(quantswap.get_freeze_report(packed).folded), type(packed.layer1[0].bn1).__name__
    (19, 'FoldedBatchNorm2d')
    >>> decoded = quantswap.freeze(bnn, backend="float")
    >>> h = torch.randn(2, 64, 8, 8)
    >>> block, reference = packed.layer1[0], decoded.layer1[0]
    >>> torch.allclose(block.bn1(block.conv1(h)), reference.bn1(reference.conv1(h)), atol=1e-5)
    True
"""

from __future__ import annotations

import torch
from torch import fx, nn

from quantswap.nn.packed import PackedConv2d

__all__ = ["FoldedBatchNorm2d", "fold_batchnorms", "refold_batchnorms", "unfold_batchnorm"]


class FoldedBatchNorm2d(nn.BatchNorm2d):
    """A BatchNorm2d folded into the packed convolution before it: its forward returns its input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def fold_batchnorms(model: nn.Module) -> dict[str, str]:
    """Fold every foldable BatchNorm of a frozen model's graph into the packed convolution before it;
    returns ``{batchnorm: convolution}``."""
    graph = getattr(model, "graph", None)
    if not isinstance(graph, fx.Graph):
        return {}
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    folded = {}
    for node in graph.nodes:
        bn_node = next(iter(node.users)) if node.op == "call_module" and len(node.users) == 1 else None
        if bn_node is None or bn_node.op != "call_module" or bn_node.args[:1] != (node,) or len(bn_node.args) != 1:
            continue
        conv, bn = model.get_submodule(node.target), model.get_submodule(bn_node.target)
        if isinstance(bn, FoldedBatchNorm2d) and bn.folded_into is conv:  # a packed model frozen again
            folded[bn_node.target] = node.target
        elif (isinstance(conv, PackedConv2d) and type(bn) is nn.BatchNorm2d and bn.running_var is not None
                and calls[node.target] == calls[bn_node.target] == 1 and not bn_node.kwargs):
            _fold(conv, bn)
            folded[bn_node.target] = node.target
    return folded


def refold_batchnorms(model: nn.Module) -> int:
    """Fold each folded BatchNorm's current statistics and parameters into its convolution again, so the model
    computes what its state dict holds after they changed in place (``recalibrate_bn``, a hand edit); returns
    how many were refolded."""
    convs = [m for m in model.modules() if isinstance(m, PackedConv2d) and getattr(m, "folded_bn", None) is not None]
    for conv in convs:
        _refold(conv)
    return len(convs)


def _fold(conv: PackedConv2d, bn: nn.BatchNorm2d) -> None:
    bn.__class__ = FoldedBatchNorm2d
    object.__setattr__(bn, "folded_into", conv)  # plain attributes, not submodules: the model owns both
    object.__setattr__(conv, "folded_bn", bn)
    for module in (conv, bn):  # conv: its codes may load after the BatchNorm
        module.register_load_state_dict_post_hook(_refold_after_load)
    _refold(conv)


def _refold_after_load(module: nn.Module, incompatible_keys) -> None:
    _refold(module if isinstance(module, PackedConv2d) else module.folded_into)


@torch.no_grad()
def _refold(conv: PackedConv2d) -> None:
    bn = conv.folded_bn
    g = torch.rsqrt(bn.running_var.float() + bn.eps)
    if bn.weight is not None:
        g = g * bn.weight.float()
    shift = -bn.running_mean.float() * g if bn.bias is None else bn.bias.float() - bn.running_mean.float() * g
    bias = shift if conv.bias is None else conv.bias.float() * g + shift
    conv.register_buffer("folded_gain", g.contiguous(), persistent=False)
    conv.register_buffer("folded_bias", bias.contiguous(), persistent=False)


def unfold_batchnorm(conv: nn.Module) -> None:
    """Undo :func:`fold_batchnorms` for one layer (nothing if no BatchNorm was folded into it)."""
    bn = getattr(conv, "folded_bn", None)
    if bn is None:
        return
    for module in (conv, bn):  # by identity: a handle would not follow a deepcopy of the model
        hooks = module._load_state_dict_post_hooks
        for key in [k for k, hook in hooks.items() if hook is _refold_after_load]:
            del hooks[key]
    for name in ("folded_gain", "folded_bias"):
        delattr(conv, name)
    object.__delattr__(conv, "folded_bn")
    object.__delattr__(bn, "folded_into")
    bn.__class__ = nn.BatchNorm2d
