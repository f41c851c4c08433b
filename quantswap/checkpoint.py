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
from safetensors.torch import save_file
from torch import nn

from quantswap.api import SwapReport, get_swap_report, swap
from quantswap.checkpoint_config import (
    CONFIG_NAME,
    FORMAT_VERSION,
    CheckpointConfig,
    CheckpointError,
    CheckpointNotFoundError,
    CheckpointSize,
    StorageConfig,
)
from quantswap.checkpoint_file import check_layout, read_header, read_tensors, sha256, state_to_load
from quantswap.frozen import BACKENDS, freeze, is_frozen
from quantswap.models import BaseModelSpec, fingerprint, identify_base_model
from quantswap.nn.bn_folding import refold_batchnorms
from quantswap.nn.layers import CODES_KEY, SCALE_KEY, quantized_weight_keys
from quantswap.packing import pack
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
    "verify",
]

WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


# -- saving ---------------------------------------------------------------------------------------


def _cast(key: str, tensor: torch.Tensor, storage: StorageConfig) -> torch.Tensor:
    """``tensor`` in the storage dtype; refused where a finite value would become infinite."""
    cast = tensor.to(storage.dtype, copy=True)
    if storage.dtype != tensor.dtype and not bool(torch.isfinite(cast).all()) and bool(torch.isfinite(tensor).all()):
        peak = tensor.abs().max().item()
        raise CheckpointError(f"tensor {key!r} holds values up to {peak:.4g}, beyond {storage.fp_dtype}'s range: "
                              "they would be saved as inf. Save with fp_dtype='bfloat16' (float32's range) or 'float32'")
    return cast


def _packed_state(
    model: nn.Module, storage: StorageConfig
) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, Any]], nn.Module]:
    """The tensors to write (codes packed, real tensors in ``storage.fp_dtype``), the packing metadata
    and the frozen model they come from."""
    frozen = model if is_frozen(model) or _swap_report(model) is None else freeze(model, backend="float")
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
            tensors[key] = _cast(key, tensor, storage)
    if storage.keep_latent:
        if model is frozen:
            if _swap_report(model) is None:
                raise ValueError("keep_latent=True keeps a swapped model's latent weights; a float model has none "
                                 "(its weights are saved as they are)")
            raise ValueError("keep_latent=True needs the latent weights, which a frozen model no longer has; "
                             "save the swapped model before quantswap.freeze")
        for key, (name, _) in quantized_weight_keys(model).items():  # the latent weights
            tensors[key] = model.get_submodule(name).weight.detach().cpu().to(torch.float32, copy=True)
    return {k: v.contiguous() for k, v in tensors.items()}, packed, frozen


#: The order files replace an existing checkpoint's: the config last, since it binds the weights (its
#: ``weights_sha256``), so an interrupted overwrite is refused on load rather than mixed silently.
_PUBLISH_ORDER = (WEIGHTS_NAME, CARD_NAME, CONFIG_NAME)


def _publish(staging: Path, target: Path) -> None:
    """Move a fully written staging folder into place: a new folder by one rename, an existing one
    file by file (each an atomic ``os.replace``; files of other tools in it are left alone)."""
    if not target.exists():
        os.replace(staging, target)
        return
    if not target.is_dir():
        raise CheckpointError(f"{target} exists and is not a folder; choose another save directory")
    blocked = [name for name in _PUBLISH_ORDER if (target / name).exists() and not (target / name).is_file()]
    if blocked:  # checked before anything is replaced
        raise CheckpointError(f"{target / blocked[0]} is not a file, so the checkpoint cannot replace it; remove it "
                              "or choose another save directory")
    for name in _PUBLISH_ORDER:
        os.replace(staging / name, target / name)
    staging.rmdir()


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _swap_report(model: nn.Module) -> SwapReport | None:
    """The model's swap report; ``None`` for a float model (saved as it is, unquantized)."""
    try:
        return get_swap_report(model)
    except ValueError:
        return None


def _base_spec(model: nn.Module, base_model: str | None, base_model_args: dict[str, Any] | None) -> BaseModelSpec:
    if base_model is not None:
        return BaseModelSpec(base_model, dict(base_model_args or {}))
    report = _swap_report(model)
    base = fingerprint(model) if report is None else report.base
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
        config.weights_sha256 = sha256(staging / WEIGHTS_NAME)
        config.write(staging)
        model_card(config, name=target.name).save(staging / CARD_NAME)
        mask = _umask()  # mkdtemp makes a private folder; the checkpoint gets the permissions of any new file
        staging.chmod(0o777 & ~mask)
        for name in _PUBLISH_ORDER:
            (staging / name).chmod(0o666 & ~mask)
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

    A float torchvision or timm model (not swapped) is saved as it is, with ``"quantization": null`` in
    its config: a FP parent that ``from_pretrained``, ``quantswap eval`` and ``export`` take like any other.

    Args:
        model: a model returned by ``quantswap.binarize``/``ternarize``/``swap``, or its ``freeze``;
            or a float model.
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
    report = _swap_report(model)
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
        raise ValueError("the model is on the meta device (shapes without data): load its weights first, e.g. "
                         "model.to_empty(device='cpu') then model.load_state_dict(...)")
    storage = StorageConfig(fp_dtype, ternary_packing, keep_latent)
    spec = _base_spec(model, base_model, base_model_args)
    refold_batchnorms(model)  # a folded BatchNorm edited in place: the model computes what is saved
    tensors, packed, frozen = _packed_state(model, storage)
    config = CheckpointConfig(
        spec, report and report.config, storage, leaf_modules=report.leaf_modules if report else [],
        metrics=dict(metrics or {}),
        layers={"quantized": len(report.quantized), "kept_real": len(report.kept_real)} if report else {},
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


def _build(config: CheckpointConfig, latent: bool) -> nn.Module:
    spec = config.base_model
    try:
        base = spec.build()
    except (ValueError, TypeError, RuntimeError, AssertionError) as err:
        raise CheckpointError(f"{CONFIG_NAME} names base model {spec.name!r} with {spec.args}, which cannot be built "
                              f"here: {err}") from None
    if config.quantization is None:  # a float checkpoint: the base model itself
        model = base
        model.meta = {}  # as a swapped model's (torch.fx GraphModule's), for the checkpoint's config
    else:
        model = swap(base, config.quantization, inplace=True, leaf_modules=config.leaf_modules)
    if config.data_config is not None:
        model.pretrained_cfg = config.data_config  # timm.data.resolve_data_config(model=...) reads it
    return model if latent or config.quantization is None else freeze(model, backend="float", inplace=True)


def _meta_state(config: CheckpointConfig, latent: bool) -> dict[str, torch.Tensor] | None:
    """The state dict, on the meta device (no memory), of the model ``config`` describes: what the file
    must hold, known before anything real is allocated. ``None`` where a builder needs real tensors."""
    try:
        with torch.device("meta"):
            return _build(config, latent).state_dict()
    except NotImplementedError:  # e.g. torchvision's RegNet computes its widths with tensors
        return None


def verify(folder: str | os.PathLike) -> CheckpointConfig:
    """Check a checkpoint folder without building it for real: its config, its weights' header and
    digest, and that the file holds exactly the tensors the config's model needs (``CheckpointError``
    otherwise). Fast and small whatever the config claims; :func:`quantswap.push_to_hub` runs it."""
    return _inspect(Path(folder))[0]


def _inspect(folder: Path) -> tuple[CheckpointConfig, Path, dict, dict, set[str], bool]:
    """The config, the weights file, its header and packing, the keys only a latent checkpoint has, and
    whether the layout was checked already (against the meta-device model; not where a builder needs
    real tensors)."""
    if not folder.is_dir():
        raise CheckpointNotFoundError(f"no checkpoint folder at {folder}")
    config = read_config(folder)
    path = _weights_file(folder)
    header, packed = read_header(path)
    if config.weights_sha256 is not None and sha256(path) != config.weights_sha256:
        raise CheckpointError(f"{path} is not the weights file {folder / CONFIG_NAME} was saved with (its SHA-256 "
                              "differs): an interrupted overwrite, or files of two saves mixed. Save the model again")
    layer_names = [key.removesuffix(CODES_KEY) for key in packed]  # "layer1.0.conv1." per packed layer
    latent = any(name + "weight" in header for name in layer_names)
    frozen_only = {name + CODES_KEY for name in layer_names} | {name + SCALE_KEY for name in layer_names}
    latent_keys = frozen_only if latent else set()
    meta = _meta_state(config, latent)
    if meta is not None:
        check_layout(path, header, packed, meta, latent_keys)
    return config, path, header, packed, latent_keys, meta is not None


def load_pretrained(folder: str | os.PathLike, *, backend: str = "packed") -> nn.Module:
    """Rebuild, unpack and load a checkpoint folder; the model is returned in eval mode.

    The file's layout is checked against the model the config describes, built on the meta device,
    before anything is allocated; every value is checked before it is loaded. Without latent weights
    the result is the frozen inference form, its W1/A1 layers on the packed kernels (weights kept as
    bits) unless ``backend="float"`` (see :func:`quantswap.freeze`); with them (``keep_latent=True``)
    the trainable swapped model. ``model.meta["quantswap_checkpoint"]`` holds its
    :class:`CheckpointConfig`. Use :func:`quantswap.from_pretrained` for Hub ids as well.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
    config, path, header, packed, latent_keys, checked = _inspect(Path(folder))
    model = _build(config, bool(latent_keys))
    expected = model.state_dict()
    if not checked:
        check_layout(path, header, packed, expected, latent_keys)
    roles = {key: (role, model.get_submodule(name).codec) for key, (name, role) in quantized_weight_keys(model).items()}
    model.load_state_dict(state_to_load(path, read_tensors(path), packed, expected, roles), strict=True)
    if not latent_keys and config.quantization is not None:
        freeze(model, backend=backend, inplace=True)
    model.meta["quantswap_checkpoint"] = config
    return model.eval()
