"""The graph passes of a swap. Each is ``pass(ctx) -> None`` over a
:class:`~quantswap.fx.pipeline.SwapContext`: it edits the model's module tree and/or its traced
graphs and records what it did in ``ctx.report``. A model traced in train and eval mode has two
graphs over one module tree, and every pass edits both the same way."""

from __future__ import annotations

import operator
import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
from torch import fx, nn
from torch.nn import functional as F

from quantswap.fx.analysis import reaches, weight_layer_sites
from quantswap.fx.residuals import SHORTCUT_INPUT, SHORTCUT_SUM, remove_block_residuals
from quantswap.fx.utils import get_module, parent_name, set_module
from quantswap.nn.blocks import ChannelScale, RPReLU, bireal_shortcut
from quantswap.nn.layers import QuantConv2d, QuantLayer, QuantLinear

if TYPE_CHECKING:
    from quantswap.config import GraphPass
    from quantswap.fx.pipeline import SwapContext

__all__ = [
    "swap_layers",
    "quantize_weight_reads",
    "replace_activations",
    "add_bireal_shortcuts",
    "add_react_shortcuts",
    "remove_block_residuals",
    "shortcuts_followed_by",
    "scale_quantized_outputs",
    "freeze_bn_affine",
]

_RELU_MODULES = (nn.ReLU, nn.ReLU6)
_RELU_FUNCTIONS = {F.relu, F.relu_, torch.relu, torch.relu_, F.relu6}
_RELU_METHODS = {"relu", "relu_"}


def swap_layers(ctx: SwapContext) -> None:
    """Replace each chosen Conv2d/Linear by its quantized twin (same parameters)."""
    config = ctx.config
    for target in ctx.report.quantized:
        layer = get_module(ctx.model, target)
        if not layer.weight.is_meta and not bool(torch.isfinite(layer.weight).all()):
            warnings.warn(f"{target}.weight holds inf or NaN: its quantized weight will too; check the weights "
                          "you loaded", stacklevel=2)
        cls = QuantConv2d if isinstance(layer, nn.Conv2d) else QuantLinear
        set_module(ctx.model, target, cls.from_float(layer, config.layer_weight_quantizer(layer), config.input_quantizer(layer)))


def quantize_weight_reads(ctx: SwapContext) -> None:
    """Where a quantized layer's weight is read directly (``get_attr``), read its quantized weight."""
    quantized = set(ctx.report.quantized)
    for graph in ctx.graphs:
        _quantize_weight_reads(graph, quantized)


def _quantize_weight_reads(graph: fx.Graph, quantized: set[str]) -> None:
    for node in list(graph.nodes):
        if node.op == "get_attr" and node.target.endswith(".weight"):
            owner = node.target[: -len(".weight")]
            if owner in quantized:
                with graph.inserting_after(node):
                    q = graph.call_module(f"{owner}.weight_quantizer", (node,))
                node.replace_all_uses_with(q, delete_user_cb=lambda user, q=q: user is not q)


def _is_relu(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return type(modules.get(node.target)) in _RELU_MODULES  # exact type: a subclass may do more
    if node.op == "call_function":
        return node.target in _RELU_FUNCTIONS
    return node.op == "call_method" and node.target in _RELU_METHODS


def _relus_feeding_quantized_layers(graph: fx.Graph, modules: dict[str, nn.Module]) -> list[fx.Node]:
    sites = weight_layer_sites(graph, modules)
    feeding = reaches(
        graph,
        is_target=lambda n: n.op == "call_module" and isinstance(modules.get(n.target), QuantLayer),
        is_barrier=lambda n: n in sites,
    )
    return [node for node in graph.nodes if node in feeding and _is_relu(node, modules)]


def _replace_functional_relu(root: nn.Module, graph: fx.Graph, node: fx.Node, factory: Callable[[], nn.Module]) -> str:
    name = f"quantswap_act_{node.name}"
    if factory is nn.Identity:
        node.replace_all_uses_with(node.args[0])
    else:
        if not hasattr(root, name):
            root.add_module(name, factory())
        with graph.inserting_before(node):
            new = graph.call_module(name, (node.args[0],))
        node.replace_all_uses_with(new)
    graph.erase_node(node)
    return name


def replace_activations(ctx: SwapContext) -> None:
    """Replace every ReLU whose output reaches a quantized layer's input (no weight layer between)
    by the method's ``activation_replacement()``; nothing when the method has none.

    A ReLU module is replaced at its name, so all its call sites change together; a functional
    ``relu`` becomes a call of a new module ``quantswap_act_<node>``, or disappears when the
    replacement is ``nn.Identity``. Records the names replaced.
    """
    factory = ctx.config.activation_replacement()
    if factory is None:
        return
    modules = ctx.modules
    replaced: dict[str, None] = {}
    for graph in ctx.graphs:
        for node in _relus_feeding_quantized_layers(graph, modules):
            if node.op == "call_module":
                replaced[node.target] = None
            else:
                replaced[_replace_functional_relu(ctx.model, graph, node, factory)] = None
    for target in replaced:
        if target in modules:
            set_module(ctx.model, target, factory())
    ctx.report.activations_replaced = list(replaced)


def _keeps_spatial_grid(conv: nn.Conv2d) -> bool:
    """Output size is ``ceil(H / stride)``: "same"-style padding, ``2p == d·(k − 1)`` per axis."""
    if isinstance(conv.padding, str):
        return conv.padding == "same"
    return all(2 * p == d * (k - 1) for p, d, k in zip(conv.padding, conv.dilation, conv.kernel_size, strict=True))


def add_bireal_shortcuts(ctx: SwapContext) -> None:
    """Give each binary conv (and the BatchNorm right after it) its own real-valued shortcut.

    ``y = BN(conv(x))`` becomes ``y = BN(conv(x)) + shortcut(x)``; the shortcut is the identity
    where shapes match and ``AvgPool → 1×1 conv → BN`` (module ``<conv>_shortcut``) where they do not.
    Records the convs that got a shortcut, and those that could not, with the reason.
    """
    _add_shortcuts(ctx)


def _add_shortcuts(ctx: SwapContext, factory: Callable[[int], nn.Module] | None = None, suffix: str = "") -> None:
    """Bi-Real's shortcuts; with ``factory``, each sum followed by ``factory(out_channels)`` (module
    ``<conv>_<suffix>``)."""
    shortcut_targets, ctx.report.shortcuts_skipped = _make_shortcuts(ctx.model, ctx.report.quantized)
    ctx.report.shortcuts = list(shortcut_targets)
    activations = {}
    for target in shortcut_targets if factory is not None else ():
        conv = get_module(ctx.model, target)
        activations[target] = _sibling(target, suffix)
        set_module(ctx.model, activations[target], factory(conv.out_channels).to(conv.weight.device))
    modules = ctx.modules
    for graph in ctx.graphs:
        _wire_shortcuts(graph, modules, shortcut_targets, activations)


def _sibling(target: str, suffix: str) -> str:
    """The name of a module inserted next to ``target``: ``<target>_<suffix>`` in the same parent."""
    parent, name = parent_name(target)
    return f"{parent}.{name}_{suffix}" if parent else f"{name}_{suffix}"


def shortcuts_followed_by(factory: Callable[[int], nn.Module], suffix: str) -> GraphPass:
    """A pass making Bi-Real's shortcuts (:func:`add_bireal_shortcuts`) with each sum followed by
    ``factory(out_channels)`` (module ``<conv>_<suffix>``): ReActNet's RPReLU, ReCU's Hardtanh."""

    def add_shortcuts(ctx: SwapContext) -> None:
        _add_shortcuts(ctx, factory, suffix)

    add_shortcuts.__name__ = f"add_shortcuts_with_{suffix}"
    return add_shortcuts


#: ReActNet's structure: ``RPReLU(BN(conv(x)) + shortcut(x))``.
add_react_shortcuts = shortcuts_followed_by(RPReLU, "rprelu")


def scale_quantized_outputs(ctx: SwapContext) -> None:
    """Multiply each quantized layer's output by a learnable per-channel scale (module ``<layer>_scale``,
    a :class:`~quantswap.nn.blocks.ChannelScale` starting at the latent weight's ``mean|W|`` per output
    channel), for methods whose binary weights are a plain ``±1`` (ReCU)."""
    scales = {}
    for target in ctx.report.quantized:
        layer = get_module(ctx.model, target)
        init = layer.weight.detach().abs().flatten(1).mean(1)
        scales[target] = _sibling(target, "scale")
        set_module(ctx.model, scales[target], ChannelScale(init, 1 if isinstance(layer, nn.Conv2d) else -1))
    for graph in ctx.graphs:
        for node in list(graph.nodes):
            if node.op == "call_module" and node.target in scales:
                with graph.inserting_after(node):
                    scaled = graph.call_module(scales[node.target], (node,))
                node.replace_all_uses_with(scaled, delete_user_cb=lambda user, scaled=scaled: user is not scaled)


def _make_shortcuts(root: nn.Module, convs: Sequence[str]) -> tuple[dict[str, str | None], dict[str, str]]:
    """Per binary conv, the shortcut module's name (``None``: the identity); and the convs none fits."""
    skipped = {}
    shortcut_targets: dict[str, str | None] = {}
    for target in convs:
        conv = get_module(root, target)
        if not isinstance(conv, nn.Conv2d):
            continue
        if not _keeps_spatial_grid(conv):
            skipped[target] = f"padding {conv.padding} does not keep the grid, so no shortcut fits"
            continue
        stride = conv.stride[0]
        if conv.stride[0] != conv.stride[1]:
            skipped[target] = f"unequal strides {conv.stride}"
            continue
        if conv.in_channels == conv.out_channels and stride == 1:
            shortcut_targets[target] = None
        else:
            parent, name = parent_name(target)
            sc_target = f"{parent}.{name}_shortcut" if parent else f"{name}_shortcut"
            module = bireal_shortcut(conv.in_channels, conv.out_channels, stride).to(conv.weight.device)
            set_module(root, sc_target, module)
            shortcut_targets[target] = sc_target
    return shortcut_targets, skipped


def _wire_shortcuts(graph: fx.Graph, modules: dict[str, nn.Module], shortcut_targets: dict[str, str | None],
                    activations: dict[str, str] | None = None) -> None:
    """Wire each shortcut's sum in place of the conv's (or its BatchNorm's) output; with ``activations``
    (conv -> module name), that module follows the sum."""
    for node in list(graph.nodes):
        if node.op != "call_module" or node.target not in shortcut_targets:
            continue
        x = node.args[0]
        out = node
        users = list(node.users)
        if len(users) == 1 and users[0].op == "call_module" and isinstance(modules.get(users[0].target), nn.BatchNorm2d):
            out = users[0]
        sc_target = shortcut_targets[node.target]
        with graph.inserting_after(out):
            shortcut = graph.call_module(sc_target, (x,)) if sc_target else x
        with graph.inserting_after(shortcut if sc_target else out):
            add = graph.call_function(operator.add, (out, shortcut))
        out.replace_all_uses_with(add, delete_user_cb=lambda user, add=add: user is not add)
        add.meta[SHORTCUT_SUM] = True
        end = add
        if activations and node.target in activations:
            with graph.inserting_after(add):
                end = graph.call_module(activations[node.target], (add,))
            add.replace_all_uses_with(end, delete_user_cb=lambda user, end=end: user is not end)
        end.meta[SHORTCUT_INPUT] = (x.name, node.target)


def freeze_bn_affine(ctx: SwapContext) -> None:
    """BatchNorms right after a quantized conv lose their learned scale and offset (γ = 1, β = 0)."""
    modules = ctx.modules
    convs = set(ctx.report.quantized)
    targets: dict[str, None] = {}
    for graph in ctx.graphs:
        for node in graph.nodes:
            if node.op == "call_module" and node.target in convs:
                for user in node.users:
                    if user.op == "call_module" and type(modules.get(user.target)) is nn.BatchNorm2d:
                        targets[user.target] = None
    for target in targets:
        bn = modules[target]
        new = nn.BatchNorm2d(bn.num_features, eps=bn.eps, momentum=bn.momentum, affine=False,
                             track_running_stats=bn.track_running_stats, device=bn.running_mean.device
                             if bn.running_mean is not None else None)
        if bn.track_running_stats:
            new.running_mean.copy_(bn.running_mean)
            new.running_var.copy_(bn.running_var)
            new.num_batches_tracked.copy_(bn.num_batches_tracked)
        set_module(ctx.model, target, new)
    ctx.report.bn_frozen = list(targets)
