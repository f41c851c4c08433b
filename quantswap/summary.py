"""A bit-aware summary of a model: per layer its bits, parameters, binary and float operations;
totals of parameters by bit width, theoretical size, compression and OPs (docs/methods.md#counting-bits-and-operations)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from torch import nn

from quantswap.fx.analysis import WEIGHT_LAYER_TYPES
from quantswap.nn.layers import QuantLayer, quantized_weight_keys
from quantswap.nn.quantizers import RealWeight
from quantswap.shapes import first_conv_channels, input_shape

__all__ = ["LayerSummary", "ModelSummary", "summary", "layer_bits", "theoretical_size"]


@dataclasses.dataclass
class LayerSummary:
    name: str
    kind: str
    weight_bits: int
    activation_bits: int
    params: int
    bops: int  # binary multiply-accumulates: binary weights times binary activations
    flops: int  # real-valued multiply-accumulates (as the papers count "FLOPs")


@dataclasses.dataclass
class ModelSummary:
    """The result of :func:`summary`; ``str()`` renders it as a table.

    Sizes count every parameter and floating buffer (BatchNorm statistics) a checkpoint must hold:
    quantized weights at their bit width plus one 32-bit scale per scale value, everything else at
    ``fp_bits``.
    """

    layers: list[LayerSummary]
    params_by_bits: dict[int, int]  # bit width -> number of parameters stored at that width
    buffers: int  # floating buffer elements (BatchNorm running statistics)
    scales: int  # 32-bit scale values of the quantized layers
    size_bytes: float  # theoretical size
    fp32_size_bytes: float  # the same model with every tensor in float32
    bops: int
    flops: int
    fp_flops: int  # MACs of the same model run entirely in floating point
    #: how a Bi-Real-layout swap treated the model's residual blocks (``None``: not such a swap)
    structure: str | None = None

    @property
    def params(self) -> int:
        return sum(self.params_by_bits.values())

    @property
    def compression(self) -> float:
        return self.fp32_size_bytes / self.size_bytes

    @property
    def ops(self) -> float:
        """``BOPs / 64 + FLOPs``: 64 binary operations per 64-bit instruction."""
        return self.bops / 64 + self.flops

    def __str__(self) -> str:
        head = ("layer", "kind", "W", "A", "params", "BOPs", "FLOPs")
        rows = [(s.name, s.kind, str(s.weight_bits), str(s.activation_bits), f"{s.params:,}", f"{s.bops:,}",
                 f"{s.flops:,}") for s in self.layers]
        widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
        fmt = "  ".join(f"{{:{'<' if i < 2 else '>'}{w}}}" for i, w in enumerate(widths))
        lines = [fmt.format(*head), fmt.format(*("-" * w for w in widths))]
        lines += [fmt.format(*r) for r in rows]
        by_bits = ", ".join(f"{n:,} at {b} bit" for b, n in sorted(self.params_by_bits.items()))
        lines += [
            "",
            f"parameters: {self.params:,} ({by_bits}); buffers: {self.buffers:,}; scales: {self.scales:,}",
            f"theoretical size: {self.size_bytes / 1e6:.3f} MB (FP32 {self.fp32_size_bytes / 1e6:.3f} MB, "
            f"{self.compression:.2f}x smaller)",
            f"BOPs {self.bops:.3e}, FLOPs {self.flops:.3e}, OPs = BOPs/64 + FLOPs = {self.ops:.3e} "
            f"(FP {self.fp_flops:.3e}, {self.fp_flops / max(self.ops, 1):.2f}x fewer)",
        ]
        if self.structure:
            lines.append(f"structure: {self.structure}")
        return "\n".join(lines)


def layer_bits(module: nn.Module) -> tuple[int, int, int]:
    """``(weight bits, activation bits, number of 32-bit scale values)`` of a layer."""
    if not isinstance(module, QuantLayer):
        return 32, 32, 0
    codec = module.codec
    act_bits = 1 if module.input_quantizer is not None else 32
    if isinstance(codec, RealWeight):  # W32/A1
        return 32, act_bits, 0
    if codec.code_levels == 3:
        return 2 * codec.branches, act_bits, codec.branches
    granularity = getattr(codec, "scale_granularity", "channel")
    scales = {"channel": module.weight.shape[0], "tensor": 1, "constant": 0}[granularity]
    return 1, act_bits, scales * codec.scales_per_channel


def theoretical_size(model: nn.Module, fp_bits: int = 32, ternary_bits: float = 2.0) -> tuple[float, float]:
    """``(bytes, fp32 bytes)`` a checkpoint of ``model`` needs at the least, counted over its state dict.

    Quantized weights count at their bit width (a ternary code at ``ternary_bits``: 2, or 1.6 packed
    in base 3) plus one 32-bit value per scale; every other floating tensor at ``fp_bits``; integer
    buffers (BatchNorm's step counters) not at all. Works on swapped and frozen models alike.
    """
    roles = quantized_weight_keys(model)
    modules = dict(model.named_modules())
    bits = fp32_bits = 0.0
    for key, tensor in model.state_dict().items():
        if key not in roles:
            if tensor.is_floating_point():
                bits += fp_bits * tensor.numel()
                fp32_bits += 32 * tensor.numel()
            continue
        name, role = roles[key]
        if role == "scale":
            continue  # counted with the layer's codes
        layer = modules[name]
        w_bits, _, n_scales = layer_bits(layer)
        numel = layer.weight.numel()
        per_weight = ternary_bits * layer.codec.branches if getattr(layer.codec, "code_levels", 2) == 3 else w_bits
        bits += per_weight * numel + 32 * n_scales
        fp32_bits += 32 * numel
    return bits / 8, fp32_bits / 8


def _checked_input(model: nn.Module, input_size, fp_bits: int) -> tuple[int, int, int, int]:
    """The input shape ``(N, C, H, W)``, after checking it and ``fp_bits``."""
    if fp_bits not in (16, 32):
        raise ValueError(f"fp_bits is the width real tensors are stored at: 16 or 32, got {fp_bits}")
    return input_shape(input_size, channels=first_conv_channels(model))


def _macs(module: nn.Module, output: torch.Tensor) -> int:
    if isinstance(module, nn.Linear):
        return output.numel() * module.in_features
    return output.numel() * (module.in_channels // module.groups) * int(torch.tensor(module.kernel_size).prod())


@torch.no_grad()
def summary(model: nn.Module, input_size: int | Sequence[int] = (1, 3, 224, 224), fp_bits: int = 32) -> ModelSummary:
    """Summarize ``model`` (swapped or not) for one forward pass on an input of ``input_size`` (an image size,
    ``(H, W)``, ``(C, H, W)`` or ``(N, C, H, W)``); operations are multiply-accumulates, batch included.

    Example:
        >>> import quantswap
        >>> from torchvision.models import resnet18
        >>> s = quantswap.summary(quantswap.binarize(resnet18(), method="irnet"), input_size=(1, 3, 224, 224))
        >>> s.params_by_bits[1], round(s.compression, 1)
        (10985472, 11.0)
        >>> print(str(s).splitlines()[0].split())
        ['layer', 'kind', 'W', 'A', 'params', 'BOPs', 'FLOPs']
    """
    input_size = _checked_input(model, input_size, fp_bits)
    macs: dict[str, int] = {}
    names = {m: n for n, m in model.named_modules()}
    hooks = [
        m.register_forward_hook(lambda mod, _, out: macs.__setitem__(names[mod], macs.get(names[mod], 0) + _macs(mod, out)))
        for m in names if isinstance(m, WEIGHT_LAYER_TYPES)
    ]
    was_training = model.training
    param = next(model.parameters(), None)
    try:
        model.eval()
        model(torch.zeros(*input_size, device=param.device if param is not None else None,
                          dtype=param.dtype if param is not None else None))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()

    layers, params_by_bits = [], {}
    scales = bops = flops = fp_flops = 0
    for name, module in model.named_modules():
        if not isinstance(module, WEIGHT_LAYER_TYPES):
            continue
        w_bits, a_bits, n_scales = layer_bits(module)
        n_macs = macs.get(name, 0)
        fp_flops += n_macs
        binary_macs = n_macs if (w_bits == 1 and a_bits == 1) else 0
        bops += binary_macs
        flops += n_macs - binary_macs
        n_params = module.weight.numel() + (module.bias.numel() if getattr(module, "bias", None) is not None else 0)
        layers.append(LayerSummary(name, type(module).__name__, w_bits, a_bits, n_params, binary_macs,
                                   n_macs - binary_macs))
        if isinstance(module, QuantLayer):
            params_by_bits[w_bits] = params_by_bits.get(w_bits, 0) + module.weight.numel()
            scales += n_scales
    quantized = [m for m in model.modules() if isinstance(m, QuantLayer)]
    quantized_ids = {id(m.weight) for m in quantized}
    real_params = sum(p.numel() for p in model.parameters() if id(p) not in quantized_ids)
    if real_params:
        params_by_bits[fp_bits] = params_by_bits.get(fp_bits, 0) + real_params
    persistent, roles = model.state_dict(), quantized_weight_keys(model)
    buffers = sum(b.numel() for name, b in model.named_buffers()
                  if b.is_floating_point() and name in persistent and name not in roles)
    size_bytes, fp32_bytes = theoretical_size(model, fp_bits)
    return ModelSummary(layers, params_by_bits, buffers, scales, size_bytes, fp32_bytes, bops, flops, fp_flops,
                        _structure(model))


def _structure(model: nn.Module) -> str | None:
    """What a swap with per-conv shortcuts built of the model's residual blocks, from its swap report."""
    meta = getattr(model, "meta", None)
    report = meta.get("quantswap") if isinstance(meta, dict) else None
    config = getattr(report, "config", None)
    if not hasattr(config, "block_residual") or not report.shortcuts:
        return None
    if config.block_residual:
        return "block residuals kept (block_residual=True) on top of the per-conv shortcuts"
    if report.blocks_rewired:
        return (f"the authors' structure: {len(report.blocks_rewired)} block residuals removed, each binary conv's "
                "shortcut the only one")
    return "per-conv shortcuts; no block has a shortcut around its every binary conv, so the model's residuals stay"
