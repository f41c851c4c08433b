"""The public verbs: :func:`swap` (config-driven core), :func:`binarize`, :func:`ternarize` and
:func:`set_progress`."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterable
from typing import Any

from torch import fx, nn

from quantswap import methods as _methods  # noqa: F401  (registers the built-in methods)
from quantswap._registry import get_config_class
from quantswap.config import QuantConfig, config_for
from quantswap.fx.pipeline import SwapContext, SwapReport, run
from quantswap.models import fingerprint
from quantswap.nn.layers import QuantLayer
from quantswap.nn.quantizers import ScheduledQuantizer

__all__ = ["SwapReport", "swap", "binarize", "ternarize", "quantize_weights", "set_progress", "get_swap_report"]


def get_swap_report(model: nn.Module) -> SwapReport:
    """The :class:`SwapReport` of a model returned by :func:`swap`; ``ValueError`` for any other model."""
    report = getattr(model, "meta", {}).get("quantswap") if isinstance(getattr(model, "meta", None), dict) else None
    if not isinstance(report, SwapReport):
        raise ValueError("this model was not made by quantswap.binarize/ternarize/swap; swap it first")
    return report


def _check_model(model: Any) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"expected a torch.nn.Module, got {type(model).__name__}; build the model first, "
            "e.g. quantswap.binarize(torchvision.models.resnet18(weights='DEFAULT'), method='irnet')"
        )
    swapped = [name for name, m in model.named_modules() if isinstance(m, QuantLayer)]
    if swapped:
        raise ValueError(
            f"the model is already swapped by quantswap ({len(swapped)} quantized layers, e.g. {swapped[0]!r}); "
            "pass the original float model to binarize/ternarize"
        )


def swap(
    model: nn.Module,
    config: QuantConfig,
    *,
    inplace: bool = False,
    leaf_modules: Iterable[type[nn.Module] | str] = (),
) -> fx.GraphModule:
    """Swap ``model``'s Conv2d/Linear layers for quantized ones as ``config`` says.

    The pipeline (:mod:`quantswap.fx.pipeline`): copy (unless ``inplace``) → trace in train and
    eval mode → choose layers by dataflow and the config's filters → swap layers → quantize direct
    weight reads → replace ReLUs feeding binary layers → the method's own passes (Bi-Real's
    shortcuts, McDonnell's BatchNorm freeze) → lint → build the module.

    Args:
        model: any ``nn.Module`` that torch.fx can trace (with ``leaf_modules`` for parts it cannot).
        config: a method config, e.g. ``IRNetConfig()``.
        inplace: reuse ``model``'s modules instead of a deep copy (the input model is then consumed).
        leaf_modules: classes or qualified names of submodules never traced into (they stay real).

    Returns:
        A ``torch.fx.GraphModule`` that trains and evaluates like the original: it holds the train-mode
        and the eval-mode graph and follows ``.train()`` / ``.eval()``. ``.meta["quantswap"]`` holds a
        :class:`SwapReport`.

    Example:
        >>> import quantswap
        >>> from torchvision.models import resnet18
        >>> bnn = quantswap.swap(resnet18(), quantswap.config_for("xnor", exclude=["layer4.*"]))
        >>> report = bnn.meta["quantswap"]
        >>> len(report.quantized), report.kept_real["conv1"]
        (14, 'first layer (skip_first=True)')
    """
    if not isinstance(config, QuantConfig):
        raise TypeError(f"config must be a QuantConfig such as quantswap.config_for('irnet'), got {config!r}")
    _check_model(model)
    base = fingerprint(model)
    if not inplace:
        model = copy.deepcopy(model)
    ctx = SwapContext(model, config, list(leaf_modules))
    ctx.report.base = base
    return run(ctx)


def binarize(
    model: nn.Module,
    method: str = "irnet",
    *,
    inplace: bool = False,
    leaf_modules: Iterable[type[nn.Module] | str] = (),
    **options: Any,
) -> fx.GraphModule:
    """Binarize ``model`` with a binary ``method`` (see ``quantswap.list_methods()``).

    ``options`` are the method config's fields: the shared ``activations``, ``weights`` (``False``:
    real weights with binary activations, W32/A1, the first stage of two-step training; see
    :func:`quantize_weights`), ``skip_first``, ``skip_last``, ``skip_depthwise`` (depthwise convs stay real
    unless ``False``), ``include``, ``exclude``, and the
    method's own (see ``quantswap.methods``).

    Example:
        >>> import torch, quantswap
        >>> from torchvision.models import resnet18
        >>> bnn = quantswap.binarize(resnet18(num_classes=10), method="irnet")
        >>> bnn(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """
    if get_config_class(method).kind != "binary":
        raise ValueError(f"method {method!r} is not binary: use quantswap.ternarize(model, expansion=...) for "
                         f"ternary weights, or quantswap.swap(model, quantswap.config_for({method!r}, ...))")
    return swap(model, config_for(method, **options), inplace=inplace, leaf_modules=leaf_modules)


def ternarize(
    model: nn.Module,
    expansion: int = 1,
    *,
    thresholds: Iterable[float] | None = None,
    inplace: bool = False,
    leaf_modules: Iterable[type[nn.Module] | str] = (),
    **options: Any,
) -> fx.GraphModule:
    """Ternarize ``model``'s weights with ``expansion`` residual-expansion branches (1 to 4).

    Example:
        >>> import quantswap
        >>> from torchvision.models import mobilenet_v2
        >>> tnn = quantswap.ternarize(mobilenet_v2(), expansion=2)
        >>> tnn.meta["quantswap"].config.thresholds
        (0.05, 0.1)
    """
    config = config_for("ternary", **options, expansion=expansion, thresholds=thresholds)
    return swap(model, config, inplace=inplace, leaf_modules=leaf_modules)


def quantize_weights(model: nn.Module) -> nn.Module:
    """End the first stage of two-step training: give a W32/A1 model (``weights=False``) its method's
    weight quantizers, in place, so it trains on as W1/A1 from the weights it learned.

    Everything else (the activations' quantizers and their learned thresholds, shortcuts, BatchNorm)
    is kept; the swap report's config becomes the W1/A1 one. Returns ``model``.

    Example:
        >>> import torch, quantswap
        >>> from torchvision.models import resnet18
        >>> stage1 = quantswap.binarize(resnet18(num_classes=10), method="react", weights=False)
        >>> quantswap.get_swap_report(stage1).config.precision
        'W32/A1'
        >>> w = stage1.layer1[0].conv1.weight
        >>> stage2 = quantswap.quantize_weights(stage1)
        >>> quantswap.get_swap_report(stage2).config.precision, stage2.layer1[0].conv1.weight is w
        ('W1/A1', True)
    """
    report = get_swap_report(model)
    if report.config.weights:
        raise ValueError(f"the model's weights are already quantized ({report.config.label}); quantize_weights ends "
                         "the first stage of a model binarized with weights=False")
    config = dataclasses.replace(report.config, weights=True)
    for name in report.quantized:
        layer = model.get_submodule(name)
        layer.weight_quantizer = config.weight_quantizer(layer).to(layer.weight.device)
        layer.__dict__.pop("_eval_weight", None)  # an eval-mode weight cached by the real-weight stage
    report.config = config
    return model


def set_progress(model: nn.Module, progress: float) -> None:
    """Tell schedule-driven quantizers (IR-Net's EDE) that a ``progress`` fraction of training is done.

    Call it every step (or epoch) with ``step / total_steps``; quantizers without a schedule ignore it.

    Example:
        >>> import quantswap
        >>> from torchvision.models import resnet18
        >>> bnn = quantswap.binarize(resnet18(), method="irnet")
        >>> quantswap.set_progress(bnn, 0.5)
        >>> bnn.layer2[0].conv1.input_quantizer.t
        1.0
    """
    if not isinstance(progress, (int, float)) or not 0.0 <= progress <= 1.0:
        raise ValueError(f"progress is the fraction of training done, in [0, 1]; got {progress!r}")
    for module in model.modules():
        if isinstance(module, ScheduledQuantizer):
            module.set_progress(float(progress))
