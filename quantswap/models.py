"""Base models by allow-listed builder name: ``torchvision:NAME`` or ``timm:NAME``.

Only these two builders are ever called; a name never becomes an import path, so a config file
naming a model cannot run arbitrary code.

Example:
    >>> from quantswap.models import build_model, parse_model_name
    >>> parse_model_name("resnet18")
    ('torchvision', 'resnet18')
    >>> type(build_model("torchvision:resnet18", num_classes=10)).__name__
    'ResNet'
"""

from __future__ import annotations

from typing import Any

from torch import nn

__all__ = ["MODEL_SOURCES", "parse_model_name", "build_model"]

MODEL_SOURCES = ("torchvision", "timm")


def parse_model_name(name: str) -> tuple[str, str]:
    """``"timm:resnet18d"`` -> ``("timm", "resnet18d")``; a bare name means torchvision."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"a model name such as 'resnet18' or 'timm:resnet18d' is needed, got {name!r}")
    source, sep, arch = name.partition(":")
    if not sep:
        source, arch = "torchvision", name
    if source not in MODEL_SOURCES:
        raise ValueError(f"unknown model source {source!r} in {name!r}; use one of {', '.join(MODEL_SOURCES)}, "
                         "e.g. 'torchvision:resnet18' or 'timm:resnet18d'")
    return source, arch


def build_model(name: str, weights: str | None = None, **kwargs: Any) -> nn.Module:
    """Build a base model; ``weights`` is torchvision's weights name or ``"DEFAULT"`` (timm: pretrained)."""
    source, arch = parse_model_name(name)
    if source == "torchvision":
        import torchvision

        known = torchvision.models.list_models(module=torchvision.models)
        if arch not in known:
            raise ValueError(f"unknown torchvision classification model {arch!r}; see "
                             "torchvision.models.list_models(module=torchvision.models)")
        return torchvision.models.get_model(arch, weights=weights, **kwargs)
    import timm

    if not timm.is_model(arch):
        raise ValueError(f"unknown timm model {arch!r}; see timm.list_models()")
    return timm.create_model(arch, pretrained=weights is not None, **kwargs)
