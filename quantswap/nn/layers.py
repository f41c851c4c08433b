"""Quantized drop-in layers: :class:`QuantConv2d` and :class:`QuantLinear`.

They subclass ``nn.Conv2d`` / ``nn.Linear``, so they keep the latent ``weight`` and ``bias``
parameters (same state-dict keys as the float layer, same optimizer groups) and every convolution
option (stride, padding, dilation, groups, padding_mode). The forward quantizes the weight, and the
input too when the method binarizes activations.

:meth:`freeze` turns a layer into its inference form: the weight quantizer's codes and scales become
the layer's state and ``weight`` becomes a (non-persistent) buffer holding the quantized weight,
decoded once; the latent float weight is dropped.
"""

from __future__ import annotations

import contextlib
import functools

import torch
from torch import nn
from torch.nn import functional as F

from quantswap import functional as QF
from quantswap.kernels import affine
from quantswap.nn.quantizers import FrozenWeight, WeightQuantizer

__all__ = ["QuantConv2d", "QuantLinear", "QuantLayer", "is_quantized_layer", "quantized_weight_keys"]

#: State-dict names, under a frozen layer, of its codes and scales.
CODES_KEY, SCALE_KEY = "weight_quantizer.codes", "weight_quantizer.scale"


class _QuantMixin:
    weight_quantizer: nn.Module
    input_quantizer: nn.Module | None

    def _attach(self, weight_quantizer: nn.Module, input_quantizer: nn.Module | None) -> None:
        self.weight_quantizer = weight_quantizer
        self.input_quantizer = input_quantizer

    def quantized_weight(self) -> torch.Tensor:
        """The weight the forward uses (differentiable with the method's estimator).

        In eval mode without autograd it is computed once and reused until the latent weight changes
        (an optimizer step, a load, a move: the tensor's version or storage), so evaluating during
        fine-tuning costs what a frozen model costs.
        """
        if self.training or torch.is_grad_enabled() or self.is_frozen or torch.compiler.is_compiling():
            return self.weight_quantizer(self.weight)
        w = self.weight
        key = (w.data_ptr(), w._version, w.dtype, w.device, getattr(self.weight_quantizer, "cache_key", tuple)())
        cached = self.__dict__.get("_eval_weight")
        if cached is None or cached[0] != key:
            cached = (key, self.weight_quantizer(w))
            self.__dict__["_eval_weight"] = cached
        return cached[1]

    def _forward_weight(self) -> tuple[torch.Tensor, object]:
        """The forward's weight and, with autograd on, what the backward may reuse to compute it again (see
        :meth:`_compact_saves`)."""
        q = self.weight_quantizer
        hooked = q._forward_hooks or q._forward_pre_hooks  # a hook on the quantizer sees its forward, as ever
        if torch.is_grad_enabled() and isinstance(q, WeightQuantizer) and not hooked:
            return q.quantize(self.weight)
        return self.quantized_weight(), None

    def train(self, mode: bool = True):
        self.__dict__.pop("_eval_weight", None)  # a cached eval weight is not kept into training
        self.__dict__.pop("_exact_parts_cache", None)
        return super().train(mode)

    def _quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.input_quantizer is None else self.input_quantizer(x)

    def _compact_saves(self, x: torch.Tensor, w: torch.Tensor, statistics: object = None
                       ) -> contextlib.AbstractContextManager:
        """Where the convolution or matmul saves its operands for the backward, keep less than two float
        copies: binary inputs (two values: ±1, or AdaBin's learned pair) as one byte per element, and no
        quantized weight at all (the backward quantizes the latent weight again, from the forward's
        ``statistics`` where the quantizer returned some, which is cheaper than keeping a float copy of
        every weight from the forward to the backward). A no-op outside autograd and under
        ``torch.compile`` or ``torch.export`` (inductor plans its own buffers)."""
        tracing = torch.compiler.is_compiling() or torch.compiler.is_exporting()
        if not torch.is_grad_enabled() or tracing or self.is_frozen:
            return contextlib.nullcontext()
        levels = self._input_levels(x)
        return torch.autograd.graph.saved_tensors_hooks(
            _CompactSaves(self, x if levels else None, w, levels, statistics).pack, _CompactSaves.unpack)

    def _input_levels(self, x: torch.Tensor) -> tuple[float, float] | None:
        """``(lo, hi)``, the two values of the input quantizer's output ``x``: ``(-1, 1)`` for a plain sign
        of something, an input quantizer's ``levels()`` where the native kernels code them (AdaBin's
        ``β ∓ α``); ``None`` when its output is not known to be two values."""
        q = self.input_quantizer
        if (getattr(q, "plain_sign", False) or hasattr(q, "sign_input")) and not hasattr(q, "binary_set"):
            return -1.0, 1.0
        levels = getattr(q, "levels", None)
        return levels() if levels is not None and QF._native(x) else None

    @property
    def binary_activations(self) -> bool:
        return self.input_quantizer is not None

    @property
    def integer_exact(self) -> bool:
        """Whether the eval forward is computed from the exact integer sums of ``sign(x) ⊛ sign(W)``: ``α ⊙ (sign(x)
        ⊛ sign(W))``, or with a binary set that is not ±1 (AdaBin) the four sums of :mod:`quantswap.kernels.affine`.
        So a sum of exactly 0 stays 0, as in the packed kernels, instead of ``±1e-7`` of rounding whose sign the
        next binary layer would read. W1/A1 layers with one binary term per weight (an offset allowed) and an input
        that is the sign of something (a plain sign, RSign's ``x + b``, AdaBin's two values); training is unchanged."""
        q, codec = self.input_quantizer, self.codec
        return (not self.training and (getattr(q, "plain_sign", False) or hasattr(q, "sign_input"))
                and isinstance(codec, WeightQuantizer) and codec.code_levels == 2 and codec.branches == 1)

    def _exact_parts(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(unit, scale, offset)`` with ``w == scale ⊙ unit + offset``: ``unit`` the ±1 signs (0 in a channel of
        zeros), ``scale`` and ``offset`` (``None`` for a weight centred on 0) one per output channel, ``[C_out]``.
        Gradients reach ``w`` through ``unit`` as they would through ``w``; cached while ``w`` is unchanged."""
        tracing = torch.compiler.is_compiling() or torch.compiler.is_exporting()
        caching = not torch.is_grad_enabled() and not tracing
        key = (w.data_ptr(), w._version, w.dtype, w.device) if caching else None
        cached = self.__dict__.get("_exact_parts_cache")
        if caching and cached is not None and cached[0] is w and cached[1] == key:  # holding w: no address reuse
            return cached[2]
        parts = self._centred_parts(w) if self.codec.centred else self._offset_parts(w)
        if caching:
            self.__dict__["_exact_parts_cache"] = (w, key, parts)
        return parts

    def _centred_parts(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        scale = w.detach().abs().flatten(1).amax(dim=1)  # |scale · sign| is the scale, at any granularity
        return w / torch.where(scale == 0, 1, scale).view(-1, *(1,) * (w.dim() - 1)), scale, None

    def _offset_parts(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The codec's own codes and per-channel ``α``, ``β`` (``w - β`` divided by ``α`` would round off ±1)."""
        with torch.no_grad():
            frozen = self.weight_quantizer if self.is_frozen else None
            codes, scale = (frozen.codes, frozen.scale) if frozen is not None else self.codec.encode(self.weight)
            (codes, alpha), = self.codec.dequantize_terms(codes, scale)
            beta = self.codec.dequantize_offset(codes, scale)
            alpha, beta = (t.to(w.dtype).expand(w.shape[0]).contiguous() for t in (alpha, beta))
        unit = codes.to(w.dtype)
        if w.requires_grad and torch.is_grad_enabled():
            unit = unit + (w - w.detach()) / alpha.view(-1, *(1,) * (w.dim() - 1))
        return unit, alpha, beta

    def _exact_input(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        """``(s, binary_set)``: the ±1 signs the input quantizer reads and its two values as ``(a, b)`` in
        ``a·s + b`` (``None``: ±1). Gradients reach ``x`` through ``s`` as through the quantizer's output."""
        q = self.input_quantizer
        binary_set = getattr(q, "binary_set", None)
        if binary_set is None:
            return q(x), None
        a, b = binary_set()
        s = QF.sign(q.sign_input(x))
        if torch.is_grad_enabled() and x.requires_grad:
            xq = q(x)
            s = s + (xq - xq.detach()) / a
        return s, (a, b)

    def _scaled(self, y: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """``y`` times one scale per output channel (a convolution's channels are its second axis)."""
        return y * (scale.view(-1, 1, 1) if isinstance(self, nn.Conv2d) else scale)

    @property
    def is_frozen(self) -> bool:
        return isinstance(self.weight_quantizer, FrozenWeight)

    @property
    def codec(self) -> WeightQuantizer:
        """The weight quantizer (also after :meth:`freeze`, which wraps it)."""
        return self.weight_quantizer.codec if self.is_frozen else self.weight_quantizer

    @torch.no_grad()
    def freeze(self) -> None:
        """Replace the latent weight by the quantized weight, computed once (see the module docstring)."""
        if self.is_frozen:
            return
        if not isinstance(self.weight_quantizer, WeightQuantizer):
            raise TypeError(f"cannot freeze: {type(self.weight_quantizer).__name__} is not a WeightQuantizer codec")
        dtype = self.weight.dtype
        frozen = FrozenWeight(self.weight_quantizer, *self.weight_quantizer.encode(self.weight))
        del self.weight
        self.weight_quantizer = frozen
        self.register_buffer("weight", frozen.decode(dtype), persistent=False)
        self.register_load_state_dict_post_hook(_redecode_frozen_weight)


def _identity(tensor: torch.Tensor | None) -> tuple | None:
    """What tells a tensor apart without holding it (the hooks must not keep a float copy alive)."""
    if tensor is None:
        return None
    return tensor.data_ptr(), tuple(tensor.shape), tensor.stride(), tensor.dtype, tensor.device


class _CompactSaves:
    """The saved-tensor hooks of :meth:`_QuantMixin._compact_saves` for one call of one layer."""

    def __init__(self, layer: _QuantMixin, signs: torch.Tensor | None, weight: torch.Tensor,
                 levels: tuple[float, float] | None = None, statistics: object = None):
        self.layer, self.signs, self.weight, self.levels = layer, _identity(signs), _identity(weight), levels
        quantizer = layer.weight_quantizer
        self.requantize = quantizer if statistics is None else functools.partial(quantizer.requantize,
                                                                                  statistics=statistics)

    def pack(self, tensor: torch.Tensor):
        identity = _identity(tensor)
        if identity == self.weight:  # the latent weight the forward read (torch.func may have swapped it in)
            latent = self.layer.weight
            return ("weight", self.requantize, latent, latent._version, tensor.dtype)
        if identity == self.signs:
            if self.levels == (-1.0, 1.0):
                return ("signs", tensor.to(torch.int8), tensor.dtype)  # preserve_format: the same strides back
            if tensor.is_contiguous():
                return ("levels", QF._kernels().level_codes(tensor, self.levels[1]), self.levels)
        return tensor

    @staticmethod
    def unpack(packed):
        if isinstance(packed, torch.Tensor):
            return packed
        if packed[0] == "signs":
            _, codes, dtype = packed
            return codes.to(dtype)
        if packed[0] == "levels":
            _, codes, (lo, hi) = packed
            return QF._kernels().level_values(codes, lo, hi)
        _, requantize, latent, version, dtype = packed
        if latent._version != version:
            raise RuntimeError(
                "the latent weight of a quantized layer changed between the forward and the backward "
                "(an optimizer step or an in-place edit before backward()); run backward() first")
        with torch.no_grad():
            return requantize(latent.detach()).to(dtype)


def _redecode_frozen_weight(layer: _QuantMixin, incompatible_keys) -> None:
    """After ``load_state_dict`` replaced a frozen layer's codes and scales, decode its weight again."""
    if layer.is_frozen and "weight" in layer._buffers:  # a packed layer reloads its bits itself
        layer.weight = layer.weight_quantizer.decode(layer.weight.dtype).to(layer.weight.device)


class QuantConv2d(_QuantMixin, nn.Conv2d):
    """A ``Conv2d`` whose weight (and optionally input) is quantized in the forward pass."""

    def __init__(self, *args, weight_quantizer: nn.Module, input_quantizer: nn.Module | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._attach(weight_quantizer, input_quantizer)

    @classmethod
    def from_float(
        cls, conv: nn.Conv2d, weight_quantizer: nn.Module, input_quantizer: nn.Module | None = None
    ) -> QuantConv2d:
        """Wrap ``conv``'s own weight and bias parameters (not copies) with the quantizers."""
        new = cls(
            conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
            dilation=conv.dilation, groups=conv.groups, bias=conv.bias is not None, padding_mode=conv.padding_mode,
            device="meta", weight_quantizer=weight_quantizer, input_quantizer=input_quantizer,
        )
        new.weight = conv.weight
        new.bias = conv.bias
        new.train(conv.training)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.integer_exact:
            return self._exact_forward(x, self._forward_weight()[0])
        x, (w, statistics) = self._quantize_input(x), self._forward_weight()
        with self._compact_saves(x, w, statistics):
            return self._conv_forward(x, w, self.bias)

    def _exact_forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        (s, binary_set), (unit, scale, offset) = self._exact_input(x), self._exact_parts(w)
        c0, offsets = affine.coefficients(scale, offset, *(binary_set or (None, None)))
        return affine.finish(self._scaled(self._conv_forward(s, unit, None), c0), offsets, self.bias, 2,
                             lambda: affine.conv2d_sums(s, unit, self.stride, self.padding, self.dilation, self.groups))


class QuantLinear(_QuantMixin, nn.Linear):
    """A ``Linear`` whose weight (and optionally input) is quantized in the forward pass."""

    def __init__(self, *args, weight_quantizer: nn.Module, input_quantizer: nn.Module | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._attach(weight_quantizer, input_quantizer)

    @classmethod
    def from_float(
        cls, linear: nn.Linear, weight_quantizer: nn.Module, input_quantizer: nn.Module | None = None
    ) -> QuantLinear:
        """Wrap ``linear``'s own weight and bias parameters (not copies) with the quantizers."""
        new = cls(
            linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta",
            weight_quantizer=weight_quantizer, input_quantizer=input_quantizer,
        )
        new.weight = linear.weight
        new.bias = linear.bias
        new.train(linear.training)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.integer_exact:
            return self._exact_forward(x, self._forward_weight()[0])
        x, (w, statistics) = self._quantize_input(x), self._forward_weight()
        with self._compact_saves(x, w, statistics):
            return F.linear(x, w, self.bias)

    def _exact_forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        (s, binary_set), (unit, scale, offset) = self._exact_input(x), self._exact_parts(w)
        c0, offsets = affine.coefficients(scale, offset, *(binary_set or (None, None)))
        return affine.finish(self._scaled(F.linear(s, unit), c0), offsets, self.bias, 0,
                             lambda: affine.linear_sums(s, unit))


QuantLayer = (QuantConv2d, QuantLinear)


def is_quantized_layer(module: nn.Module) -> bool:
    return isinstance(module, QuantLayer)


def quantized_weight_keys(model: nn.Module) -> dict[str, tuple[str, str]]:
    """The state-dict keys holding quantized weights: ``key -> (layer name, role)``, where role is
    ``"latent"`` (a trainable layer's weight), ``"codes"`` or ``"scale"`` (a frozen layer's)."""
    keys = {}
    for name, module in model.named_modules():
        if not isinstance(module, QuantLayer):
            continue
        prefix = f"{name}." if name else ""
        if not module.is_frozen:
            keys[prefix + "weight"] = (name, "latent")
            continue
        keys[prefix + CODES_KEY] = (name, "codes")
        if module.weight_quantizer.scale is not None:
            keys[prefix + SCALE_KEY] = (name, "scale")
    return keys
