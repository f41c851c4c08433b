"""The method registry: method name -> config class.

A method is one module in ``quantswap/methods/`` defining a :class:`~quantswap.config.QuantConfig`
subclass decorated with :func:`register_method`.
"""

from __future__ import annotations

import warnings

from quantswap.config import QuantConfig

__all__ = ["register_method", "list_methods", "is_method", "get_config_class"]

_methods: dict[str, type[QuantConfig]] = {}  # method name -> its config dataclass


def register_method(cls: type[QuantConfig]) -> type[QuantConfig]:
    """Class decorator: register a config class under its ``method`` name."""
    if not cls.method:
        raise ValueError(f"{cls.__name__} must set the class attribute `method`")
    if cls.method in _methods and _methods[cls.method] is not cls:
        warnings.warn(f"method {cls.method!r} re-registered by {cls.__qualname__}", stacklevel=2)
    _methods[cls.method] = cls
    return cls


def list_methods() -> list[str]:
    """Names of the registered methods, sorted.

    Example:
        >>> import quantswap
        >>> quantswap.list_methods()
        ['bireal', 'irnet', 'mcdonnell', 'ternary', 'xnor']
    """
    return sorted(_methods)


def is_method(name: str) -> bool:
    return name in _methods


def get_config_class(name: str) -> type[QuantConfig]:
    try:
        return _methods[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown method {name!r}; known methods: {', '.join(list_methods())}") from None
