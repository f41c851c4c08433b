"""Typed configuration of a swap: which layers, which method, which options.

Every method has one ``@dataclass`` config, a subclass of :class:`QuantConfig`, registered under
its method name (see :mod:`quantswap._registry`). The config holds everything needed to redo a swap
on a freshly built base model, so it is what a checkpoint's ``config.json`` stores: ``to_dict`` and
``config_from_dict`` round-trip it, resolving the type only through the method registry.

Example:
    >>> from quantswap.config import config_from_dict
    >>> from quantswap.methods.irnet import IRNetConfig
    >>> cfg = IRNetConfig(activations=False, exclude=("layer4.*",))
    >>> cfg.to_dict()["method"], cfg.activations
    ('irnet', False)
    >>> config_from_dict(cfg.to_dict()) == cfg
    True
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar

from torch import nn

__all__ = ["QuantConfig", "config_from_dict", "CONFIG_VERSION"]

CONFIG_VERSION = 1


def _as_patterns(value: Any, name: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = (value,)
    try:
        patterns = tuple(value)
    except TypeError:
        raise TypeError(f"{name} must be a list of fnmatch patterns such as ['layer4.*'], got {value!r}") from None
    if not all(isinstance(p, str) for p in patterns):
        raise TypeError(f"{name} must hold strings (fnmatch patterns on qualified names), got {value!r}")
    return patterns


@dataclasses.dataclass
class QuantConfig(abc.ABC):
    """Options shared by every method. Subclasses add the method's own options.

    Args:
        activations: quantize the inputs of swapped layers to ±1 (W1/A1). ``None`` takes the
            method's default; weight-only methods refuse ``True``.
        skip_first: keep the first Conv/Linear layers (those with no Conv/Linear upstream) real.
        skip_last: keep the last Conv/Linear layers (those with no Conv/Linear downstream) real.
        include: if given, only layers whose qualified name matches one of these fnmatch patterns
            are candidates.
        exclude: layers whose qualified name matches one of these patterns stay real.
    """

    method: ClassVar[str] = ""
    #: The method's default for ``activations`` and whether it can binarize activations at all.
    default_activations: ClassVar[bool] = False
    supports_binary_activations: ClassVar[bool] = False

    activations: bool | None = None
    skip_first: bool = True
    skip_last: bool = True
    include: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.include = _as_patterns(self.include, "include")
        self.exclude = _as_patterns(self.exclude, "exclude") or ()
        if self.activations is None:
            self.activations = self.default_activations
        if not isinstance(self.activations, bool):
            raise TypeError(f"activations must be True, False or None, got {self.activations!r}")
        if self.activations and not self.supports_binary_activations:
            raise ValueError(
                f"method {self.method!r} quantizes weights only; drop activations=True "
                "or pick a W1/A1 method (xnor, irnet, bireal)"
            )

    # -- hooks each method implements -------------------------------------------------------------

    @abc.abstractmethod
    def weight_quantizer(self, layer: nn.Module) -> nn.Module:
        """A fresh module mapping the layer's latent weight to its quantized weight."""

    def input_quantizer(self) -> nn.Module | None:
        """A fresh module quantizing the layer input, or ``None`` for real activations."""
        return None

    def activation_replacement(self) -> Callable[[], nn.Module] | None:
        """Factory for the module that replaces each ReLU feeding a quantized layer, or ``None``."""
        return None

    def keep_real(self, layer: nn.Module) -> bool:
        """Layers the method keeps real by design (e.g. Bi-Real's downsample convs)."""
        return False

    @property
    def adds_shortcuts(self) -> bool:
        """Whether every binary conv gets its own real-valued shortcut (Bi-Real structure)."""
        return False

    @property
    def freezes_bn_affine(self) -> bool:
        """Whether BatchNorms right after quantized convs lose their learned scale and offset."""
        return False

    @property
    def weight_bits(self) -> int:
        """Bits stored per quantized weight."""
        return 1

    # -- serialization ----------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict: ``{"method": ..., "version": ..., <fields>}``."""
        data: dict[str, Any] = {"method": self.method, "version": CONFIG_VERSION}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            data[f.name] = list(value) if isinstance(value, tuple) else value
        return data


def config_from_dict(data: dict[str, Any]) -> QuantConfig:
    """Rebuild a config written by :meth:`QuantConfig.to_dict`; types resolve only through the registry."""
    from quantswap._registry import get_config_class

    if not isinstance(data, dict) or "method" not in data:
        raise ValueError(f"a quantswap config needs a 'method' key, got {data!r}")
    data = dict(data)
    version = data.pop("version", CONFIG_VERSION)
    if not isinstance(version, int) or version > CONFIG_VERSION:
        raise ValueError(
            f"config version {version!r} is newer than this quantswap understands ({CONFIG_VERSION}); "
            "upgrade quantswap (pip install -U quantswap)"
        )
    cls = get_config_class(data.pop("method"))
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for method {cls.method!r}; known options: {sorted(known)}")
    for key, value in data.items():
        if isinstance(value, list):
            data[key] = tuple(value)
    return cls(**data)
