"""``config.json``, the description of a checkpoint: :class:`CheckpointConfig` writes, reads and
validates it; save, load, the model card, ``quantswap eval`` and the zoo all go through it.

The file holds the quantswap and format versions, the base model as an allow-listed builder name
with its arguments, the method configuration, how the tensors are stored (:class:`StorageConfig`),
the measured sizes, the layer counts, the measured metrics and, for a timm base, its data
configuration (``pretrained_cfg``: mean, std, input size, interpolation, crop) so that
``timm.data.resolve_data_config(model=...)`` works on a loaded model.

Example:
    >>> from quantswap.checkpoint_config import CheckpointConfig
    >>> from quantswap.config import config_for
    >>> from quantswap.models import BaseModelSpec
    >>> cfg = CheckpointConfig(BaseModelSpec("torchvision:resnet18", {"num_classes": 10}), config_for("irnet"))
    >>> data = cfg.to_dict()
    >>> data["library_name"], data["quantization"]["method"], data["storage"]["fp_dtype"]
    ('quantswap', 'irnet', 'float32')
    >>> CheckpointConfig.from_dict(data) == cfg
    True
    >>> CheckpointConfig.from_dict({**data, "format_version": 99})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    quantswap.checkpoint_config.CheckpointError: config.json uses checkpoint format 99, ...
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import torch

from quantswap.config import QuantConfig, config_from_dict
from quantswap.models import BaseModelSpec
from quantswap.packing import TERNARY_SCHEMES, scheme_for
from quantswap.version import __version__

__all__ = [
    "FORMAT_VERSION",
    "CONFIG_NAME",
    "FP_DTYPES",
    "DATA_CONFIG_KEYS",
    "CheckpointError",
    "CheckpointNotFoundError",
    "CheckpointSize",
    "StorageConfig",
    "CheckpointConfig",
]

FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
FP_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
#: The entries of a timm ``pretrained_cfg`` a checkpoint keeps: how to feed the model, where its base is.
DATA_CONFIG_KEYS = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode", "fixed_input_size",
                    "architecture", "tag", "hf_hub_id", "license")


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


@dataclasses.dataclass(frozen=True)
class StorageConfig:
    """How a checkpoint stores its tensors.

    Args:
        fp_dtype: dtype of the real-valued tensors: ``"float32"`` (exact), ``"float16"``, ``"bfloat16"``
            (a ``torch.dtype`` is accepted and stored by name).
        ternary_packing: the :mod:`quantswap.packing` scheme of ternary codes: ``"bits2"`` or ``"base3"``.
        keep_latent: the latent float32 weights are stored too (the loaded model can train on).
    """

    fp_dtype: str = "float32"
    ternary_packing: str = "bits2"
    keep_latent: bool = False

    def __post_init__(self) -> None:
        names = {dtype: name for name, dtype in FP_DTYPES.items()}
        if isinstance(self.fp_dtype, torch.dtype) and self.fp_dtype in names:
            object.__setattr__(self, "fp_dtype", names[self.fp_dtype])
        if self.fp_dtype not in FP_DTYPES:
            raise ValueError(f"fp_dtype is the dtype of the real-valued tensors: one of {', '.join(FP_DTYPES)}; "
                             f"got {self.fp_dtype!r}")
        if self.ternary_packing not in TERNARY_SCHEMES:
            raise ValueError(f"ternary_packing must be one of {TERNARY_SCHEMES}, got {self.ternary_packing!r}")
        if not isinstance(self.keep_latent, bool):
            raise ValueError(f"keep_latent must be true or false, got {self.keep_latent!r}")

    @property
    def dtype(self) -> torch.dtype:
        return FP_DTYPES[self.fp_dtype]

    @property
    def fp_bits(self) -> int:
        return torch.finfo(self.dtype).bits

    def scheme(self, code_levels: int) -> str:
        """The packing scheme of codes with ``code_levels`` levels (2: binary, 3: ternary)."""
        return scheme_for(code_levels, self.ternary_packing).name

    def bits_per_code(self, code_levels: int) -> float:
        return scheme_for(code_levels, self.ternary_packing).bits_per_code


def _data_config(value: Any) -> dict[str, Any] | None:
    """The allow-listed, JSON-able part of a timm ``pretrained_cfg``."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError(f"pretrained_cfg must be a mapping, got {type(value).__name__}")
    kept = {}
    for key in DATA_CONFIG_KEYS:
        item = value.get(key)
        if isinstance(item, (tuple, list)) and all(isinstance(v, (int, float)) for v in item):
            kept[key] = list(item)
        elif isinstance(item, (str, int, float, bool)):
            kept[key] = item
    return kept or None


@dataclasses.dataclass
class CheckpointConfig:
    """The contents of a checkpoint's ``config.json`` (see the module docstring)."""

    base_model: BaseModelSpec
    quantization: QuantConfig | None  # None: the float model itself (e.g. a parent trained by ``finetune --method none``)
    storage: StorageConfig = dataclasses.field(default_factory=StorageConfig)
    size: CheckpointSize | None = None
    layers: dict[str, int] = dataclasses.field(default_factory=dict)  # {"quantized": n, "kept_real": m}
    leaf_modules: list[str] = dataclasses.field(default_factory=list)
    metrics: dict[str, Any] = dataclasses.field(default_factory=dict)  # {"dataset": ..., "top1": ...}
    pretrained_cfg: dict[str, Any] | None = None  # a timm base's data config (DATA_CONFIG_KEYS)
    license: str | None = None  # the model card's license (default: the base's, else "other")
    weights_sha256: str | None = None  # binds config.json to its model.safetensors (checked on load)
    quantswap_version: str = __version__
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        self.pretrained_cfg = _data_config(self.pretrained_cfg)

    @property
    def data_config(self) -> dict[str, Any] | None:
        """``pretrained_cfg`` with tuples where timm expects them (set on a loaded model)."""
        if self.pretrained_cfg is None:
            return None
        return {k: tuple(v) if isinstance(v, list) else v for k, v in self.pretrained_cfg.items()}

    def to_dict(self) -> dict[str, Any]:
        data = {
            "library_name": "quantswap",
            "quantswap_version": self.quantswap_version,
            "format_version": self.format_version,
            "base_model": self.base_model.to_dict(),
            "quantization": self.quantization.to_dict() if self.quantization is not None else None,
            "leaf_modules": list(self.leaf_modules),
            "layers": dict(self.layers),
            "storage": dataclasses.asdict(self.storage),
            "size": self.size.to_dict() if self.size else None,
            "metrics": dict(self.metrics),
        }
        if self.pretrained_cfg is not None:
            data["pretrained_cfg"] = dict(self.pretrained_cfg)
        if self.license is not None:
            data["license"] = self.license
        if self.weights_sha256 is not None:
            data["weights_sha256"] = self.weights_sha256
        return data

    @classmethod
    def from_dict(cls, data: Any, source: str = CONFIG_NAME) -> CheckpointConfig:
        """Validate and read a ``config.json`` mapping; ``CheckpointError`` names ``source`` and the field."""
        if not isinstance(data, dict) or data.get("library_name") != "quantswap":
            raise CheckpointError(f"{source} is not a quantswap config (no \"library_name\": \"quantswap\")")
        version = data.get("format_version")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise CheckpointError(f"{source} has no valid format_version (got {version!r})")
        if version > FORMAT_VERSION:
            raise CheckpointError(
                f"{source} uses checkpoint format {version}, written by quantswap {data.get('quantswap_version', '?')}; "
                f"this quantswap ({__version__}) reads format {FORMAT_VERSION} and older: pip install -U quantswap")
        for key in ("base_model", "quantization"):
            if key not in data:
                raise CheckpointError(f"{source} lacks the {key!r} entry; the file is damaged: save or download it again")
        field = "base_model"
        try:
            fields = {"base_model": BaseModelSpec.from_dict(data["base_model"])}
            field = "quantization"
            fields["quantization"] = None if data["quantization"] is None else config_from_dict(data["quantization"])
            for field, read in _OPTIONAL_FIELDS.items():
                if data.get(field) is not None:
                    fields[field] = read(data[field])
        except (ValueError, TypeError) as err:
            raise CheckpointError(f"{source}: field {field!r}: {err}") from None
        return cls(**fields, quantswap_version=str(data.get("quantswap_version", "?")), format_version=version)

    @classmethod
    def read(cls, folder: str | os.PathLike) -> CheckpointConfig:
        """The validated ``config.json`` of a checkpoint folder."""
        path = Path(folder) / CONFIG_NAME
        if not path.is_file():
            raise CheckpointNotFoundError(f"{path} is missing: a quantswap checkpoint folder holds {CONFIG_NAME} and "
                                          "model.safetensors; save one with quantswap.save_pretrained")
        try:
            data = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
            raise CheckpointError(f"{path} is not valid JSON ({err}); the file is damaged: save or download it "
                                  "again") from None
        return cls.from_dict(data, source=str(path))

    def write(self, folder: str | os.PathLike) -> Path:
        path = Path(folder) / CONFIG_NAME
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path


def _typed(kind: type, what: str):
    def read(value: Any) -> Any:
        if not isinstance(value, kind):
            raise TypeError(f"must be {what}, got {value!r}")
        return value

    return read


def _storage(value: Any) -> StorageConfig:
    if not isinstance(value, dict):
        raise TypeError(f"must be a mapping, got {value!r}")
    return StorageConfig(**value)


def _size(value: Any) -> CheckpointSize:
    if not isinstance(value, dict) or not all(isinstance(value.get(k), (int, float)) for k in
                                              ("file_bytes", "theoretical_bytes", "fp32_bytes")):
        raise TypeError(f"must hold file_bytes, theoretical_bytes and fp32_bytes numbers, got {value!r}")
    return CheckpointSize(value["file_bytes"], value["theoretical_bytes"], value["fp32_bytes"])


def _names(value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TypeError(f"must be a list of module names, got {value!r}")
    return value


#: The optional fields of config.json and how each is checked.
_OPTIONAL_FIELDS = {
    "storage": _storage,
    "size": _size,
    "layers": _typed(dict, "a mapping of layer counts"),
    "leaf_modules": _names,
    "metrics": _typed(dict, "a mapping of measured results"),
    "pretrained_cfg": _typed(dict, "a mapping (timm's data config)"),
    "license": _typed(str, "a license identifier"),
    "weights_sha256": _typed(str, "the hex SHA-256 of model.safetensors"),
}
