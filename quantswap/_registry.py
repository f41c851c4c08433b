"""The method registry: method name -> config class, the one source of what methods exist.

A method is one module in ``quantswap/methods/`` (or a user's own) defining a
:class:`~quantswap.config.QuantConfig` subclass decorated with :func:`register_method`. Everything
that lists methods (the CLI's choices, model cards, the tests' variants, the benchmarks' rows)
asks this registry.
"""

from __future__ import annotations

import warnings

from quantswap.config import KINDS, QuantConfig, Variant

__all__ = [
    "register_method",
    "list_methods",
    "is_method",
    "get_config_class",
    "list_variants",
    "methods_with_binary_activations",
]

_methods: dict[str, type[QuantConfig]] = {}  # method name -> its config dataclass, in registration order


def register_method(cls: type[QuantConfig]) -> type[QuantConfig]:
    """Class decorator: register a config class under its ``method`` name.

    Example:
        >>> import dataclasses, quantswap
        >>> from quantswap.config import QuantConfig, Variant
        >>> from quantswap.methods.xnor import XnorWeight
        >>> @quantswap.register_method
        ... @dataclasses.dataclass
        ... class SignOnly(QuantConfig):
        ...     method = "sign-only"
        ...     paper = "a doctest's method"
        ...     variants = (Variant("sign-only", "sign-only"),)
        ...     def weight_quantizer(self, layer):
        ...         return XnorWeight()
        >>> quantswap.is_method("sign-only")
        True
        >>> quantswap.unregister_method("sign-only")
    """
    if not cls.method:
        raise ValueError(f"{cls.__name__} must set the class attribute `method`")
    if cls.kind not in KINDS:
        raise ValueError(f"{cls.__name__}.kind must be one of {KINDS}, got {cls.kind!r}")
    if any(v.method != cls.method for v in cls.variants):
        raise ValueError(f"{cls.__name__}.variants must all be variants of method {cls.method!r}")
    if cls.method in _methods and _methods[cls.method] is not cls:
        warnings.warn(f"method {cls.method!r} re-registered by {cls.__qualname__}", stacklevel=2)
    _methods[cls.method] = cls
    return cls


def unregister_method(name: str) -> None:
    """Remove a method registered with :func:`register_method` (for tests and notebooks)."""
    _methods.pop(name, None)


def list_methods() -> list[str]:
    """Names of the registered methods, sorted.

    Example:
        >>> import quantswap
        >>> [m for m in quantswap.list_methods() if m in ("irnet", "ternary", "xnor")]
        ['irnet', 'ternary', 'xnor']
    """
    return sorted(_methods)


def is_method(name: str) -> bool:
    return name in _methods


def get_config_class(name: str) -> type[QuantConfig]:
    try:
        return _methods[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown method {name!r}; known methods: {', '.join(list_methods())}") from None


def list_variants(*, benchmark: bool | None = None) -> list[Variant]:
    """Every registered method's variants in registration order (``benchmark=True``: the benchmarked ones).

    Example:
        >>> import quantswap
        >>> [v.name for v in list_variants() if v.method == "irnet"]
        ['irnet', 'irnet-w1a32']
    """
    return [v for cls in _methods.values() for v in cls.variants if benchmark is None or v.benchmark == benchmark]


def methods_with_binary_activations() -> list[str]:
    """The registered methods that can binarize activations (W1/A1)."""
    return [name for name, cls in sorted(_methods.items()) if cls.supports_binary_activations]
