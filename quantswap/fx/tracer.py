"""Tracing: a ``torch.fx.Tracer`` whose leaf modules the user can extend, and train/eval tracing.

Leaves are the atomic units of the graph (``call_module`` nodes): everything under ``torch.nn``
(except containers), quantswap's own quantized layers, timm's registered no-trace modules, the
classes registered with :func:`register_leaf_module`, and whatever a caller passes as
``leaf_modules`` (classes or qualified names). Layers inside a leaf are not quantized.

Models whose forward depends on ``self.training`` (GoogLeNet's and Inception's auxiliary heads,
stochastic depth) trace to different graphs in train and eval mode; :func:`trace_train_eval` traces
both so the swapped model keeps both behaviours.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from torch import fx, nn

from quantswap.nn.layers import QuantLayer

__all__ = ["QuantswapTracer", "register_leaf_module", "trace_train_eval", "UntraceableModelError"]

_leaf_classes: set[type[nn.Module]] = set()  # registered by register_leaf_module


class UntraceableModelError(ValueError):
    """torch.fx could not trace the model; the message names the module where it failed."""


def register_leaf_module(cls: type[nn.Module]) -> type[nn.Module]:
    """Class decorator (or call): never trace into ``cls``; its instances stay opaque and real.

    Example:
        >>> import torch, quantswap
        >>> @quantswap.register_leaf_module
        ... class Gate(torch.nn.Module):
        ...     def forward(self, x):
        ...         return x if x.sum() > 0 else -x   # data-dependent: FX cannot trace it
        >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), Gate(), torch.nn.Conv2d(8, 8, 3),
        ...                             torch.nn.Conv2d(8, 2, 1))
        >>> type(quantswap.binarize(model, method="mcdonnell").get_submodule("2")).__name__
        'QuantConv2d'
    """
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise TypeError(f"register_leaf_module takes an nn.Module subclass, got {cls!r}")
    _leaf_classes.add(cls)
    return cls


def _timm_notrace() -> tuple[set[type], set[Callable]]:
    try:
        from timm.layers import get_notrace_functions, get_notrace_modules
    except ImportError:  # timm is optional at trace time
        return set(), set()
    return set(get_notrace_modules()), set(get_notrace_functions())


class QuantswapTracer(fx.Tracer):
    """``fx.Tracer`` with user-extendable leaves that remembers where tracing failed.

    Args:
        leaf_modules: extra leaves, as ``nn.Module`` classes or qualified module names.
    """

    def __init__(self, leaf_modules: Iterable[type[nn.Module] | str] = ()):
        timm_modules, timm_functions = _timm_notrace()
        super().__init__(autowrap_functions=tuple(timm_functions))
        extra = list(leaf_modules)
        bad = [m for m in extra if not (isinstance(m, str) or (isinstance(m, type) and issubclass(m, nn.Module)))]
        if bad:
            raise TypeError(f"leaf_modules takes nn.Module classes or qualified names, got {bad!r}")
        self.leaf_classes = tuple(_leaf_classes | timm_modules | {m for m in extra if isinstance(m, type)})
        self.leaf_names = {m for m in extra if isinstance(m, str)}
        self.failed_at: tuple[str, str] | None = None

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, QuantLayer) or isinstance(m, self.leaf_classes) or module_qualified_name in self.leaf_names:
            return True
        return super().is_leaf_module(m, module_qualified_name)

    def call_module(self, m, forward, args, kwargs):
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_at is None:  # the innermost module fails first
                self.failed_at = (self.path_of_module(m), type(m).__name__)
            raise


def trace_train_eval(
    model: nn.Module, leaf_modules: Iterable[type[nn.Module] | str] = ()
) -> tuple[fx.Graph, fx.Graph]:
    """Trace ``model`` in train mode and in eval mode; the model's mode is restored afterwards."""
    was_training = model.training
    graphs = []
    try:
        for mode in (True, False):
            model.train(mode)
            tracer = QuantswapTracer(leaf_modules)
            try:
                graphs.append(tracer.trace(model))
            except Exception as err:
                where = tracer.failed_at
                place = f"in module {where[0]!r} ({where[1]})" if where and where[0] else "in the model's own forward"
                hint = (
                    f"pass leaf_modules=[{where[1]}] (or its name {where[0]!r}) to keep it opaque and real"
                    if where and where[0]
                    else "wrap the untraceable part in a submodule and pass it as leaf_modules"
                )
                raise UntraceableModelError(
                    f"torch.fx could not trace the model {place}: {type(err).__name__}: {err}. "
                    f"Fix: {hint}; layers inside a leaf module are not quantized."
                ) from err
    finally:
        model.train(was_training)
    return graphs[0], graphs[1]

