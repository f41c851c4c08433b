"""Compressed checkpoints on disk: :func:`save_pretrained` and :func:`load_pretrained`.

A checkpoint is a folder of three files:

* ``model.safetensors``: the state dict of the *frozen* model (see :func:`quantswap.freeze`). Every
  quantized layer's integer codes are bit-packed (:mod:`quantswap.packing`; the header's
  ``quantswap.packed`` metadata names each packed tensor's scheme and shape) and its scales are
  float32; every other floating tensor (first and last layer, BatchNorm, shortcuts) is stored in
  ``fp_dtype``. With ``keep_latent=True`` the latent float32 weights are stored too.
* ``config.json``: :class:`~quantswap.checkpoint_config.CheckpointConfig`: the versions, the base
  model as an allow-listed builder name with its arguments, the method configuration, the storage,
  the measured sizes and metrics, and a timm base's data config.
* ``README.md``: the model card (:mod:`quantswap.card`).

Loading never unpickles anything: weights come only from safetensors, and the base model only from
the torchvision or timm builder the config names (:class:`quantswap.models.BaseModelSpec`).

Example:
    >>> import tempfile, torch, quantswap
    >>> from torchvision.models import resnet18
    >>> bnn = quantswap.binarize(resnet18(num_classes=10), method="irnet").eval()
    >>> folder = tempfile.mkdtemp()
    >>> size = quantswap.save_pretrained(bnn, folder)
    >>> round(size.file_bytes / size.theoretical_bytes, 3) <= 1.02
    True
    >>> loaded = quantswap.from_pretrained(folder)
    >>> x = torch.randn(2, 3, 32, 32)
    >>> torch.equal(loaded(x), bnn(x))
    True
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from quantswap.api import get_swap_report, swap
from quantswap.checkpoint_config import (
    CONFIG_NAME,
    FORMAT_VERSION,
    CheckpointConfig,
    CheckpointError,
    CheckpointNotFoundError,
    CheckpointSize,
    StorageConfig,
)
from quantswap.frozen import freeze, is_frozen
from quantswap.models import BaseModelSpec, identify_base_model
from quantswap.nn.layers import CODES_KEY, SCALE_KEY, quantized_weight_keys
from quantswap.packing import PackingError, pack, unpack
from quantswap.summary import theoretical_size

__all__ = [
    "FORMAT_VERSION",
    "WEIGHTS_NAME",
    "CONFIG_NAME",
    "CARD_NAME",
    "CheckpointError",
    "CheckpointNotFoundError",
    "CheckpointSize",
    "save_pretrained",
    "load_pretrained",
    "read_config",
]

WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


# -- saving ---------------------------------------------------------------------------------------


def _packed_state(
    model: nn.Module, storage: StorageConfig
) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, Any]], nn.Module]:
    """The tensors to write (codes packed, real tensors in ``storage.fp_dtype``), the packing metadata
    and the frozen model they come from."""
    frozen = model if is_frozen(model) else freeze(model)
    tensors: dict[str, torch.Tensor] = {}
    packed: dict[str, dict[str, Any]] = {}
    roles = quantized_weight_keys(frozen)
    for key, tensor in frozen.state_dict().items():
        tensor = tensor.detach().cpu()
        role = roles.get(key, (None, None))[1]
        if role == "codes":
            codec = frozen.get_submodule(roles[key][0]).codec
            scheme = storage.scheme(codec.code_levels)
            tensors[key] = pack(tensor, scheme, rows=codec.branches)
            packed[key] = {"scheme": scheme, "shape": list(tensor.shape)}
        elif role == "scale" or not tensor.is_floating_point():
            tensors[key] = tensor.clone()
        else:
            tensors[key] = tensor.to(storage.dtype, copy=True)
    if storage.keep_latent:
        if model is frozen:
            raise ValueError("keep_latent=True needs the latent weights, which a frozen model no longer has; "
                             "save the swapped model before quantswap.freeze")
        for key, (name, _) in quantized_weight_keys(model).items():  # the latent weights
            tensors[key] = model.get_submodule(name).weight.detach().cpu().to(torch.float32, copy=True)
    return {k: v.contiguous() for k, v in tensors.items()}, packed, frozen


def _publish(staging: Path, target: Path) -> None:
    """Move a fully written staging folder into place: a new folder by one rename, an existing one
    file by file (each an atomic ``os.replace``; files of other tools in it are left alone)."""
    if not target.exists():
        os.replace(staging, target)
        return
    if not target.is_dir():
        raise CheckpointError(f"{target} exists and is not a folder; choose another save directory")
    for item in staging.iterdir():
        os.replace(item, target / item.name)
    staging.rmdir()


def _base_spec(model: nn.Module, base_model: str | None, base_model_args: dict[str, Any] | None) -> BaseModelSpec:
    if base_model is not None:
        return BaseModelSpec(base_model, dict(base_model_args or {}))
    base = get_swap_report(model).base
    if base is None:
        raise ValueError("the swap report does not record the float model; pass base_model='torchvision:NAME'")
    return identify_base_model(base)


def _measure(frozen: nn.Module, model: nn.Module, storage: StorageConfig, tensors: dict, path: Path) -> CheckpointSize:
    """The file's size next to the theoretical minimum at the storage's bit widths, and FP32."""
    theoretical, fp32 = theoretical_size(frozen, storage.fp_bits, storage.bits_per_code(3))
    if storage.keep_latent:
        latent = 4 * sum(tensors[key].numel() for key in quantized_weight_keys(model))
        theoretical, fp32 = theoretical + latent, fp32 + latent
    return CheckpointSize(path.stat().st_size, theoretical, fp32)


def _write_folder(target: Path, tensors: dict, packed: dict, config: CheckpointConfig, size_of) -> None:
    """Write the three files into a staging folder beside ``target``, then move it into place."""
    from quantswap.card import model_card

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    try:
        metadata = {"format": "pt", "quantswap.format_version": str(FORMAT_VERSION),
                    "quantswap.packed": json.dumps(packed, sort_keys=True)}
        save_file(tensors, staging / WEIGHTS_NAME, metadata=metadata)
        config.size = size_of(staging / WEIGHTS_NAME)
        config.write(staging)
        model_card(config, name=target.name).save(staging / CARD_NAME)
        _publish(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def save_pretrained(
    model: nn.Module,
    save_directory: str | os.PathLike,
    *,
    fp_dtype: str | torch.dtype = "float32",
    keep_latent: bool = False,
    ternary_packing: str = "bits2",
    base_model: str | None = None,
    base_model_args: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    pretrained_cfg: dict[str, Any] | None = None,
    license: str | None = None,
) -> CheckpointSize:
    """Save a swapped (or frozen) model as a compressed checkpoint folder; see the module docstring.

    Args:
        model: a model returned by ``quantswap.binarize``/``ternarize``/``swap``, or its ``freeze``.
        save_directory: the folder; created if missing. Files are written to a temporary folder
            beside it and moved in only when complete.
        fp_dtype, keep_latent, ternary_packing: how tensors are stored (:class:`StorageConfig`):
            real-valued tensors in ``"float32"`` (exact), ``"float16"`` or ``"bfloat16"`` (scales
            stay float32); the latent float32 weights too, so the loaded model can be fine-tuned;
            ternary codes as ``"bits2"`` (4 per byte) or ``"base3"`` (5 per byte).
        base_model, base_model_args: the builder (``"torchvision:resnet18"``, ``"timm:resnet18d"``)
            and arguments that rebuild the float model; found automatically for torchvision and timm.
        metrics: measured results for the model card and config, e.g. ``{"dataset": "fashion-mnist", "top1": 91.2}``.
        pretrained_cfg: the data config to record (mean, std, input size, ...); default: a timm base's own.
        license: the card's license; default: a timm base's, else ``"other"``.

    Returns:
        The :class:`CheckpointSize`: bytes on disk next to the theoretical minimum and FP32.
    """
    report = get_swap_report(model)
    storage = StorageConfig(fp_dtype, ternary_packing, keep_latent)
    spec = _base_spec(model, base_model, base_model_args)
    tensors, packed, frozen = _packed_state(model, storage)
    config = CheckpointConfig(
        spec, report.config, storage, leaf_modules=report.leaf_modules, metrics=dict(metrics or {}),
        layers={"quantized": len(report.quantized), "kept_real": len(report.kept_real)},
        pretrained_cfg=pretrained_cfg if pretrained_cfg is not None else getattr(model, "pretrained_cfg", None),
        license=license)
    _write_folder(Path(save_directory), tensors, packed, config,
                  lambda path: _measure(frozen, model, storage, tensors, path))
    return config.size


# -- loading --------------------------------------------------------------------------------------


def read_config(folder: str | os.PathLike) -> CheckpointConfig:
    """The validated ``config.json`` of a checkpoint folder (:meth:`CheckpointConfig.read`)."""
    return CheckpointConfig.read(folder)


def _weights_file(folder: Path) -> Path:
    path = folder / WEIGHTS_NAME
    if path.is_file():
        return path
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise CheckpointError(
            f"{folder} holds {', '.join(pickles)} but no {WEIGHTS_NAME}: quantswap loads weights only from "
            "safetensors and never unpickles a file. Load it yourself with torch.load(..., weights_only=True) "
            "from a source you trust, then quantswap.save_pretrained the model"
        )
    raise CheckpointNotFoundError(f"{path} is missing; save the model again with quantswap.save_pretrained")


def _read_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, Any]]]:
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except SafetensorError as err:
        with open(path, "rb") as raw:
            magic = raw.read(4)
        if magic.startswith(b"PK") or magic[:1] == b"\x80":
            raise CheckpointError(f"{path} is a pickle/zip file, not safetensors: quantswap never unpickles "
                                  "weights; re-save the model with quantswap.save_pretrained") from None
        raise CheckpointError(f"{path} is truncated or corrupt ({err}); download or save it again") from None
    if "quantswap.packed" not in metadata:
        raise CheckpointError(f"{path} is a safetensors file but not a quantswap checkpoint (no quantswap metadata)")
    try:
        packed = json.loads(metadata["quantswap.packed"])
    except json.JSONDecodeError:
        raise CheckpointError(f"{path} has damaged quantswap metadata; download or save it again") from None
    return tensors, packed


def _build(config: CheckpointConfig, latent: bool) -> nn.Module:
    spec = config.base_model
    try:
        base = spec.build()
    except (ValueError, TypeError, RuntimeError) as err:
        raise CheckpointError(f"{CONFIG_NAME} names base model {spec.name!r} with {spec.args}, which cannot be built "
                              f"here: {err}") from None
    model = swap(base, config.quantization, inplace=True, leaf_modules=config.leaf_modules)
    if config.data_config is not None:
        model.pretrained_cfg = config.data_config  # timm.data.resolve_data_config(model=...) reads it
    return model if latent else freeze(model, inplace=True)


def _state_to_load(path: Path, tensors: dict, packed: dict, expected: dict) -> dict[str, torch.Tensor]:
    """The file's tensors that the built model expects, unpacked and checked against its shapes."""
    state = {}
    for key, tensor in tensors.items():
        if key not in expected:
            continue  # a latent checkpoint's codes, or an unexpected key reported by the caller
        want = expected[key]
        if key in packed:
            shape = tuple(packed[key].get("shape", ()))
            if shape != tuple(want.shape):
                raise CheckpointError(f"{path}: tensor {key!r} holds codes of shape {list(shape)} but the model built "
                                      f"from {CONFIG_NAME} expects {list(want.shape)}; config and weights do not match")
            try:
                tensor = unpack(tensor, packed[key]["scheme"], shape)
            except PackingError as err:
                raise CheckpointError(f"{path}: tensor {key!r}: {err}") from None
        elif tuple(tensor.shape) != tuple(want.shape):
            raise CheckpointError(f"{path}: tensor {key!r} has shape {list(tensor.shape)} but the model built from "
                                  f"{CONFIG_NAME} expects {list(want.shape)}; config and weights do not match")
        state[key] = tensor.to(want.dtype) if tensor.is_floating_point() else tensor
    return state


def load_pretrained(folder: str | os.PathLike) -> nn.Module:
    """Rebuild, unpack and load a checkpoint folder; the model is returned in eval mode.

    Without latent weights it is the frozen inference form; with them (``keep_latent=True``) the
    trainable swapped model. ``model.meta["quantswap_checkpoint"]`` holds its :class:`CheckpointConfig`.
    Use :func:`quantswap.from_pretrained` for Hub ids as well.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointNotFoundError(f"no checkpoint folder at {folder}")
    config = read_config(folder)
    path = _weights_file(folder)
    tensors, packed = _read_tensors(path)
    layer_names = [key.removesuffix(CODES_KEY) for key in packed]  # "layer1.0.conv1." per packed layer
    frozen_only = {name + CODES_KEY for name in layer_names} | {name + SCALE_KEY for name in layer_names}
    latent = any(name + "weight" in tensors for name in layer_names)
    model = _build(config, latent)
    expected = model.state_dict()
    state = _state_to_load(path, tensors, packed, expected)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(tensors) - set(state) - (frozen_only if latent else set()))
    if missing or unexpected:
        raise CheckpointError(
            f"{path} does not match the model built from {CONFIG_NAME}: "
            + (f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}" if missing else "")
            + ("; " if missing and unexpected else "")
            + (f"unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}" if unexpected else "")
        )
    model.load_state_dict(state, strict=True)
    model.meta["quantswap_checkpoint"] = config
    return model.eval()
