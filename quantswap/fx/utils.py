"""Module lookup and replacement by qualified name."""

from __future__ import annotations

from torch import nn

__all__ = ["parent_name", "get_module", "set_module"]


def parent_name(target: str) -> tuple[str, str]:
    """``'layer1.0.conv1'`` -> ``('layer1.0', 'conv1')``."""
    *parent, name = target.rsplit(".", 1)
    return (parent[0] if parent else ""), name


def get_module(root: nn.Module, target: str) -> nn.Module:
    return root.get_submodule(target) if target else root


def set_module(root: nn.Module, target: str, module: nn.Module) -> None:
    """Replace (or add) the submodule at ``target``; the new module takes the old one's train/eval mode."""
    parent, name = parent_name(target)
    owner = get_module(root, parent)
    old = getattr(owner, name, None)
    module.train(old.training if isinstance(old, nn.Module) else owner.training)
    setattr(owner, name, module)
