"""The export form of a swapped model: each quantized weight as ``Σ_b dequantize(codes_b, scale_b)``
(plus a per-channel offset where the codec has one).

``quantswap::dequantize(codes, scale)`` is a custom op (``codes`` int8, ``scale`` float, 0-d or one
per output channel): in PyTorch it is ``scale · codes``; the ONNX exporter writes it as one
``DequantizeLinear`` node reading the codes as a constant, which :mod:`quantswap.export.onnx` then
stores as INT2 and rewrites as ``Mul(Cast(codes), scale)``. :func:`export_form` turns a swapped or
frozen model into a copy whose quantized layers compute their weight that way
(:class:`DequantizedWeight`); an integer-exact layer reads its codes with scale 1 and multiplies its
output by the scale, broadcast to the batch at run time so that no graph optimizer can fold the scale
back into the weight (which would round an exact tie off 0). Everything else is unchanged, so the
copy's outputs are the frozen model's.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from quantswap.frozen import freeze, weights_read_by_graph
from quantswap.nn.layers import QuantConv2d, QuantLayer, QuantLinear

__all__ = ["DequantizedWeight", "export_form", "dequantize"]

_LIB = torch.library.Library("quantswap", "FRAGMENT")  # noqa: TOR901 - the namespace's other ops: quantswap.kernels
_LIB.define("dequantize(Tensor codes, Tensor scale) -> Tensor")


def _dequantize(codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    if scale.dim() == 1:  # one scale per output channel
        scale = scale.view(-1, *(1,) * (codes.dim() - 1))
    return codes.to(scale.dtype) * scale


_LIB.impl("dequantize", _dequantize, "CompositeExplicitAutograd")


@torch.library.register_fake("quantswap::dequantize")
def _dequantize_fake(codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return torch.empty(codes.shape, dtype=scale.dtype, device=codes.device)


dequantize = torch.ops.quantswap.dequantize


class DequantizedWeight(nn.Module):
    """Takes a frozen layer's weight quantizer's place in the export form: its forward returns the
    weight as the sum of its codec's terms (:meth:`~quantswap.nn.quantizers.WeightQuantizer.dequantize_terms`),
    each a ``quantswap::dequantize`` of buffers ``codes{b}`` / ``scale{b}``."""

    def __init__(self, terms: list[tuple[torch.Tensor, torch.Tensor]], offset: torch.Tensor | None = None,
                 exact: bool = False):
        super().__init__()
        self.terms, self.exact = len(terms), exact  # exact: the layer computes scale ⊙ (x ⊛ codes)
        for b, (codes, scale) in enumerate(terms):
            self.register_buffer(f"codes{b}", codes.to(torch.int8).contiguous())
            self.register_buffer(f"scale{b}", scale.float().contiguous())
        self.register_buffer("offset", None if offset is None else offset.float().contiguous())

    def forward(self) -> torch.Tensor:
        weight = None
        for b in range(self.terms):
            term = dequantize(getattr(self, f"codes{b}"), getattr(self, f"scale{b}"))
            weight = term if weight is None else weight + term
        if self.offset is not None:  # one per output channel (AdaBin): an Add after the terms
            weight = weight + self.offset.view(-1, *(1,) * (weight.dim() - 1))
        return weight


class _DequantizedMixin:
    @property
    def weight(self) -> torch.Tensor:
        return self.weight_quantizer()

    def quantized_weight(self) -> torch.Tensor:
        return self.weight_quantizer()

    @property
    def integer_exact(self) -> bool:
        return self.weight_quantizer.exact  # as the frozen layer was (its codec is gone)

    def _exact_parts(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """An integer-exact layer's ``(unit, scale, offset)`` in the graph: the codes dequantized with scale 1 (±1),
        the scale applied to the convolution's output (a ``Mul``, see :meth:`_scaled`), AdaBin's offset."""
        q = self.weight_quantizer
        return dequantize(q.codes0, torch.ones((), dtype=q.scale0.dtype)), q.scale0, q.offset

    def _scaled(self, y: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """``y ⊙ scale`` with the scale expanded to the batch: a run-time operand, which onnxruntime's
        Conv-Mul fusion cannot fold into the ±1 weight (ties would no longer sum to exactly 0)."""
        if isinstance(self, nn.Conv2d):
            return y * scale.reshape(1, -1, 1, 1).expand(y.shape[0], -1, 1, 1)
        return y * scale.reshape(-1).expand(*y.shape[:-1], -1)


class DequantizedConv2d(_DequantizedMixin, QuantConv2d):
    """A frozen :class:`QuantConv2d` in export form."""


class DequantizedLinear(_DequantizedMixin, QuantLinear):
    """A frozen :class:`QuantLinear` in export form."""


_EXPORT_FORM = {QuantConv2d: DequantizedConv2d, QuantLinear: DequantizedLinear}


def _is_float_checkpoint(model: nn.Module) -> bool:
    meta = getattr(model, "meta", None)
    config = meta.get("quantswap_checkpoint") if isinstance(meta, dict) else None
    return config is not None and config.quantization is None


def export_form(model: nn.Module) -> nn.Module:
    """A float32 eval-mode copy of a swapped, frozen or loaded ``model`` whose quantized layers compute
    their weight from codes and scales (see the module docstring); a float checkpoint's model as it is.

    Raises ``ValueError`` naming every layer that cannot be written so, and how to keep it real.
    """
    if not any(isinstance(m, QuantLayer) for m in model.modules()):
        if _is_float_checkpoint(model):  # a FP parent loaded by from_pretrained: exported as the float model
            return copy.deepcopy(model).float().eval()
        raise ValueError("export_onnx takes a model swapped by quantswap.binarize/ternarize (or loaded with "
                         "quantswap.from_pretrained); this one has no quantized layer: use torch.onnx.export")
    model = freeze(copy.deepcopy(model).float(), backend="float", inplace=True)
    problems = dict(weights_read_by_graph(model))
    layers = {name: m for name, m in model.named_modules() if isinstance(m, QuantLayer)}
    terms = {}
    for name, layer in layers.items():
        frozen = layer.weight_quantizer
        try:
            terms[name] = (frozen.codec.dequantize_terms(frozen.codes, frozen.scale),
                           frozen.codec.dequantize_offset(frozen.codes, frozen.scale))
        except NotImplementedError as err:
            problems.setdefault(name, str(err))
    if problems:
        listed = "\n".join(f"  {name}: {why}" for name, why in problems.items())
        raise ValueError(f"cannot write these quantized layers' weights as codes × scales in ONNX:\n{listed}\n"
                         f"keep them real: swap again with exclude={sorted(problems)!r}")
    for name, layer in layers.items():
        del layer.weight  # the decoded float weight; the terms replace it
        # AdaBin's offset terms stay in the weight here: as a graph, S_w and K would be float maps the size of the
        # activations, constant-folded into the file (measured: 2.5x the checkpoint, and slower)
        exact = layer.integer_exact and terms[name][1] is None and not hasattr(layer.input_quantizer, "binary_set")
        layer.weight_quantizer = DequantizedWeight(*terms[name], exact=exact)
        layer.__class__ = _EXPORT_FORM[next(base for base in _EXPORT_FORM if isinstance(layer, base))]
    return model.eval()
