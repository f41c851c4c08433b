""":func:`freeze`: the inference form of a swapped model, with W1/A1 layers on packed kernels."""

from __future__ import annotations

import copy
import dataclasses
import logging
import warnings

import torch
from torch import fx, nn

from quantswap import kernels
from quantswap.nn.bn_folding import fold_batchnorms, unfold_batchnorm
from quantswap.nn.layers import QuantLayer
from quantswap.nn.packed import is_packed, pack_layer, packing_obstacle, unpack_layer
from quantswap.nn.quantizers import RealWeight

__all__ = ["BACKENDS", "FreezeReport", "freeze", "is_frozen", "get_freeze_report"]

logger = logging.getLogger("quantswap")

#: ``"packed"``: W1/A1 layers run the XOR-popcount ops, weights kept as bits; ``"float"``: every
#: layer keeps a decoded float weight and runs PyTorch's own convolution.
BACKENDS = ("packed", "float")


@dataclasses.dataclass
class FreezeReport:
    """What :func:`freeze` did; stored as ``model.meta["quantswap_freeze"]``.

    ``packed``: the layers running the packed ops; ``decoded``: the other quantized layers, each with
    the reason it keeps a decoded float weight; ``kernels``: which kernels the packed ops run on;
    ``channels_last``: whether the model's 4-D float weights were converted to channels_last (done
    when any layer runs packed); ``folded``: the BatchNorms folded into the packed convolution before
    them (:mod:`quantswap.nn.bn_folding`), ``{batchnorm: convolution}``.
    """

    backend: str
    packed: list[str] = dataclasses.field(default_factory=list)
    decoded: dict[str, str] = dataclasses.field(default_factory=dict)
    kernels: kernels.KernelInfo | None = None
    channels_last: bool = False
    folded: dict[str, str] = dataclasses.field(default_factory=dict)

    def __str__(self) -> str:
        lines = [f"freeze(backend={self.backend!r}): {len(self.packed)} layers packed, {len(self.decoded)} decoded"
                 + (f", {len(self.folded)} BatchNorms folded" if self.folded else "")
                 + (", channels_last" if self.channels_last else "")]
        if self.kernels is not None and self.packed:
            lines.append(f"  kernels: {self.kernels}")
        lines += [f"  packed   {name}" for name in self.packed]
        lines += [f"  decoded  {name}: {why}" for name, why in self.decoded.items()]
        return "\n".join(lines)


def freeze(model: nn.Module, *, backend: str = "packed", inplace: bool = False) -> nn.Module:
    """The inference form of a swapped model: quantized weights computed once, latent weights dropped.

    Every quantized layer keeps its method's integer codes and scales (its state dict). With
    ``backend="packed"`` (the default) each layer whose weights and inputs are both binary (W1/A1)
    keeps its weight as bits and runs the packed XOR-popcount op (:mod:`quantswap.kernels`); its
    output equals the float-decoded layer's up to float32 rounding of a folded BatchNorm: both sum
    the ±1 products exactly and apply the scale after (``QuantConv2d.integer_exact``), so an exact
    tie is 0 in either and the next binary layer reads the same sign. Every
    other layer, and every layer with ``backend="float"``, keeps a weight decoded once to float and
    gives the eval-mode swapped model's outputs bit for bit. :func:`get_freeze_report` says which
    layer went which way and why. A BatchNorm right after a packed convolution is folded into its
    output transform (:mod:`quantswap.nn.bn_folding`). A model with packed layers is converted to
    ``channels_last`` (its 4-D float weights): the packed ops read and write that layout without
    transposing, PyTorch's convolutions then pick it for NCHW inputs too, and the whole model runs
    faster (``benchmarks/inference.py``). The result is in eval mode; it cannot be trained further
    (swap the float model again for that, or save with ``keep_latent=True``). Freezing a frozen
    model again switches its backend (and, back to ``"float"``, its layout).

    Example:
        >>> import torch, quantswap
        >>> from torchvision.models import resnet18
        >>> bnn = quantswap.binarize(resnet18(num_classes=10), method="irnet").eval()
        >>> decoded = quantswap.freeze(bnn, backend="float")
        >>> x = torch.randn(2, 3, 32, 32)
        >>> torch.equal(decoded(x), bnn(x)), decoded.layer1[0].conv1.weight.requires_grad
        (True, False)
        >>> sorted(k for k in decoded.state_dict() if k.startswith("layer1.0.conv1."))
        ['layer1.0.conv1.weight_quantizer.codes', 'layer1.0.conv1.weight_quantizer.scale']
        >>> packed = quantswap.freeze(bnn)
        >>> report = quantswap.get_freeze_report(packed)
        >>> len(report.packed), report.decoded, report.packed[0]
        (16, {}, 'layer1.0.conv1')
        >>> h = torch.randn(2, 64, 8, 8)
        >>> torch.allclose(packed.layer1[0].conv1(h), decoded.layer1[0].conv1(h), atol=1e-5)
        True
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
    if not any(isinstance(m, QuantLayer) for m in model.modules()):
        raise ValueError("freeze takes a model swapped by quantswap.binarize/ternarize; this one has no quantized layer")
    with warnings.catch_warnings():  # a packed layer takes its model's mode on the way; the result is in eval mode
        warnings.filterwarnings("ignore", message="a packed .frozen. model is for inference")
        return _freeze(model if inplace else copy.deepcopy(model), backend)


def _freeze(model: nn.Module, backend: str) -> nn.Module:
    layers = {name: m for name, m in model.named_modules() if isinstance(m, QuantLayer)}
    real = [name for name, layer in layers.items() if isinstance(layer.weight_quantizer, RealWeight)]
    if real:
        raise ValueError(f"{len(real)} layers keep real weights (a W32/A1 model, binarize(..., weights=False); e.g. "
                         f"{real[0]!r}): it freezes and saves once quantswap.quantize_weights(model) has given it "
                         "binary weights (and a second fine-tuning stage has trained them)")
    for layer in layers.values():
        layer.freeze()
    report = _route(model, layers, backend)
    if isinstance(getattr(model, "meta", None), dict):
        model.meta["quantswap_freeze"] = report
    logger.debug("%s", report)
    return model.eval()


def _route(model: nn.Module, layers: dict[str, QuantLayer], backend: str) -> FreezeReport:
    """Packs every frozen layer the packed op can serve (``backend="packed"``) or unpacks every one
    (``"float"``); says which went which way and why."""
    report = FreezeReport(backend)
    if backend == "packed":
        report.kernels = kernels.load()
        read_outside = weights_read_by_graph(model)
        for name, layer in layers.items():
            reason = packing_obstacle(layer) or read_outside.get(name)
            if reason is None:
                pack_layer(layer)
                report.packed.append(name)
            else:
                report.decoded[name] = reason
        if report.packed:
            report.folded = fold_batchnorms(model)
            model.to(memory_format=torch.channels_last)
            report.channels_last = True
        return report
    if any(is_packed(layer) for layer in layers.values()):  # a packed freeze made it channels_last
        model.to(memory_format=torch.contiguous_format)
    for name, layer in layers.items():
        if is_packed(layer):
            unfold_batchnorm(layer)
            unpack_layer(layer)
        report.decoded[name] = 'backend="float"'
    return report


def weights_read_by_graph(model: nn.Module) -> dict[str, str]:
    """Layers whose weight the traced graph reads directly (``get_attr``), e.g. torchvision's Swin: they
    need a materialized weight."""
    graph = getattr(model, "graph", None)
    if not isinstance(graph, fx.Graph):
        return {}
    return {node.target.removesuffix(".weight"): "its weight is also read outside the layer by the model's graph"
            for node in graph.nodes if node.op == "get_attr" and node.target.endswith(".weight")}


def get_freeze_report(model: nn.Module) -> FreezeReport:
    """The :class:`FreezeReport` of a model returned by :func:`freeze`; ``ValueError`` for any other."""
    report = model.meta.get("quantswap_freeze") if isinstance(getattr(model, "meta", None), dict) else None
    if not isinstance(report, FreezeReport):
        raise ValueError("this model was not made by quantswap.freeze (or quantswap.from_pretrained)")
    return report


def is_frozen(model: nn.Module) -> bool:
    """Whether ``model`` holds quantized layers and all of them are frozen (packed or decoded)."""
    layers = [m for m in model.modules() if isinstance(m, QuantLayer)]
    return bool(layers) and all(m.is_frozen for m in layers)
