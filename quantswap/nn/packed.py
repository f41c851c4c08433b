"""Packed W1/A1 layers: frozen binary layers that run the XOR-popcount ops of :mod:`quantswap.kernels`.

:func:`quantswap.freeze` turns every frozen layer whose weights *and* inputs are binary into a
:class:`PackedConv2d` or :class:`PackedLinear` (the same object, its class switched): its weight
stays in memory as bits (``int64`` words, 1 bit per weight, see :mod:`quantswap.kernels.layout`)
plus one float32 scale per output channel, and its forward is one call of
``quantswap::bconv2d`` / ``quantswap::blinear``, which binarize the input themselves (an input
quantizer that is not a plain sign says what it takes the sign of with ``sign_input(x)``). Its state
dict is the frozen layer's (``weight_quantizer.codes`` as ``int8``, unpacked on demand, and
``weight_quantizer.scale``), so a packed model saves, loads and compares like a frozen one.

``layer.weight`` of a packed layer is decoded on each access (a float tensor, not stored): read it
to inspect a layer, not in a loop.

Example:
    >>> import torch, quantswap
    >>> from torchvision.models import resnet18
    >>> bnn = quantswap.binarize(resnet18(num_classes=10), method="xnor").eval()
    >>> packed = quantswap.freeze(bnn)
    >>> type(packed.layer1[0].conv1).__name__, packed.layer1[0].conv1.weight_quantizer.words.dtype
    ('PackedConv2d', torch.int64)
    >>> h = torch.randn(2, 64, 8, 8)
    >>> torch.allclose(packed.layer1[0].conv1(h), bnn.layer1[0].conv1(h), atol=1e-5)
    True
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import torch
from torch import nn

from quantswap.kernels import affine, layout
from quantswap.nn.layers import QuantConv2d, QuantLinear
from quantswap.nn.quantizers import FrozenWeight, WeightQuantizer, codes_problem

__all__ = ["PackedWeight", "PackedConv2d", "PackedLinear", "is_packed", "pack_layer", "unpack_layer", "packing_obstacle",
           "packs"]


class PackedWeight(FrozenWeight):
    """A :class:`FrozenWeight` that keeps its binary codes as kernel words (1 bit each).

    ``words`` (the kernel's layout) and ``alpha`` (the per-output-channel scale as float32) are
    derived state; ``codes`` and ``scale`` are what the state dict holds, as in a frozen layer.
    """

    def __init__(self, codec: WeightQuantizer, codes: torch.Tensor, scale: torch.Tensor | None, groups: int):
        nn.Module.__init__(self)
        self.codec, self.groups, self.code_shape = codec, groups, tuple(codes.shape)
        self.register_buffer("scale", scale)
        self.register_buffer("words", layout.pack_weight(codes, groups), persistent=False)
        self._set_transform(codes, scale)
        self.register_state_dict_post_hook(_codes_into_state_dict)
        self.register_load_state_dict_pre_hook(_codes_from_state_dict)

    def _set_transform(self, codes: torch.Tensor, scale: torch.Tensor | None) -> None:
        """``alpha`` and ``offset``: the weight's ``α`` and ``β`` per output channel as float32 (``offset`` is
        ``None`` for a weight centred on 0)."""
        (_, alpha), = self.codec.dequantize_terms(codes, scale)
        offset = self.codec.dequantize_offset(codes, scale)
        channels = codes.shape[0]
        self.register_buffer("alpha", alpha.float().expand(channels).contiguous(), persistent=False)
        self.register_buffer("offset", None if offset is None else offset.float().expand(channels).contiguous(),
                             persistent=False)

    @property
    def codes(self) -> torch.Tensor:
        """The ``int8`` codes, unpacked from the words (8 x the memory: for saving, not for running)."""
        return layout.unpack_weight(self.words, self.code_shape[0], self.code_shape[1]).view(self.code_shape)

    def extra_repr(self) -> str:
        return f"codes={list(self.code_shape)}, groups={self.groups}, {self.words.numel() * 8} bytes"


def _codes_into_state_dict(module: PackedWeight, state_dict: dict, prefix: str, local_metadata) -> None:
    scale = state_dict.pop(prefix + "scale", None)  # keep a frozen layer's order: codes, then scale
    state_dict[prefix + "codes"] = module.codes
    if scale is not None:
        state_dict[prefix + "scale"] = scale


def _codes_from_state_dict(module: PackedWeight, state_dict: dict, prefix: str, local_metadata, strict,
                           missing_keys, unexpected_keys, error_msgs) -> None:
    codes = state_dict.pop(prefix + "codes", None)
    if codes is None:
        missing_keys.append(prefix + "codes")
        return
    if tuple(codes.shape) != module.code_shape:
        error_msgs.append(f"size mismatch for {prefix}codes: copying codes of shape {tuple(codes.shape)}, the packed "
                          f"layer holds {module.code_shape}")
        return
    problem = codes_problem(codes, module.codec)
    if problem:
        error_msgs.append(f"{prefix}codes: {problem}")
        return
    codes = codes.to(torch.int8)
    scale = state_dict.get(prefix + "scale", module.scale)
    device = module.words.device
    module.words = layout.pack_weight(codes, module.groups).to(device)
    module._set_transform(codes, scale)
    module.to(device)


def _sign_input(layer: QuantConv2d | QuantLinear, x: torch.Tensor) -> torch.Tensor:
    """What the layer's input quantizer takes the sign of, as float32: ``x`` for a plain sign, else the
    quantizer's ``sign_input(x)`` (ReActNet's ``x + b``); the packed op binarizes it."""
    quantizer = layer.input_quantizer
    return (x if getattr(quantizer, "plain_sign", False) else quantizer.sign_input(x)).float()


def _float32(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.float().contiguous()


class OutputTransform(NamedTuple):
    """What the packed op makes of the integer sums: ``alpha · D + bias`` per output channel, plus, where the
    input's or the weight's binary set is not ±1 (AdaBin), the ``offset`` terms of
    :mod:`quantswap.kernels.affine` (float32 ``[3, C_out]``)."""

    alpha: torch.Tensor
    bias: torch.Tensor | None
    offset: torch.Tensor | None


def _output_transform(layer: QuantConv2d | QuantLinear) -> OutputTransform:
    """The layer's own transform: its weight's ``α``, ``β`` and its input's binary set, as float32."""
    w, binary_set = layer.weight_quantizer, getattr(layer.input_quantizer, "binary_set", None)
    a, b = binary_set() if binary_set is not None else (None, None)
    alpha, offset = affine.coefficients(_float32(w.alpha), _float32(w.offset), a, b)  # float32 in a .half() model too
    return OutputTransform(alpha, _float32(layer.bias), _float32(offset))


class _NoBackward(torch.autograd.Function):
    """Passes a packed layer's output on; a backward through it raises (the packed ops have none, and the
    gradient would otherwise stop there without a word)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # A copy, not a view: a view of y would make the next in-place op (ReLU(inplace=True)) an error.
        # Only reached when the input asks for gradients, so frozen inference never pays for it.
        return y.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        raise RuntimeError("a packed layer runs bits and has no backward, so no gradient can reach its input: for "
                           "gradients, freeze with backend='float' (or from_pretrained(..., backend='float')); to "
                           "train, fine-tune the swapped model")


def _guard(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return _NoBackward.apply(x, y) if x.requires_grad and torch.is_grad_enabled() else y


class _Inference:
    """What the packed layers share: ``.train()`` warns, since a packed model is for inference (the
    BatchNorms folded into its convolutions keep their running statistics, the others would not); the output
    transform is computed once and reused while the tensors it is made of are unchanged."""

    def output_transform(self) -> OutputTransform:
        """The op's ``alpha``, ``bias`` and ``offset`` (see :func:`_output_transform`; a convolution's with a
        folded BatchNorm in it), reused while each tensor it is made of is the same tensor at the same version."""
        sources = [t for t in self._transform_sources() if t is not None]
        cached = self.__dict__.get("_transform_cache")
        tracing = torch.compiler.is_compiling() or torch.compiler.is_exporting()
        if not tracing and cached is not None and len(cached[0]) == len(sources) and all(
                t is s and version == s._version for (t, version), s in zip(cached[0], sources, strict=True)):
            return cached[1]
        with torch.no_grad():
            transform = self._compute_transform()
        if not tracing:
            self.__dict__["_transform_cache"] = ([(t, t._version) for t in sources], transform)
        return transform

    def _transform_sources(self) -> list[torch.Tensor | None]:
        """The tensors the transform is made of (read from the module dicts: this runs at every call)."""
        weight, q = self._modules["weight_quantizer"]._buffers, self._modules.get("input_quantizer")
        return [weight["alpha"], weight["offset"], self._parameters.get("bias"), self._buffers.get("folded_gain"),
                self._buffers.get("folded_bias"), *(q._parameters.values() if q is not None else ())]

    def _compute_transform(self) -> OutputTransform:
        return _output_transform(self)

    def train(self, mode: bool = True):
        if mode and not getattr(self, "_warned_train", False):
            warnings.warn("a packed (frozen) model is for inference: in training mode its folded BatchNorms keep "
                          "their running statistics while the others use the batch's, and nothing can be trained; "
                          "to train, fine-tune the swapped model (or load with keep_latent checkpoints)",
                          stacklevel=2)
            object.__setattr__(self, "_warned_train", True)
        return super().train(mode)


class PackedConv2d(_Inference, QuantConv2d):
    """A frozen W1/A1 :class:`QuantConv2d` running ``quantswap::bconv2d`` (see the module docstring)."""

    @property
    def weight(self) -> torch.Tensor:  # decoded on access; the layer keeps only the bits
        return self.weight_quantizer.decode()

    def quantized_weight(self) -> torch.Tensor:
        return self.weight

    def _compute_transform(self) -> OutputTransform:
        """With a following BatchNorm folded in when :func:`quantswap.nn.bn_folding.fold_batchnorms` folded one:
        every coefficient times its ``gamma / sqrt(var + eps)``, its shift as the bias."""
        transform = _output_transform(self)
        gain = getattr(self, "folded_gain", None)
        if gain is None:
            return transform
        gain = gain.float()
        offset = None if transform.offset is None else transform.offset * gain
        return OutputTransform(transform.alpha * gain, _float32(self.folded_bias), offset)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alpha, bias, offset = self.output_transform()
        y = torch.ops.quantswap.bconv2d(_sign_input(self, x), self.weight_quantizer.words, alpha, bias, self.in_channels,
                                        list(self.stride), list(self.padding), list(self.dilation), offset)
        return _guard(x, y.to(x.dtype))


class PackedLinear(_Inference, QuantLinear):
    """A frozen W1/A1 :class:`QuantLinear` running ``quantswap::blinear`` (see the module docstring)."""

    @property
    def weight(self) -> torch.Tensor:
        return self.weight_quantizer.decode()

    def quantized_weight(self) -> torch.Tensor:
        return self.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alpha, bias, offset = self.output_transform()
        y = torch.ops.quantswap.blinear(_sign_input(self, x).reshape(-1, self.in_features),
                                        self.weight_quantizer.words, alpha, bias, offset)
        return _guard(x, y.to(x.dtype).reshape(*x.shape[:-1], self.out_features))


_PACKED = {QuantConv2d: PackedConv2d, QuantLinear: PackedLinear}


def is_packed(layer: nn.Module) -> bool:
    return isinstance(layer, (PackedConv2d, PackedLinear))


def packs(config) -> bool:
    """Whether :func:`quantswap.freeze` runs the layers ``config`` swaps on the packed kernels (asked of
    a 3x3 convolution made with it).

    Example:
        >>> import quantswap
        >>> from quantswap.nn.packed import packs
        >>> [m for m in ("xnor", "adabin", "mcdonnell") if packs(quantswap.config_for(m))]
        ['xnor', 'adabin']
    """
    conv = nn.Conv2d(64, 64, 3, padding=1)
    layer = QuantConv2d.from_float(conv, config.layer_weight_quantizer(conv), config.input_quantizer(conv))
    return isinstance(layer.weight_quantizer, WeightQuantizer) and packing_obstacle(layer) is None


def packing_obstacle(layer: nn.Module) -> str | None:
    """Why ``layer`` cannot run packed (``None`` if it can): it needs binary weights, a plain ``sign``
    on its input and, for a convolution, zero padding given as numbers."""
    if is_packed(layer):
        return None
    if type(layer) not in _PACKED:
        return f"{type(layer).__name__} is not a quantswap QuantConv2d/QuantLinear"
    codec = layer.codec
    if codec.code_levels != 2 or codec.branches != 1:
        return f"its weights are not binary ({codec.code_levels}-level codes, {codec.branches} branches)"
    if layer.input_quantizer is None:
        return "its activations are real (W1/A32)"
    if not (getattr(layer.input_quantizer, "plain_sign", False) or hasattr(layer.input_quantizer, "sign_input")):
        return (f"its input quantizer {type(layer.input_quantizer).__name__} is neither a plain sign nor the sign "
                f"of a sign_input(x)")
    if isinstance(layer, nn.Conv2d) and (isinstance(layer.padding, str) or layer.padding_mode != "zeros"):
        return f"padding={layer.padding!r} with padding_mode={layer.padding_mode!r} (the kernel pads with zeros)"
    return None


@torch.no_grad()
def pack_layer(layer: QuantConv2d | QuantLinear) -> None:
    """Turn a frozen layer into its packed form in place; ``ValueError`` naming why it cannot be."""
    if is_packed(layer):
        return
    reason = packing_obstacle(layer)
    if reason is not None:
        raise ValueError(f"cannot pack this layer: {reason}")
    if not layer.is_frozen:
        raise ValueError("pack_layer takes a frozen layer; freeze it first (quantswap.freeze)")
    frozen = layer.weight_quantizer
    groups = getattr(layer, "groups", 1)
    packed = PackedWeight(frozen.codec, frozen.codes, frozen.scale, groups).to(frozen.codes.device)
    del layer.weight  # the decoded float weight: the bits replace it
    layer.weight_quantizer = packed
    layer.__class__ = _PACKED[type(layer)]


@torch.no_grad()
def unpack_layer(layer: PackedConv2d | PackedLinear) -> None:
    """Turn a packed layer back into a frozen layer with a decoded float32 weight, in place."""
    packed = layer.weight_quantizer
    weight = packed.decode(torch.float32)
    layer.__class__ = next(base for base, cls in _PACKED.items() if cls is type(layer))
    layer.weight_quantizer = FrozenWeight(packed.codec, packed.codes, packed.scale)
    layer.register_buffer("weight", weight, persistent=False)
