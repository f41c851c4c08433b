"""Dataflow questions asked of a traced graph: where the weight layers are, which come first and
last, and which activations feed a quantized layer."""

from __future__ import annotations

from collections.abc import Callable

from torch import fx, nn

__all__ = ["WEIGHT_LAYER_TYPES", "weight_layer_sites", "first_and_last", "reaches"]

#: Layers that count as "a Conv/Linear" for dataflow (first/last), whatever their subclass.
WEIGHT_LAYER_TYPES = (nn.modules.conv._ConvNd, nn.Linear)


def _owner_of_param(target: str) -> str:
    return target.rsplit(".", 1)[0] if "." in target else ""


def weight_layer_sites(graph: fx.Graph, modules: dict[str, nn.Module]) -> dict[fx.Node, list[str]]:
    """Each node where Conv/Linear layers compute, mapped to the layers' qualified names.

    A layer called as a module is its ``call_module`` node. A layer whose weight is read directly
    (``get_attr layer.weight``, as torchvision's Swin does) computes at each user of that read; one
    such function call can hold several layers (Swin's attention takes both qkv and proj weights).
    """
    sites: dict[fx.Node, list[str]] = {}
    for node in graph.nodes:
        if node.op == "call_module" and isinstance(modules.get(node.target), WEIGHT_LAYER_TYPES):
            sites.setdefault(node, []).append(node.target)
        elif node.op == "get_attr" and node.target.endswith(".weight"):
            owner = _owner_of_param(node.target)
            if isinstance(modules.get(owner), WEIGHT_LAYER_TYPES):
                for user in node.users:
                    sites.setdefault(user, []).append(owner)
    return sites


def first_and_last(graph: fx.Graph, sites: dict[fx.Node, list[str]]) -> tuple[set[str], set[str]]:
    """Layers with no weight layer upstream ("first") and with none downstream ("last").

    Decided by dataflow, so a model with several heads (GoogLeNet's auxiliary classifiers) has
    several last layers, whatever the order in which its modules were registered.
    """
    nodes = list(graph.nodes)
    upstream: dict[fx.Node, bool] = {}  # a weight layer computes strictly before this node
    for node in nodes:
        upstream[node] = any(upstream[a] or a in sites for a in node.all_input_nodes)
    downstream: dict[fx.Node, bool] = {}  # a weight layer computes strictly after this node
    for node in reversed(nodes):
        downstream[node] = any(downstream[u] or u in sites for u in node.users)
    first = {name for node, names in sites.items() if not upstream[node] for name in names}
    last = {name for node, names in sites.items() if not downstream[node] for name in names}
    return first, last


def reaches(graph: fx.Graph, is_target: Callable[[fx.Node], bool], is_barrier: Callable[[fx.Node], bool]) -> set[fx.Node]:
    """Nodes whose output flows into a target node without crossing a barrier node."""
    hit: set[fx.Node] = set()
    for node in reversed(graph.nodes):
        if any(is_target(u) or (u in hit and not is_barrier(u)) for u in node.users):
            hit.add(node)
    return hit
