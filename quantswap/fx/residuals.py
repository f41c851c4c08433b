"""The authors' Bi-Real network from a model whose blocks carry their own residual (``block_residual=False``):
the block residual that per-conv shortcuts make redundant is removed.

Bi-Real Net, ReActNet, ReCU and AdaBin wrap *every* binary conv in its own shortcut, and their ResNets have
no other residual: ``y1 = BN(conv1(x)) + sc(x)``, ``out = BN(conv2(y1)) + y1``, with ``sc`` the identity or,
where the conv downsamples, ``AvgPool → 1×1 conv → BN``. A torchvision (or timm) ResNet block adds its input
once more at its end (``+ x``, or ``+ downsample(x)`` through a real 1×1 stride-2 conv), which the shortcut
pass leaves in place. :func:`remove_block_residuals` finds that pattern by dataflow, in any model:

* an addition whose one operand is the end of a chain of shortcut sums (each binary conv's input is the
  previous sum's output, through nothing but ``nn.Identity``: the ReLUs the swap removed),
* and whose other operand is the chain's input, directly or through a branch used by nothing else (the
  projection ``downsample``),

and rewires the block's users to the chain's end. The branch's modules are deleted; where the branch was a
1×1 conv and a BatchNorm of the same shapes as the first conv's shortcut, the shortcut starts from their
pretrained weights. Blocks whose body holds anything but shortcut-wrapped binary convs (MobileNet's real
depthwise conv, a squeeze-and-excitation) keep their residual.

Where a block was rewired, each activation the swap removed that does not follow a shortcut sum (the stem's
ReLU) becomes the method's stem activation (``config.stem_activation``: ReCU's Hardtanh, AdaBin's Maxout).

Example:
    >>> import operator, quantswap
    >>> from torchvision.models import resnet18
    >>> bnn = quantswap.binarize(resnet18(), method="bireal", block_residual=False)
    >>> bnn.meta["quantswap"].blocks_rewired[:3]
    ['layer1.0', 'layer1.1', 'layer2.0']
    >>> sum(n.target is operator.add for n in bnn.graph.nodes), hasattr(bnn.layer2[0], "downsample")
    (16, False)
"""

from __future__ import annotations

import operator
from typing import TYPE_CHECKING

import torch
from torch import fx, nn

from quantswap.fx.utils import get_module, parent_name, set_module

if TYPE_CHECKING:
    from quantswap.fx.pipeline import SwapContext

__all__ = ["SHORTCUT_INPUT", "SHORTCUT_SUM", "remove_block_residuals"]

#: ``node.meta`` key on the last node of a shortcut sum (the sum, or the activation after it): ``(input, conv)``,
#: the name of the node the binary conv and its shortcut read and the conv's qualified name.
SHORTCUT_INPUT = "quantswap_shortcut"
#: ``node.meta`` key on the addition of a shortcut sum (never a block residual itself).
SHORTCUT_SUM = "quantswap_shortcut_sum"
_ADDS = {operator.add, operator.iadd, torch.add}


def remove_block_residuals(ctx: SwapContext) -> None:
    """Remove every block residual made redundant by per-conv shortcuts (see the module docstring); records
    the blocks in ``ctx.report.blocks_rewired``."""
    modules = ctx.modules
    rewired: dict[str, None] = {}
    dropped: dict[str, None] = {}
    for graph in ctx.graphs:
        for block, branch in _rewire(graph, modules):
            rewired[block] = None
            dropped.update(dict.fromkeys(branch))
    if not rewired:
        return
    used = {n.target for graph in ctx.graphs for n in graph.nodes if n.op == "call_module"}
    gone = {target for target in dropped if target not in used and target in modules}
    for target in gone:
        owner, name = parent_name(target)
        delattr(get_module(ctx.model, owner), name)
    _drop_emptied_containers(ctx.model, {parent_name(target)[0] for target in gone})

    def kept(name: str) -> bool:
        return not any(name == g or name.startswith(g + ".") for g in gone)

    report = ctx.report
    report.quantized = [n for n in report.quantized if kept(n)]
    report.shortcuts = [n for n in report.shortcuts if kept(n)]
    report.kept_real = {n: why for n, why in report.kept_real.items() if kept(n)}
    report.blocks_rewired = list(rewired)
    factory = getattr(ctx.config, "stem_activation", None)
    if factory is not None:
        _add_stem_activations(ctx, factory)


def _through_identity(node: fx.Node, modules: dict[str, nn.Module]) -> list[fx.Node]:
    """``node`` and what it passes on unchanged, walking back through ``nn.Identity`` calls."""
    seen = [node]
    while node.op == "call_module" and type(modules.get(node.target)) is nn.Identity:
        node = node.args[0]
        seen.append(node)
    return seen


def _chain(end: fx.Node, names: dict[str, fx.Node], modules: dict[str, nn.Module]):
    """Walk back a chain of shortcut sums from ``end``: yields, for each sum, its conv and the nodes that pass
    on its input (the input, then what it passes through unchanged)."""
    node = end
    while SHORTCUT_INPUT in node.meta:
        x, conv = node.meta[SHORTCUT_INPUT]
        passed = _through_identity(names[x], modules)
        yield conv, passed
        node = passed[-1]


def _upstream(node: fx.Node, source: fx.Node, order: dict[fx.Node, int]) -> set[fx.Node] | None:
    """The nodes between ``source`` (excluded) and ``node`` (included); ``None`` if ``node`` depends on
    anything that does not come from ``source``."""
    region: set[fx.Node] = set()
    todo = [node]
    while todo:
        node = todo.pop()
        if node is source or node in region:
            continue
        if node.op not in ("call_module", "call_function", "call_method") or order[node] < order[source]:
            return None
        region.add(node)
        todo.extend(node.all_input_nodes)
    return region


def _branch(skip: fx.Node, main: fx.Node, source: fx.Node, add: fx.Node,
            order: dict[fx.Node, int]) -> list[fx.Node] | None:
    """The nodes computing ``skip`` from ``source`` alone, apart from the ``main`` operand's path and used
    only inside the branch or by ``add``; ``None`` if there is no such branch."""
    if skip is source:
        return []
    region = _upstream(skip, source, order)
    if region is None or region & (_upstream(main, source, order) or {main}):
        return None
    inside = region | {add}
    if any(user not in inside for node in region for user in node.users):
        return None
    return list(region)


def _block_name(convs: list[str]) -> str:
    """The qualified name the chain's convs share (``layer2.0``), or the first conv's."""
    parts = [c.split(".") for c in convs]
    common = []
    for level in zip(*parts, strict=False):
        if len(set(level)) > 1:
            break
        common.append(level[0])
    return ".".join(common[: len(parts[0]) - 1]) or convs[0]


def _rewire(graph: fx.Graph, modules: dict[str, nn.Module]) -> list[tuple[str, list[str]]]:
    """Remove the redundant block residuals of one graph; (block name, modules of the removed branch) each."""
    names = {n.name: n for n in graph.nodes}
    order = {n: i for i, n in enumerate(graph.nodes)}
    done = []
    for add in list(graph.nodes):
        if (add.op != "call_function" or add.target not in _ADDS or len(add.args) != 2 or add.kwargs
                or SHORTCUT_SUM in add.meta):
            continue
        for main, skip in (add.args, add.args[::-1]):
            if not isinstance(main, fx.Node) or not isinstance(skip, fx.Node):
                continue
            match = _match(main, skip, add, names, modules, order)
            if match is None:
                continue
            convs, branch = match
            add.replace_all_uses_with(main)
            graph.erase_node(add)
            _reuse_projection(branch, convs[0], modules)
            for node in sorted(branch, key=order.__getitem__, reverse=True):
                graph.erase_node(node)
            done.append((_block_name(convs), [n.target for n in branch if n.op == "call_module"]))
            break
    return done


def _match(main: fx.Node, skip: fx.Node, add: fx.Node, names: dict[str, fx.Node], modules: dict[str, nn.Module],
           order: dict[fx.Node, int]) -> tuple[list[str], list[fx.Node]] | None:
    """If ``main`` closes a chain of shortcut sums whose input ``skip`` comes from (directly or through a
    branch of its own): the chain's convs, first first, and the branch's nodes."""
    convs = []
    for conv, passed in _chain(_through_identity(main, modules)[-1], names, modules):
        convs.insert(0, conv)
        for source in passed:
            branch = _branch(skip, main, source, add, order)
            if branch is not None:
                return convs, branch
    return None


def _reuse_projection(branch: list[fx.Node], conv: str, modules: dict[str, nn.Module]) -> None:
    """Where the removed branch is a 1×1 conv then a BatchNorm and the block's first conv has a projection
    shortcut (``<conv>_shortcut``: ... → 1×1 conv → BN) of the same shapes, start it from their weights."""
    calls = [modules[n.target] for n in branch if n.op == "call_module"]
    old_convs = [m for m in calls if type(m) is nn.Conv2d]
    old_bns = [m for m in calls if type(m) is nn.BatchNorm2d]
    shortcut = modules.get(f"{conv}_shortcut")
    if len(calls) != 2 or len(old_convs) != 1 or len(old_bns) != 1 or not isinstance(shortcut, nn.Sequential):
        return
    pairs = ((old_convs[0], shortcut[-2]), (old_bns[0], shortcut[-1]))
    if all(type(old) is type(new) and _shapes(old) == _shapes(new) for old, new in pairs):
        for old, new in pairs:
            new.load_state_dict(old.state_dict())


def _shapes(module: nn.Module) -> dict[str, torch.Size]:
    return {name: tensor.shape for name, tensor in module.state_dict().items()}


def _drop_emptied_containers(root: nn.Module, owners: set[str]) -> None:
    """Delete the containers the removal left empty (a ``downsample`` Sequential whose children are gone)."""
    for name in sorted(owners, key=lambda n: -n.count(".")):
        module = get_module(root, name) if name else None
        if isinstance(module, (nn.Sequential, nn.ModuleList, nn.ModuleDict)) and not len(module):
            owner, child = parent_name(name)
            delattr(get_module(root, owner), child)


def _channels(node: fx.Node, modules: dict[str, nn.Module]) -> int | None:
    """The channel count of ``node``'s output: that of the nearest BatchNorm or conv upstream."""
    while node.op == "call_module":
        module = modules.get(node.target)
        for attr in ("num_features", "out_channels"):
            if isinstance(getattr(module, attr, None), int):
                return getattr(module, attr)
        node = node.args[0]
    return None


def _add_stem_activations(ctx: SwapContext, factory) -> None:
    """After each removed ReLU (now ``nn.Identity``) that does not follow a shortcut sum, the method's stem
    activation (module ``<relu>_<name>``)."""
    modules = ctx.modules
    replaced = set(ctx.report.activations_replaced)
    for graph in ctx.graphs:
        for node in list(graph.nodes):
            if node.op != "call_module" or node.target not in replaced:
                continue
            if any(SHORTCUT_INPUT in n.meta for n in _through_identity(node.args[0], modules)):
                continue
            channels = _channels(node.args[0], modules)
            module = factory(channels) if channels is not None else None
            if module is None:
                continue
            name = f"{node.target}_{type(module).__name__.lower()}"
            if name not in modules:
                set_module(ctx.model, name, module)
                modules[name] = module
                ctx.report.stem_activations.append(name)
            with graph.inserting_after(node):
                act = graph.call_module(name, (node,))
            node.replace_all_uses_with(act, delete_user_cb=lambda user, act=act: user is not act)
