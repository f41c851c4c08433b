"""``export_onnx``: a swapped model as an ONNX file whose quantized weights are 2-bit integers.

Built on PyTorch's ONNX exporter (``torch.onnx.export(dynamo=True)``): the model's export form
(:mod:`quantswap.export.dequantize`) is exported with a translation of ``quantswap::dequantize`` into
``DequantizeLinear``; then every code tensor it reads is stored as INT2 (ONNX 1.20, opset 25) and the
node rewritten as ``Mul(Cast(codes), scale)``, which onnxruntime folds into float weights at load, and,
when asked, the real layers' weights as float16 behind a ``Cast``. Binary
activations are ``Where(x >= 0, 1, -1)`` (not ``Sign``, which maps 0 to 0); the structure a method
adds (Bi-Real's shortcuts, Hardtanh, ...) is made of ordinary modules and exports as ordinary ops.
The batch axis is dynamic; the file is checked (``onnx.checker``, and onnxruntime against PyTorch)
before it replaces anything at ``path``.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from quantswap.export.dequantize import DequantizedWeight, dequantize, export_form
from quantswap.shapes import first_conv_channels, input_shape

__all__ = ["OPSET", "OnnxExport", "OnnxExportError", "export_onnx"]

#: The opset of the files: Cast reads INT2 from opset 25 on.
OPSET = 25
INPUT_NAME, OUTPUT_NAME = "pixel_values", "logits"
FP_DTYPES = ("float32", "float16")
#: onnxruntime against PyTorch on the check input, relative to the output's largest magnitude.
CHECK_RTOL = 1e-4
_EXTRA = "pip install 'quantswap[onnx]'"


class OnnxExportError(ValueError):
    """The exporter could not express the model; the message names the part and what to do."""


@dataclasses.dataclass(frozen=True)
class OnnxExport:
    """What :func:`export_onnx` wrote.

    Attributes:
        path: the ONNX file.
        input_size: ``(C, H, W)`` it was traced with (the batch is dynamic).
        file_bytes: its size.
        int2_tensors, int2_weights: code tensors stored as INT2, and the weights they hold.
        max_abs_diff: largest difference between onnxruntime's and PyTorch's outputs on the check
            input (``None`` when not checked).
    """

    path: Path
    input_size: tuple[int, int, int]
    file_bytes: int
    int2_tensors: int
    int2_weights: int
    max_abs_diff: float | None


def _require(*modules: str) -> None:
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise ImportError(f"ONNX export needs {', '.join(missing)}, which is not installed: {_EXTRA}")


def _input_size(model: nn.Module, input_size) -> tuple[int, int, int]:
    """``(C, H, W)`` from any form :func:`quantswap.shapes.input_shape` accepts (a batch is dropped: the
    exported batch is dynamic), or ``None``: the checkpoint's training size (else 224) and the first
    convolution's channels (else 3)."""
    if input_size is None:
        checkpoint = _checkpoint(model)
        input_size = (checkpoint.metrics.get("image_size") if checkpoint is not None else None) or 224
    return input_shape(input_size, channels=first_conv_channels(model), min_side=8)[1:]


def _checkpoint(model: nn.Module):
    """The :class:`~quantswap.checkpoint_config.CheckpointConfig` a loaded model carries, or ``None``."""
    meta = getattr(model, "meta", None)
    return meta.get("quantswap_checkpoint") if isinstance(meta, dict) else None


def _target(path: str | os.PathLike) -> Path:
    """The ONNX file to write, checked before any work: a ``*.onnx`` name in an existing folder."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder; name the file to write, e.g. {path / 'model.onnx'}")
    if path.suffix != ".onnx":
        raise ValueError(f"{path}: name the file *.onnx")
    if not path.parent.is_dir():
        raise ValueError(f"{path.parent} is not a folder; create it first")
    return path


def _preprocessing(model: nn.Module) -> dict[str, str]:
    """The ONNX file's metadata for feeding it: the model's data config (a checkpoint's, else a timm model's) as
    ``input_size``, ``mean``, ``std`` and ``interpolation`` (comma-separated numbers), when the model has one."""
    checkpoint = _checkpoint(model)
    config = (checkpoint.data_config if checkpoint is not None else None) or getattr(model, "pretrained_cfg", None) or {}
    return {key: ",".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)
            for key, value in config.items() if key in ("input_size", "mean", "std", "interpolation")}


def _translations() -> dict:
    from onnxscript import opset23 as op

    def dequantize_linear(codes, scale):  # rewritten by _codes_as_int2 (no exporter pass folds this node)
        return op.DequantizeLinear(codes, scale, axis=0)  # axis is ignored for a 0-d (per-layer) scale

    return {dequantize.default: dequantize_linear}


def _to_onnx(model: nn.Module, example: torch.Tensor):
    """The ONNX exporter's program for ``model``, with a dynamic batch axis."""
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the exporter's progress and deprecation chatter
            return torch.onnx.export(
                model, (example,), dynamo=True, opset_version=OPSET, input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME], dynamic_shapes=({0: torch.export.Dim("batch")},),
                custom_translation_table=_translations(), verbose=False,
            )
    except Exception as err:  # the exporter raises its own error types, with long reports
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise OnnxExportError(f"the ONNX exporter could not express this model: {first}\nif a quantized layer "
                              "is named, keep it real (swap again with exclude=[...]); if a module of the "
                              "base model is, it does not export with torch.onnx.export either") from err


def _code_casts(graph) -> list:
    """The ``Cast`` nodes that decode a quantized weight (they read an INT2 constant)."""
    import onnx_ir as ir

    return [node for node in graph if node.op_type == "Cast" and node.inputs[0].const_value is not None
            and node.inputs[0].dtype == ir.DataType.INT2]


def _as_cast_and_mul(graph, node, codes) -> None:
    """Replace ``DequantizeLinear(codes, scale, axis=0)`` by ``Cast(codes)`` (and a ``Mul`` by the scale, shaped
    to broadcast, unless it is 1): all constant, which onnxruntime folds into a float weight once, at the
    session's load (a ``DequantizeLinear`` it would run at every call, keeping it for quantized kernels)."""
    import onnx_ir as ir

    scale = node.inputs[1].const_value.numpy()
    cast = ir.node("Cast", [codes], attributes={"to": ir.DataType.FLOAT}, name=f"{codes.name}_decode")
    cast.outputs[0].name = f"{codes.name}_float"
    graph.insert_before(node, cast)
    decoded = cast.outputs[0]
    if not (scale.ndim == 0 and scale == 1):
        shaped = scale if scale.ndim == 0 else scale.reshape(-1, *(1,) * (len(codes.shape) - 1))
        value = ir.Value(name=f"{codes.name}_scale", const_value=ir.tensor(shaped, name=f"{codes.name}_scale"))
        graph.register_initializer(value)
        mul = ir.node("Mul", [decoded, value], name=f"{codes.name}_scaled")
        mul.outputs[0].name = f"{codes.name}_weight"
        graph.insert_before(node, mul)
        decoded = mul.outputs[0]
    node.outputs[0].replace_all_uses_with(decoded)
    old_scale = node.inputs[1]
    graph.remove(node, safe=True)
    if old_scale.is_initializer() and not old_scale.uses():  # shaped anew above, or 1: not written
        graph.initializers.pop(old_scale.name)


def _codes_as_int2(graph, terms: int) -> tuple[int, int]:
    """Store every int8 constant that ``DequantizeLinear`` reads as INT2 and decode it with ``Cast`` (see
    :func:`_as_cast_and_mul`); returns (tensors, weights). ``terms``: how many the model has (fewer means the
    exporter folded one into a float constant)."""
    import ml_dtypes
    import onnx_ir as ir

    tensors = weights = 0
    for node in [n for n in graph if n.op_type == "DequantizeLinear"]:
        codes = node.inputs[0]
        if codes.const_value is None or codes.dtype != ir.DataType.INT8:
            continue
        array = codes.const_value.numpy()
        if array.size and (array.min() < -2 or array.max() > 1):
            raise OnnxExportError(f"{codes.name}: codes outside the INT2 range [-2, 1]")
        codes.const_value = ir.Tensor(array.astype(ml_dtypes.int2), dtype=ir.DataType.INT2, name=codes.name)
        codes.dtype = ir.DataType.INT2
        _as_cast_and_mul(graph, node, codes)
        tensors, weights = tensors + 1, weights + array.size
    if tensors != terms:
        raise OnnxExportError(f"the exported graph reads {tensors} INT2 weight tensors where the model has {terms}; "
                              "the file would hold quantized weights as floats")
    return tensors, weights


def _real_weights_as_float16(graph) -> None:
    """Store the float32 constants of real layers as float16, each read through one ``Cast`` back to
    float32: those whose values float16 holds exactly (the model's tensors, rounded by
    :func:`_round_real_to_float16`), not the ones the exporter computed from them (a BatchNorm folded
    into the convolution before it) and not the quantized weights' scales."""
    import numpy as np
    import onnx_ir as ir

    scales = {id(value) for cast in _code_casts(graph) for user, _ in cast.outputs[0].uses() if user.op_type == "Mul"
              for value in user.inputs}
    for value in list(graph.initializers.values()):
        if value.dtype != ir.DataType.FLOAT or id(value) in scales or value.const_value.size < 16:
            continue
        array = value.const_value.numpy()
        if not np.array_equal(array.astype(np.float16).astype(np.float32), array):
            continue
        uses = list(value.uses())
        half = ir.Tensor(array.astype(np.float16), name=value.name)
        value.const_value, value.dtype = half, ir.DataType.FLOAT16
        cast = ir.node("Cast", [value], attributes={"to": ir.DataType.FLOAT}, name=f"{value.name}_to_float32")
        cast.outputs[0].name = f"{value.name}_float32"
        graph.append(cast)
        for user, index in uses:
            user.replace_input_with(index, cast.outputs[0])
    graph.sort()


@torch.no_grad()
def _round_real_to_float16(model: nn.Module) -> None:
    """Round the real layers' float tensors to float16 values, as the file will hold them, so that
    the check compares like with like; refuse a value float16 cannot hold."""
    quantized = {id(t) for m in model.modules() if isinstance(m, DequantizedWeight) for t in m.buffers()}
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if not tensor.is_floating_point() or id(tensor) in quantized:
            continue
        if tensor.abs().max() > torch.finfo(torch.float16).max:
            raise ValueError(f"{name} holds values beyond float16's range (±65504): export with fp_dtype='float32'")
        tensor.copy_(tensor.half().float())


def _check(path: Path, model: nn.Module, example: torch.Tensor) -> float:
    """``onnx.checker`` on the file, then onnxruntime against ``model``: the largest difference."""
    import onnx
    import onnxruntime

    onnx.checker.check_model(str(path), full_check=True)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run([OUTPUT_NAME], {INPUT_NAME: example.numpy()})[0])
    with torch.no_grad():
        want = model(example)
    if got.shape != want.shape:
        raise OnnxExportError(f"onnxruntime gives an output of shape {tuple(got.shape)}, PyTorch {tuple(want.shape)}")
    diff = (got - want).abs().max().item()
    if not diff <= CHECK_RTOL * max(want.abs().max().item(), 1.0):
        warnings.warn(f"onnxruntime's output differs from PyTorch's by up to {diff:.3g} on a random input; with binary "
                      "activations a value within rounding of 0 can take another sign in another runtime: compare the two "
                      "on real data", UserWarning, stacklevel=3)
    return diff


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    input_size: int | tuple[int, ...] | None = None,
    fp_dtype: str = "float32",
    check: bool = True,
) -> OnnxExport:
    """Write ``model`` (swapped, frozen or loaded) as an ONNX file with 2-bit quantized weights.

    Every quantized layer's weight is INT2 codes (binary ``{-1, +1}``, ternary ``{-1, 0, +1}``, one
    tensor per residual-expansion branch) with float32 scales (per output channel or per layer),
    decoded by ``Mul(Cast(codes), scale)`` (opset 25, onnxruntime 1.23 and later), which onnxruntime folds
    into float weights when the session loads (decoding costs nothing per call). The input is
    ``pixel_values`` ``[batch, C, H, W]`` (batch dynamic), the output ``logits``.

    Args:
        model: a model from :func:`quantswap.binarize` / :func:`quantswap.ternarize`,
            :func:`quantswap.freeze` or :func:`quantswap.from_pretrained` (not changed).
        path: the ``.onnx`` file; replaced only once the new file is complete and checked.
        input_size: one size, ``(H, W)``, ``(C, H, W)`` or ``(N, C, H, W)``; default: the checkpoint's training size
            (224 when unknown) and the first convolution's channels.
        fp_dtype: ``"float16"`` stores the real layers' weights in half precision (computed in float32).
        check: run ``onnx.checker`` and compare onnxruntime with PyTorch on a random input (a
            warning when they differ by more than 1e-4 of the output's magnitude).

    Raises:
        ImportError: the ``onnx`` extra is missing (``pip install 'quantswap[onnx]'``).
        ValueError: bad arguments, or a quantized layer whose weight ONNX cannot hold (named, with
            the ``exclude=`` that keeps it real).
        OnnxExportError: the exporter could not express a part of the model.
    """
    _require("onnx", "onnxscript", "onnx_ir", "ml_dtypes", *(("onnxruntime",) if check else ()))
    import onnx_ir as ir

    path = _target(path)
    if fp_dtype not in FP_DTYPES:
        raise ValueError(f"fp_dtype must be one of {FP_DTYPES}, got {fp_dtype!r}")
    size = _input_size(model, input_size)
    exportable = export_form(model)
    if fp_dtype == "float16":
        _round_real_to_float16(exportable)
    example = torch.randn(2, *size, generator=torch.Generator().manual_seed(0))  # batch 2: 1 would be specialized
    program = _to_onnx(exportable, example)
    terms = sum(m.terms for m in exportable.modules() if isinstance(m, DequantizedWeight))
    tensors, weights = _codes_as_int2(program.model.graph, terms)
    if fp_dtype == "float16":
        _real_weights_as_float16(program.model.graph)
    program.model.metadata_props.update(_preprocessing(model))
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as tmp:
        staged = Path(tmp) / path.name
        ir.save(program.model, staged)
        diff = _check(staged, exportable, example) if check else None
        os.chmod(staged, 0o644)
        os.replace(staged, path)
    return OnnxExport(path, size, path.stat().st_size, tensors, weights, diff)
