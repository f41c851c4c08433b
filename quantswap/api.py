"""The public verbs: :func:`swap` (config-driven core), :func:`binarize`, :func:`ternarize` and
:func:`set_progress`."""

from __future__ import annotations

import copy
import dataclasses
import fnmatch
from collections.abc import Iterable
from typing import Any

from torch import fx, nn
from torchvision.models.feature_extraction import DualGraphModule

from quantswap import methods as _methods  # noqa: F401  (registers the built-in methods)
from quantswap._registry import get_config_class
from quantswap.config import QuantConfig
from quantswap.fx import passes
from quantswap.fx.analysis import first_and_last, weight_layer_sites
from quantswap.fx.tracer import trace_train_eval
from quantswap.models import ModelFingerprint, fingerprint
from quantswap.nn.layers import QuantLayer
from quantswap.nn.quantizers import ScheduledQuantizer

__all__ = ["SwapReport", "swap", "binarize", "ternarize", "set_progress", "get_swap_report"]

_SWAPPABLE = (nn.Conv2d, nn.Linear)  # exact types: a subclass (e.g. timm's Conv2dSame) has its own forward


class QuantGraphModule(DualGraphModule):
    """torchvision's ``DualGraphModule`` (a train graph and an eval graph over one module tree) that
    keeps the model's own module structure and its train/eval mode through ``copy.deepcopy``."""

    def __deepcopy__(self, memo):
        res = super().__deepcopy__(memo)
        for store in ("_modules", "_parameters", "_buffers"):
            for name, value in getattr(self, store).items():
                getattr(res, store)[name] = copy.deepcopy(value, memo)
        return res.train(self.training)


@dataclasses.dataclass
class SwapReport:
    """What a swap did; stored as ``model.meta["quantswap"]`` on the swapped model."""

    config: QuantConfig
    quantized: list[str]  # layers swapped for quantized ones, in module order
    kept_real: dict[str, str]  # layer -> why it stayed real
    activations_replaced: list[str] = dataclasses.field(default_factory=list)
    shortcuts: list[str] = dataclasses.field(default_factory=list)  # binary convs given a Bi-Real shortcut
    shortcuts_skipped: dict[str, str] = dataclasses.field(default_factory=dict)  # conv -> why no shortcut fits
    bn_frozen: list[str] = dataclasses.field(default_factory=list)
    #: qualified names of the modules kept opaque by the caller's ``leaf_modules`` (redone on load)
    leaf_modules: list[str] = dataclasses.field(default_factory=list)
    #: the float model's class and state-dict shapes: how a checkpoint finds its base builder
    base: ModelFingerprint | None = dataclasses.field(default=None, repr=False)


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


def _select(
    config: QuantConfig, eligible: list[str], first: set[str], last: set[str], modules: dict[str, nn.Module]
) -> tuple[list[str], dict[str, str]]:
    def matches(name: str, patterns: Iterable[str]) -> bool:
        return any(fnmatch.fnmatchcase(name, p) for p in patterns)

    chosen, kept = [], {}
    for name in eligible:
        if config.include is not None and not matches(name, config.include):
            kept[name] = "not matched by include"
        elif matches(name, config.exclude):
            kept[name] = "matched by exclude"
        elif config.skip_first and name in first:
            kept[name] = "first layer (skip_first=True)"
        elif config.skip_last and name in last:
            kept[name] = "last layer (skip_last=True)"
        elif config.keep_real(modules[name]):
            kept[name] = f"kept real by method {config.method!r}"
        else:
            chosen.append(name)
    if not chosen:
        reasons = sorted({why for why in kept.values()})
        raise ValueError(
            f"no layer left to quantize: all {len(eligible)} eligible Conv2d/Linear layers are kept real "
            f"({'; '.join(reasons)}). Loosen include/exclude, or pass skip_first=False / skip_last=False"
        )
    return chosen, kept


def swap(
    model: nn.Module,
    config: QuantConfig,
    *,
    inplace: bool = False,
    leaf_modules: Iterable[type[nn.Module] | str] = (),
) -> fx.GraphModule:
    """Swap ``model``'s Conv2d/Linear layers for quantized ones as ``config`` says.

    The pipeline: copy (unless ``inplace``) → trace in train and eval mode → choose layers by
    dataflow and the config's filters → swap layers → quantize direct weight reads → replace ReLUs
    feeding binary layers → add Bi-Real shortcuts → freeze BatchNorm affine → build the module.

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
        >>> from quantswap.methods import XnorConfig
        >>> from torchvision.models import resnet18
        >>> bnn = quantswap.swap(resnet18(), XnorConfig(exclude=["layer4.*"]))
        >>> report = bnn.meta["quantswap"]
        >>> len(report.quantized), report.kept_real["conv1"]
        (14, 'first layer (skip_first=True)')
    """
    if not isinstance(config, QuantConfig):
        raise TypeError(f"config must be a QuantConfig such as quantswap.methods.IRNetConfig(), got {config!r}")
    _check_model(model)
    leaf_modules = list(leaf_modules)
    base = fingerprint(model)
    if not inplace:
        model = copy.deepcopy(model)
    was_training = model.training
    graphs = trace_train_eval(model, leaf_modules)

    modules = dict(model.named_modules())
    site_names: set[str] = set()
    first: set[str] = set()
    last: set[str] = set()
    for graph in graphs:
        sites = weight_layer_sites(graph, modules)
        site_names.update(name for names in sites.values() for name in names)
        f, l_ = first_and_last(graph, sites)
        first |= f
        last |= l_
    eligible, kept_real = [], {}
    for name, module in modules.items():
        if type(module) in _SWAPPABLE and name in site_names:
            eligible.append(name)
        elif type(module) in _SWAPPABLE:
            kept_real[name] = "not in the traced graph (inside a leaf module, or unused)"
        elif isinstance(module, _SWAPPABLE) and name in site_names:
            kept_real[name] = f"{type(module).__name__} is a subclass with its own forward"
    if not eligible:
        raise ValueError(
            f"no Conv2d or Linear layer to quantize in {type(model).__name__}"
            + (f" ({len(kept_real)} are inside leaf modules)" if kept_real else "")
            + "; quantswap swaps torch.nn.Conv2d and torch.nn.Linear layers"
        )
    chosen, excluded = _select(config, eligible, first, last, modules)
    kept_real.update(excluded)

    passes.swap_layers(model, chosen, config)
    for graph in graphs:
        passes.quantize_weight_reads(graph, set(chosen))
    leaf_classes = tuple(m for m in leaf_modules if isinstance(m, type))
    leaf_names = [name for name, m in modules.items() if name in leaf_modules or isinstance(m, leaf_classes)]
    report = SwapReport(config=config, quantized=chosen, kept_real=kept_real, leaf_modules=leaf_names, base=base)
    factory = config.activation_replacement()
    if factory is not None:
        report.activations_replaced = passes.replace_activations(model, graphs, factory)
    if config.adds_shortcuts:
        report.shortcuts, report.shortcuts_skipped = passes.add_bireal_shortcuts(model, graphs, chosen)
    if config.freezes_bn_affine:
        report.bn_frozen = passes.freeze_bn_affine(model, graphs, chosen)

    for graph in graphs:
        graph.lint()
    swapped = QuantGraphModule(model, graphs[0], graphs[1], class_name=type(model).__name__)
    # GraphModule copies only what the graphs use, as bare nn.Module shells; put the model's own
    # children and direct tensors back so ``swapped.layer1[0].conv1`` and the state dict look as before.
    for name, child in model.named_children():
        setattr(swapped, name, child)
    for name, tensor in [*model.named_parameters(recurse=False), *model.named_buffers(recurse=False)]:
        setattr(swapped, name, tensor)
    swapped.train(was_training)
    swapped.meta = {**getattr(swapped, "meta", {}), "quantswap": report}
    return swapped


def _build_config(method: str, options: dict[str, Any]) -> QuantConfig:
    cls = get_config_class(method)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"unknown option(s) {unknown} for method {method!r}; its options are {sorted(known)}")
    return cls(**options)


def binarize(
    model: nn.Module,
    method: str = "irnet",
    *,
    inplace: bool = False,
    leaf_modules: Iterable[type[nn.Module] | str] = (),
    **options: Any,
) -> fx.GraphModule:
    """Binarize ``model`` with ``method`` (``"xnor"``, ``"irnet"``, ``"bireal"``, ``"mcdonnell"``).

    ``options`` are the method config's fields: the shared ``activations``, ``skip_first``,
    ``skip_last``, ``include``, ``exclude``, and the method's own (see ``quantswap.methods``).

    Example:
        >>> import torch, quantswap
        >>> from torchvision.models import resnet18
        >>> bnn = quantswap.binarize(resnet18(num_classes=10), method="irnet")
        >>> bnn(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """
    if method == "ternary":
        raise ValueError("ternary weights are not binary: use quantswap.ternarize(model, expansion=...)")
    config = _build_config(method, options)
    return swap(model, config, inplace=inplace, leaf_modules=leaf_modules)


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
    config = _build_config("ternary", dict(options, expansion=expansion, thresholds=thresholds))
    return swap(model, config, inplace=inplace, leaf_modules=leaf_modules)


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
