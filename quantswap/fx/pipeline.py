"""A swap as a pipeline of passes over one :class:`SwapContext`.

Every pass has the signature ``pass(ctx) -> None``: it reads the context (the model's module tree,
its train- and eval-mode graphs, the config, the report so far) and edits it in place. A swap runs
:data:`STANDARD_PASSES`, then the method's own (``config.graph_passes()``: Bi-Real's shortcuts,
McDonnell's BatchNorm freeze), then :func:`lint`, and :func:`build_module` makes the result.

Example:
    >>> from torchvision.models import resnet18
    >>> from quantswap.config import config_for
    >>> from quantswap.fx.pipeline import SwapContext, run
    >>> ctx = SwapContext(resnet18(), config_for("bireal"))
    >>> [p.__name__ for p in ctx.passes()]
    ['trace', 'choose_layers', 'swap_layers', 'quantize_weight_reads', 'replace_activations', 'add_bireal_shortcuts', 'lint']
    >>> len(run(ctx).meta["quantswap"].shortcuts)
    16
"""

from __future__ import annotations

import copy
import dataclasses
import fnmatch
from collections.abc import Iterable
from typing import Any

from torch import fx, nn
from torchvision.models.feature_extraction import DualGraphModule

from quantswap.config import GraphPass, QuantConfig
from quantswap.fx import passes
from quantswap.fx.analysis import first_and_last, weight_layer_sites
from quantswap.fx.tracer import trace_train_eval
from quantswap.models import ModelFingerprint

__all__ = ["SwapReport", "SwapContext", "STANDARD_PASSES", "QuantGraphModule", "run", "trace", "choose_layers",
           "lint", "build_module"]

_SWAPPABLE = (nn.Conv2d, nn.Linear)  # exact types: a subclass (e.g. timm's Conv2dSame) has its own forward
#: Plain attributes of the float model a swapped model keeps (timm's data config: mean, std, input size).
_KEPT_ATTRIBUTES = ("pretrained_cfg", "default_cfg")


@dataclasses.dataclass(repr=False)
class SwapReport:
    """What a swap did; stored as ``model.meta["quantswap"]`` on the swapped model. Prints as a table of the
    layers (what each became, or why it stayed real) and a line per structural change.

    Example:
        >>> import quantswap
        >>> from torchvision.models import resnet18
        >>> print(str(quantswap.get_swap_report(quantswap.binarize(resnet18(), method="react"))).splitlines()[0])
        swap (react W1/A1): 16 layers quantized, 5 kept real
    """

    config: QuantConfig
    quantized: list[str] = dataclasses.field(default_factory=list)  # layers swapped, in module order
    kept_real: dict[str, str] = dataclasses.field(default_factory=dict)  # layer -> why it stayed real
    activations_replaced: list[str] = dataclasses.field(default_factory=list)
    shortcuts: list[str] = dataclasses.field(default_factory=list)  # binary convs given a Bi-Real shortcut
    shortcuts_skipped: dict[str, str] = dataclasses.field(default_factory=dict)  # conv -> why no shortcut fits
    #: blocks whose own residual was removed, their convs' shortcuts being the only ones (the authors' Bi-Real net)
    blocks_rewired: list[str] = dataclasses.field(default_factory=list)
    stem_activations: list[str] = dataclasses.field(default_factory=list)  # modules added after the stem
    bn_frozen: list[str] = dataclasses.field(default_factory=list)
    #: qualified names of the modules kept opaque by the caller's ``leaf_modules`` (redone on load)
    leaf_modules: list[str] = dataclasses.field(default_factory=list)
    #: the float model's class and state-dict shapes: how a checkpoint finds its base builder
    base: ModelFingerprint | None = dataclasses.field(default=None, repr=False)

    def __str__(self) -> str:
        rows = [(name, self.config.label + (" + shortcut" if name in self.shortcuts else ""),
                 f"no shortcut: {self.shortcuts_skipped[name]}" if name in self.shortcuts_skipped else "")
                for name in self.quantized]
        rows += [(name, "kept real", why) for name, why in self.kept_real.items()]
        head = ("layer", "became", "why")
        widths = [max(len(r[i]) for r in [head, *rows]) for i in range(2)]
        lines = [f"swap ({self.config.label}): {len(self.quantized)} layers quantized, {len(self.kept_real)} kept real",
                 "", f"{head[0]:<{widths[0]}}  {head[1]:<{widths[1]}}  {head[2]}",
                 f"{'-' * widths[0]}  {'-' * widths[1]}  {'-' * 3}"]
        lines += [f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c}".rstrip() for a, b, c in rows]
        changes = [("activations replaced", self.activations_replaced),
                   ("block residuals removed (the authors' structure)", self.blocks_rewired),
                   ("added after the stem", self.stem_activations), ("BatchNorms frozen", self.bn_frozen),
                   ("leaf modules", self.leaf_modules)]
        lines += [""] + [f"{what}: {len(names)} ({_names(names)})" for what, names in changes if names]
        return "\n".join(lines).rstrip()

    __repr__ = __str__


def _names(names: list[str], shown: int = 6) -> str:
    return ", ".join(names[:shown]) + (f", ... {len(names) - shown} more" if len(names) > shown else "")


@dataclasses.dataclass
class SwapContext:
    """The state a swap's passes share: the module tree they edit, its two graphs and the report."""

    model: nn.Module
    config: QuantConfig
    leaf_modules: list[type[nn.Module] | str] = dataclasses.field(default_factory=list)
    graphs: tuple[fx.Graph, ...] = ()
    report: SwapReport = None  # type: ignore[assignment]  # made in __post_init__

    def __post_init__(self) -> None:
        self.leaf_modules = list(self.leaf_modules)
        if self.report is None:
            self.report = SwapReport(config=self.config)

    @property
    def modules(self) -> dict[str, nn.Module]:
        """The module tree by qualified name, as it stands now."""
        return dict(self.model.named_modules())

    def passes(self) -> list[GraphPass]:
        """The passes this swap runs, in order."""
        return [*STANDARD_PASSES, *self.config.graph_passes(), lint]


def trace(ctx: SwapContext) -> None:
    """Trace the model in train and in eval mode (two graphs over one module tree)."""
    ctx.graphs = trace_train_eval(ctx.model, ctx.leaf_modules)
    classes = tuple(m for m in ctx.leaf_modules if isinstance(m, type))
    ctx.report.leaf_modules = [n for n, m in ctx.modules.items() if n in ctx.leaf_modules or isinstance(m, classes)]


def _eligible(ctx: SwapContext) -> tuple[list[str], set[str], set[str]]:
    """The Conv2d/Linear layers the graphs compute, and those that come first and last by dataflow;
    layers that cannot be swapped are recorded in the report with the reason."""
    modules = ctx.modules
    site_names, first, last = set(), set(), set()
    for graph in ctx.graphs:
        sites = weight_layer_sites(graph, modules)
        site_names.update(name for names in sites.values() for name in names)
        f, l_ = first_and_last(graph, sites)
        first, last = first | f, last | l_
    eligible = []
    for name, module in modules.items():
        if type(module) in _SWAPPABLE and name in site_names:
            eligible.append(name)
        elif type(module) in _SWAPPABLE:
            ctx.report.kept_real[name] = "not in the traced graph (inside a leaf module, or unused)"
        elif isinstance(module, _SWAPPABLE) and name in site_names:
            ctx.report.kept_real[name] = f"{type(module).__name__} is a subclass with its own forward"
    if not eligible:
        raise ValueError(
            f"no Conv2d or Linear layer to quantize in {type(ctx.model).__name__}"
            + (f" ({len(ctx.report.kept_real)} are inside leaf modules)" if ctx.report.kept_real else "")
            + "; quantswap swaps torch.nn.Conv2d and torch.nn.Linear layers"
        )
    return eligible, first, last


def is_depthwise(layer: nn.Module) -> bool:
    """A conv with one input channel per filter (``groups == in_channels > 1``): MobileNet's 3x3s."""
    return isinstance(layer, nn.Conv2d) and layer.groups > 1 and layer.groups == layer.in_channels


def _why_real(config: QuantConfig, name: str, layer: nn.Module, first: set[str], last: set[str]) -> str | None:
    def matches(patterns: Iterable[str]) -> bool:
        return any(fnmatch.fnmatchcase(name, p) for p in patterns)

    if config.include is not None and not matches(config.include):
        return "not matched by include"
    if matches(config.exclude):
        return "matched by exclude"
    if config.skip_first and name in first:
        return "first layer (skip_first=True)"
    if config.skip_last and name in last:
        return "last layer (skip_last=True)"
    if config.skip_depthwise and is_depthwise(layer):
        return "depthwise conv (skip_depthwise=True)"
    if config.keep_real(layer):
        return f"kept real by method {config.method!r}"
    return None


def choose_layers(ctx: SwapContext) -> None:
    """Choose the layers to quantize: eligible by dataflow, then the config's filters and the method's."""
    eligible, first, last = _eligible(ctx)
    modules = ctx.modules
    excluded = {}
    for name in eligible:
        why = _why_real(ctx.config, name, modules[name], first, last)
        if why is None:
            ctx.report.quantized.append(name)
        else:
            excluded[name] = why
    ctx.report.kept_real.update(excluded)
    if not ctx.report.quantized:
        reasons = sorted(set(excluded.values()))
        raise ValueError(
            f"no layer left to quantize: all {len(eligible)} eligible Conv2d/Linear layers are kept real "
            f"({'; '.join(reasons)}). Loosen include/exclude, or pass skip_first=False / skip_last=False"
        )


def lint(ctx: SwapContext) -> None:
    """Check both graphs are well formed after the edits."""
    for graph in ctx.graphs:
        graph.lint()


#: Every swap's passes, before the method's own.
STANDARD_PASSES: tuple[GraphPass, ...] = (
    trace,
    choose_layers,
    passes.swap_layers,
    passes.quantize_weight_reads,
    passes.replace_activations,
)


class QuantGraphModule(DualGraphModule):
    """torchvision's ``DualGraphModule`` (a train graph and an eval graph over one module tree) that
    keeps the model's own module structure and its train/eval mode through ``copy.deepcopy``."""

    def __deepcopy__(self, memo):
        res = super().__deepcopy__(memo)
        for store in ("_modules", "_parameters", "_buffers"):
            for name, value in getattr(self, store).items():
                getattr(res, store)[name] = copy.deepcopy(value, memo)
        return res.train(self.training)


def build_module(ctx: SwapContext) -> fx.GraphModule:
    """The swapped model: a :class:`QuantGraphModule` over the edited graphs, with the model's own
    children, direct tensors and data config, in the model's mode, its report in ``.meta``."""
    model = ctx.model
    swapped = QuantGraphModule(model, ctx.graphs[0], ctx.graphs[1], class_name=type(model).__name__)
    # GraphModule copies only what the graphs use, as bare nn.Module shells; put the model's own
    # children and direct tensors back so ``swapped.layer1[0].conv1`` and the state dict look as before.
    for name, child in model.named_children():
        setattr(swapped, name, child)
    for name, tensor in [*model.named_parameters(recurse=False), *model.named_buffers(recurse=False)]:
        setattr(swapped, name, tensor)
    for name in _KEPT_ATTRIBUTES:
        value: Any = getattr(model, name, None)
        if isinstance(value, dict):
            setattr(swapped, name, copy.deepcopy(value))
    swapped.train(model.training)
    swapped.meta = {**getattr(swapped, "meta", {}), "quantswap": ctx.report}
    return swapped


def run(ctx: SwapContext) -> fx.GraphModule:
    """Run every pass of ``ctx`` in order (the model's mode is restored after tracing) and build the result."""
    for step in ctx.passes():
        step(ctx)
    return build_module(ctx)
