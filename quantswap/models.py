"""Base models by allow-listed builder name: ``torchvision:NAME`` or ``timm:NAME``.

Only these two builders are ever called; a name never becomes an import path, and a checkpoint's
builder arguments are limited to :data:`SAFE_BUILDER_ARGS` with plain values, so a config file
naming a model cannot run arbitrary code. :func:`identify_base_model` finds the builder name and
arguments of a model built by torchvision or timm, which is what a checkpoint records.

Example:
    >>> from quantswap.models import build_model, parse_model_name
    >>> parse_model_name("resnet18")
    ('torchvision', 'resnet18')
    >>> type(build_model("torchvision:resnet18", num_classes=10)).__name__
    'ResNet'
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import warnings
from typing import Any

import torch
from torch import nn

__all__ = [
    "MODEL_SOURCES",
    "SAFE_BUILDER_ARGS",
    "BaseModelSpec",
    "ModelFingerprint",
    "parse_model_name",
    "check_model_name",
    "build_model",
    "fingerprint",
    "identify_base_model",
]

MODEL_SOURCES = ("torchvision", "timm")
#: Builder arguments a checkpoint may pass, and their types. Anything else (``weights``,
#: ``pretrained``, timm's ``checkpoint_path``, callables) is refused when a config is read.
SAFE_BUILDER_ARGS: dict[str, tuple[type, ...]] = {
    "num_classes": (int,),
    "in_chans": (int,),
    "image_size": (int,),
    "aux_logits": (bool,),
    "transform_input": (bool,),
    "global_pool": (str,),
    "drop_rate": (int, float),
    "drop_path_rate": (int, float),
    "dropout": (int, float),
}
#: The range a numeric builder argument may take in a checkpoint: a tiny config must not be able to ask
#: for a model of gigabytes (ImageNet-22k's 21,843 classes is the largest head in use).
BUILDER_ARG_RANGES: dict[str, tuple[float, float]] = {
    "num_classes": (0, 100_000),
    "in_chans": (1, 64),
    "image_size": (8, 2048),
    "drop_rate": (0.0, 1.0),
    "drop_path_rate": (0.0, 1.0),
    "dropout": (0.0, 1.0),
}
#: timm's global pooling types.
GLOBAL_POOLS = ("", "avg", "max", "avgmax", "catavgmax", "fast", "token", "map")
#: Attributes torchvision models keep of the builder arguments that the state dict does not show.
_RECORDED_ATTRIBUTES = ("aux_logits", "transform_input", "image_size")


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


def check_model_name(name: str) -> tuple[str, str]:
    """:func:`parse_model_name`, and an error unless the builder knows the architecture."""
    source, arch = parse_model_name(name)
    if source == "torchvision":
        import torchvision

        if arch not in torchvision.models.list_models(module=torchvision.models):
            close = difflib.get_close_matches(arch, torchvision.models.list_models(module=torchvision.models), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"unknown torchvision classification model {arch!r}{hint}; see "
                             "torchvision.models.list_models(module=torchvision.models), or use timm:NAME")
    else:
        import timm

        if not timm.is_model(arch):
            close = difflib.get_close_matches(arch, timm.list_models(), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"unknown timm model {arch!r}{hint}; see timm.list_models()")
    return source, arch


def build_model(name: str, weights: str | None = None, **kwargs: Any) -> nn.Module:
    """Build a base model; ``weights`` is torchvision's weights name or ``"DEFAULT"`` (timm: pretrained)."""
    source, arch = check_model_name(name)
    if source == "torchvision":
        import torchvision

        return torchvision.models.get_model(arch, weights=weights, **kwargs)
    import timm

    return timm.create_model(arch, pretrained=weights is not None, **kwargs)


@dataclasses.dataclass(frozen=True)
class BaseModelSpec:
    """An allow-listed builder name and its (safe) arguments: everything needed to rebuild a base model.

    Example:
        >>> spec = BaseModelSpec.from_dict({"name": "torchvision:resnet18", "args": {"num_classes": 10}})
        >>> spec.build().fc.out_features
        10
        >>> BaseModelSpec("timm:resnet18", {"checkpoint_path": "/tmp/x.pth"})
        Traceback (most recent call last):
        ...
        ValueError: builder argument 'checkpoint_path' is not allowed in a checkpoint; allowed: aux_logits, drop_path_rate, drop_rate, dropout, global_pool, image_size, in_chans, num_classes, transform_input
    """

    name: str
    args: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        parse_model_name(self.name)
        if not isinstance(self.args, dict):
            raise ValueError(f"builder arguments must be a mapping, got {self.args!r}")
        for key, value in self.args.items():
            if key not in SAFE_BUILDER_ARGS:
                raise ValueError(f"builder argument {key!r} is not allowed in a checkpoint; allowed: "
                                 f"{', '.join(sorted(SAFE_BUILDER_ARGS))}")
            types = SAFE_BUILDER_ARGS[key]
            if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
                raise ValueError(f"builder argument {key}={value!r} must be of type "
                                 f"{' or '.join(t.__name__ for t in types)}")
            low, high = BUILDER_ARG_RANGES.get(key, (None, None))
            if low is not None and not low <= value <= high:
                raise ValueError(f"builder argument {key}={value!r} is out of range [{low}, {high}]")
            if key == "global_pool" and value not in GLOBAL_POOLS:
                raise ValueError(f"builder argument global_pool={value!r} is not one of {GLOBAL_POOLS}")

    def build(self) -> nn.Module:
        """The base model, randomly initialized (no pretrained weights are fetched)."""
        return build_model(self.name, **self.args)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "args": dict(self.args)}

    @classmethod
    def from_dict(cls, data: Any) -> BaseModelSpec:
        if not isinstance(data, dict) or not isinstance(data.get("name"), str):
            raise ValueError(f"base_model must be {{'name': 'torchvision:NAME', 'args': {{...}}}}, got {data!r}")
        args = data.get("args") or {}
        if not isinstance(args, dict):
            raise ValueError(f"builder arguments must be a mapping such as {{'num_classes': 10}}, got {args!r}")
        return cls(data["name"], dict(args))


@dataclasses.dataclass(frozen=True)
class ModelFingerprint:
    """What :func:`identify_base_model` needs of a float model, taken cheaply before it is swapped."""

    module: str
    qualname: str
    shapes: dict[str, tuple[int, ...]]
    attributes: dict[str, Any]
    timm_architecture: str | None
    num_classes: int | None


def fingerprint(model: nn.Module) -> ModelFingerprint:
    cls = type(model)
    cfg = getattr(model, "pretrained_cfg", None)
    arch = cfg.get("architecture") if isinstance(cfg, dict) and cls.__module__.startswith("timm.") else None
    outs = [m.out_features if isinstance(m, nn.Linear) else m.out_channels
            for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    return ModelFingerprint(
        module=cls.__module__,
        qualname=cls.__qualname__,
        shapes={k: tuple(v.shape) for k, v in model.state_dict().items()},
        attributes={a: getattr(model, a) for a in _RECORDED_ATTRIBUTES
                    if isinstance(getattr(model, a, None), SAFE_BUILDER_ARGS[a])},
        timm_architecture=arch,
        num_classes=getattr(model, "num_classes", None) if arch else (outs[-1] if outs else None),
    )


def _build_structure(arch: str, args: dict[str, Any], size: int) -> nn.Module | None:
    """A torchvision model's structure, on the meta device where the builder allows it (RegNet's
    does not: it computes widths with tensors), else on the CPU if its size is near ``size``."""
    import torchvision

    def build(device: str) -> nn.Module:
        with warnings.catch_warnings(), torch.device(device):
            warnings.simplefilter("ignore")
            return torchvision.models.get_model(arch, weights=None, **args)

    try:
        return build("meta")
    except NotImplementedError:  # the builder needs real tensors: build on the CPU if small enough
        if torchvision.models.get_model_weights(arch).DEFAULT.meta["num_params"] > 2 * size + 2_000_000:
            return None
    except Exception:  # a builder that does not take one of the arguments
        return None
    try:
        return build("cpu")
    except Exception:
        return None


def identify_base_model(fp: ModelFingerprint) -> BaseModelSpec:
    """The builder name and arguments that rebuild a model with ``fp``'s structure.

    timm models name their architecture; for torchvision models the builders of the model's own
    module are built on the meta device and the one with the same state-dict shapes is taken.
    ``ValueError`` when no builder matches (a custom model).

    Example:
        >>> from torchvision.models import resnet34
        >>> identify_base_model(fingerprint(resnet34(num_classes=7)))
        BaseModelSpec(name='torchvision:resnet34', args={'num_classes': 7})
    """
    if fp.timm_architecture:
        return BaseModelSpec(f"timm:{fp.timm_architecture}", {"num_classes": fp.num_classes})
    if fp.module.startswith("torchvision.models"):
        import torchvision

        size = sum(math.prod(shape) for shape in fp.shapes.values())
        for arch in torchvision.models.list_models(module=torchvision.models):
            if torchvision.models.get_model_builder(arch).__module__ != fp.module:
                continue
            for extra in ({}, {"num_classes": fp.num_classes}):
                args = {**fp.attributes, **extra}
                candidate = _build_structure(arch, args, size)
                if candidate is not None and type(candidate).__qualname__ == fp.qualname and {
                    k: tuple(v.shape) for k, v in candidate.state_dict().items()
                } == fp.shapes:
                    return BaseModelSpec(f"torchvision:{arch}", args)
    raise ValueError(
        f"cannot tell which torchvision or timm builder made this {fp.qualname} model; a quantswap checkpoint "
        "rebuilds the base model by builder name. Pass base_model='torchvision:NAME' (or 'timm:NAME') and "
        "base_model_args={...} to save_pretrained"
    )
