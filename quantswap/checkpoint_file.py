"""Reading a checkpoint's ``model.safetensors`` defensively: the header before the tensors, the layout
against the model ``config.json`` describes before that model is built for real, and every value
before it is loaded.

Nothing here unpickles or executes anything: safetensors holds raw tensors and a JSON header, and
quantswap's metadata (``quantswap.packed``: each packed tensor's scheme and unpacked shape) is
type-checked like the rest of the file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from quantswap.checkpoint_config import CONFIG_NAME, CheckpointError
from quantswap.packing import SCHEMES, PackingError, unpack

__all__ = ["Header", "read_header", "read_tensors", "sha256", "check_layout", "state_to_load"]

_FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")
Header = dict[str, tuple[str, tuple[int, ...]]]  # tensor name -> (safetensors dtype, shape)


@contextlib.contextmanager
def _opened(path: Path) -> Iterator[Any]:
    try:
        with safe_open(str(path), framework="pt") as f:
            yield f
    except SafetensorError as err:
        with open(path, "rb") as raw:
            magic = raw.read(4)
        if magic.startswith(b"PK") or magic[:1] == b"\x80":
            raise CheckpointError(f"{path} is a pickle/zip file, not safetensors: quantswap never unpickles "
                                  "weights; re-save the model with quantswap.save_pretrained") from None
        raise CheckpointError(f"{path} is truncated or corrupt ({err}); download or save it again") from None


def _packed_metadata(metadata: dict[str, str], path: Path) -> dict[str, dict[str, Any]]:
    """``quantswap.packed``, type-checked: ``{name: {"scheme": "bits1", "shape": [..]}}``."""
    if "quantswap.packed" not in metadata:
        raise CheckpointError(f"{path} is a safetensors file but not a quantswap checkpoint (no quantswap metadata)")
    try:
        packed = json.loads(metadata["quantswap.packed"])
    except (json.JSONDecodeError, RecursionError):
        raise CheckpointError(f"{path} has damaged quantswap metadata; download or save it again") from None
    if not isinstance(packed, dict) or not all(
        isinstance(v, dict) and v.get("scheme") in SCHEMES and isinstance(v.get("shape"), list)
        and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in v["shape"])
        for v in packed.values()
    ):
        raise CheckpointError(f"{path}: the metadata 'quantswap.packed' must map tensor names to "
                              f"{{'scheme': one of {list(SCHEMES)}, 'shape': [sizes]}}; the file is damaged")
    return packed


def read_header(path: Path) -> tuple[Header, dict[str, dict[str, Any]]]:
    """Every tensor's dtype and shape, and the packing metadata, without reading a tensor."""
    with _opened(path) as f:
        metadata = f.metadata() or {}
        header = {key: (f.get_slice(key).get_dtype(), tuple(f.get_slice(key).get_shape())) for key in f.keys()}
    return header, _packed_metadata(metadata, path)


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    with _opened(path) as f:
        return {key: f.get_tensor(key) for key in f.keys()}


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _listing(names: list[str]) -> str:
    return f"{names[:5]}{' ...' if len(names) > 5 else ''}"


def check_layout(path: Path, header: Header, packed: dict, expected: dict[str, torch.Tensor], latent_keys: set[str]) -> None:
    """The file holds exactly the tensors ``expected`` (a state dict, e.g. on the meta device) needs, with
    their shapes and kinds of dtype: else a ``CheckpointError`` saying config and weights do not match."""
    missing = sorted(set(expected) - set(header))
    unexpected = sorted(set(header) - set(expected) - latent_keys)
    if missing or unexpected:
        raise CheckpointError(f"{path} does not match the model built from {CONFIG_NAME}: "
                              + "; ".join(([f"missing {_listing(missing)}"] if missing else [])
                                          + ([f"unexpected {_listing(unexpected)}"] if unexpected else [])))
    for key, want in expected.items():
        dtype, shape = header[key]
        if key in packed:
            shape, what = tuple(packed[key]["shape"]), "holds codes of shape"
            if dtype != "U8":
                raise CheckpointError(f"{path}: packed tensor {key!r} is {dtype}, not bytes (U8); the file is damaged")
        else:
            what = "has shape"
        if shape != tuple(want.shape):
            raise CheckpointError(f"{path}: tensor {key!r} {what} {list(shape)} but the model built from "
                                  f"{CONFIG_NAME} expects {list(want.shape)}; config and weights do not match")
        if want.is_floating_point() != (dtype in _FLOAT_DTYPES) and key not in packed:
            raise CheckpointError(f"{path}: tensor {key!r} is {dtype} but the model expects a "
                                  f"{'floating' if want.is_floating_point() else 'integer'} tensor; the file is damaged")


def _checked_values(path: Path, key: str, tensor: torch.Tensor, role: str | None, codec) -> torch.Tensor:
    """Codes are -1, 0 or +1 (int8); scales are what their codec accepts (finite and non-negative, for
    most: :meth:`~quantswap.nn.quantizers.WeightQuantizer.scale_problem`)."""
    if role == "codes" and (tensor.dtype != torch.int8 or bool((tensor.abs() > 1).any())):
        raise CheckpointError(f"{path}: tensor {key!r} holds codes outside -1, 0, +1; the file is damaged")
    problem = codec.scale_problem(tensor) if role == "scale" else None
    if problem:
        raise CheckpointError(f"{path}: tensor {key!r} holds {problem}; the file is damaged: save or download it again")
    return tensor


def state_to_load(path: Path, tensors: dict, packed: dict, expected: dict, roles: dict[str, tuple]) -> dict:
    """The file's tensors that the built model expects: unpacked, value-checked, in the model's dtypes.
    ``roles`` maps a quantized layer's state-dict keys to ``(role, codec)``."""
    state = {}
    for key, want in expected.items():
        tensor = tensors[key]
        if key in packed:
            shape = tuple(packed[key]["shape"])
            try:
                tensor = unpack(tensor, packed[key]["scheme"], shape)
            except PackingError as err:
                raise CheckpointError(f"{path}: tensor {key!r}: {err}") from None
        tensor = _checked_values(path, key, tensor, *roles.get(key, (None, None)))
        state[key] = tensor.to(want.dtype) if tensor.is_floating_point() else tensor
    return state
