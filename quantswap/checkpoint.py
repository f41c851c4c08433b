"""Compressed checkpoints on disk: :func:`save_pretrained` and :func:`load_pretrained`.

A checkpoint is a folder of three files:

* ``model.safetensors``: the state dict of the *frozen* model (see :func:`quantswap.freeze`). Every
  quantized layer's integer codes are bit-packed (:mod:`quantswap.packing`; the header's
  ``quantswap.packed`` metadata names each packed tensor's scheme and shape) and its scales are
  float32; every other floating tensor (first and last layer, BatchNorm, shortcuts) is stored in
  ``fp_dtype``. With ``keep_latent=True`` the latent float32 weights are stored too.
* ``config.json``: the quantswap and format versions, the base model as an allow-listed builder
  name with its arguments, the method configuration, the packing and the measured sizes.
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

import dataclasses
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
from quantswap.config import config_from_dict
from quantswap.frozen import freeze, is_frozen
from quantswap.models import BaseModelSpec, identify_base_model
from quantswap.nn.layers import CODES_KEY, SCALE_KEY, quantized_weight_keys
from quantswap.packing import PackingError, pack, unpack
from quantswap.summary import theoretical_size
from quantswap.version import __version__

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

FORMAT_VERSION = 1
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
CARD_NAME = "README.md"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
FP_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
TERNARY_PACKINGS = ("bits2", "base3")


class CheckpointError(ValueError):
    """A checkpoint that cannot be written or read: the message names the file, the problem and the fix."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """A checkpoint folder, Hub repo, revision or file that does not exist."""


@dataclasses.dataclass
class CheckpointSize:
    """Measured file size of a checkpoint next to its theoretical minimum and its FP32 size."""

    file_bytes: int  # model.safetensors on disk
    theoretical_bytes: float  # quantswap.summary's count at the checkpoint's bit widths
    fp32_bytes: float  # the same tensors all in float32

    @property
    def ratio(self) -> float:
        """File size over the theoretical minimum (1.0 is no overhead)."""
        return self.file_bytes / self.theoretical_bytes

    @property
    def compression(self) -> float:
        return self.fp32_bytes / self.file_bytes

    def to_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


# -- saving ---------------------------------------------------------------------------------------


def _fp_dtype(fp_dtype: str | torch.dtype) -> tuple[str, torch.dtype]:
    for name, dtype in FP_DTYPES.items():
        if fp_dtype in (name, dtype):
            return name, dtype
    raise ValueError(f"fp_dtype is the dtype of the real-valued tensors: one of {', '.join(FP_DTYPES)}; got {fp_dtype!r}")


def _packed_state(
    model: nn.Module, fp_dtype: torch.dtype, ternary_packing: str, keep_latent: bool
) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, Any]], nn.Module]:
    frozen = model if is_frozen(model) else freeze(model)
    tensors: dict[str, torch.Tensor] = {}
    packed: dict[str, dict[str, Any]] = {}
    roles = quantized_weight_keys(frozen)
    for key, tensor in frozen.state_dict().items():
        tensor = tensor.detach().cpu()
        role = roles.get(key, (None, None))[1]
        if role == "codes":
            codec = frozen.get_submodule(roles[key][0]).codec
            scheme = "bits1" if codec.code_levels == 2 else ternary_packing
            tensors[key] = pack(tensor, scheme, rows=codec.branches)
            packed[key] = {"scheme": scheme, "shape": list(tensor.shape)}
        elif role == "scale" or not tensor.is_floating_point():
            tensors[key] = tensor.clone()
        else:
            tensors[key] = tensor.to(fp_dtype, copy=True)
    if keep_latent:
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
) -> CheckpointSize:
    """Save a swapped (or frozen) model as a compressed checkpoint folder; see the module docstring.

    Args:
        model: a model returned by ``quantswap.binarize``/``ternarize``/``swap``, or its ``freeze``.
        save_directory: the folder; created if missing. Files are written to a temporary folder
            beside it and moved in only when complete.
        fp_dtype: storage dtype of the real-valued tensors: ``"float32"`` (exact), ``"float16"`` or
            ``"bfloat16"`` (loaded back as float32, i.e. rounded). Scales always stay float32.
        keep_latent: also store the latent float32 weights, so the loaded model can be fine-tuned.
        ternary_packing: ``"bits2"`` (4 codes per byte) or ``"base3"`` (5 codes per byte, 1.6 bits).
        base_model, base_model_args: the builder (``"torchvision:resnet18"``, ``"timm:resnet18d"``)
            and arguments that rebuild the float model; found automatically for torchvision and timm.
        metrics: measured results for the model card and config, e.g.
            ``{"dataset": "fashion-mnist", "top1": 91.2}``.

    Returns:
        The :class:`CheckpointSize`: bytes on disk next to the theoretical minimum and FP32.
    """
    report = get_swap_report(model)
    fp_name, dtype = _fp_dtype(fp_dtype)
    if ternary_packing not in TERNARY_PACKINGS:
        raise ValueError(f"ternary_packing must be one of {TERNARY_PACKINGS}, got {ternary_packing!r}")
    if base_model is not None:
        spec = BaseModelSpec(base_model, dict(base_model_args or {}))
    elif report.base is not None:
        spec = identify_base_model(report.base)
    else:
        raise ValueError("the swap report does not record the float model; pass base_model='torchvision:NAME'")
    tensors, packed, frozen = _packed_state(model, dtype, ternary_packing, keep_latent)
    theoretical, fp32 = theoretical_size(frozen, torch.finfo(dtype).bits, 2.0 if ternary_packing == "bits2" else 1.6)
    if keep_latent:
        latent = sum(tensors[f"{name}.weight"].numel() for name in report.quantized)
        theoretical += 4 * latent
        fp32 += 4 * latent

    target = Path(save_directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    try:
        metadata = {"format": "pt", "quantswap.format_version": str(FORMAT_VERSION),
                    "quantswap.packed": json.dumps(packed, sort_keys=True)}
        save_file(tensors, staging / WEIGHTS_NAME, metadata=metadata)
        size = CheckpointSize((staging / WEIGHTS_NAME).stat().st_size, theoretical, fp32)
        config = {
            "library_name": "quantswap",
            "quantswap_version": __version__,
            "format_version": FORMAT_VERSION,
            "base_model": spec.to_dict(),
            "quantization": report.config.to_dict(),
            "leaf_modules": report.leaf_modules,
            "layers": {"quantized": len(report.quantized), "kept_real": len(report.kept_real)},
            "storage": {"fp_dtype": fp_name, "ternary_packing": ternary_packing, "keep_latent": keep_latent},
            "size": size.to_dict(),
            "metrics": dict(metrics or {}),
        }
        (staging / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        from quantswap.card import model_card

        model_card(config, name=target.name).save(staging / CARD_NAME)
        _publish(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return size


# -- loading --------------------------------------------------------------------------------------


def read_config(folder: str | os.PathLike) -> dict[str, Any]:
    """The validated ``config.json`` of a checkpoint folder."""
    path = Path(folder) / CONFIG_NAME
    if not path.is_file():
        raise CheckpointNotFoundError(f"{path} is missing: a quantswap checkpoint folder holds {CONFIG_NAME} and "
                                      f"{WEIGHTS_NAME}; save one with quantswap.save_pretrained")
    try:
        config = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path} is not valid JSON ({err}); the file is damaged: save or download it again") from None
    if not isinstance(config, dict) or config.get("library_name") != "quantswap":
        raise CheckpointError(f"{path} is not a quantswap config (no \"library_name\": \"quantswap\")")
    version = config.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise CheckpointError(f"{path} has no valid format_version (got {version!r})")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} uses checkpoint format {version}, written by quantswap {config.get('quantswap_version', '?')}; "
            f"this quantswap ({__version__}) reads format {FORMAT_VERSION} and older: pip install -U quantswap"
        )
    for key in ("base_model", "quantization"):
        if key not in config:
            raise CheckpointError(f"{path} lacks the {key!r} entry; the file is damaged: save or download it again")
    return config


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


def _build(config: dict[str, Any], latent: bool) -> nn.Module:
    try:
        spec = BaseModelSpec.from_dict(config["base_model"])
        quant = config_from_dict(config["quantization"])
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"{CONFIG_NAME}: {err}") from None
    try:
        base = spec.build()
    except (ValueError, TypeError, RuntimeError) as err:
        raise CheckpointError(f"{CONFIG_NAME} names base model {spec.name!r} with {spec.args}, which cannot be built "
                              f"here: {err}") from None
    model = swap(base, quant, inplace=True, leaf_modules=config.get("leaf_modules") or ())
    return model if latent else freeze(model, inplace=True)


def load_pretrained(folder: str | os.PathLike) -> nn.Module:
    """Rebuild, unpack and load a checkpoint folder; the model is returned in eval mode.

    Without latent weights it is the frozen inference form; with them (``keep_latent=True``) the
    trainable swapped model. Use :func:`quantswap.from_pretrained` for Hub ids as well.
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

    state = {}
    for key, tensor in tensors.items():
        if key not in expected:
            continue  # a latent checkpoint's codes, or an unexpected key reported below
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
