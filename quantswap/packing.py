"""Bit-packing of quantized weight codes into ``uint8`` bytes, exact in both directions.

=========  ===============  =================  ===============================================
scheme     codes            weights per byte   byte layout
=========  ===============  =================  ===============================================
``bits1``  -1, +1           8                  bit ``7 - i`` of byte ``j`` is weight ``8j + i``
                                               (1 for +1, as ``numpy.packbits``)
``bits2``  -1, 0, +1        4                  2-bit fields ``code + 1``, first weight highest
``base3``  -1, 0, +1        5                  ``Σ_i (code_i + 1) · 3^(4 - i)``, at most 242
=========  ===============  =================  ===============================================

Codes are packed row by row: a ``[rows, ...]`` tensor (one row per residual-expansion branch) gives
``[rows, ceil(n / per_byte)]`` bytes, each row padded on its own with zero fields, which
:func:`unpack` cuts off again (it is given the unpacked shape).

Example:
    >>> import torch
    >>> from quantswap.packing import pack, unpack
    >>> codes = torch.tensor([1, -1, 1, 1, -1, -1, -1, 1, 1], dtype=torch.int8)
    >>> pack(codes, "bits1")
    tensor([[177, 128]], dtype=torch.uint8)
    >>> torch.equal(unpack(pack(codes, "bits1"), "bits1", codes.shape), codes)
    True
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import torch

__all__ = ["Scheme", "SCHEMES", "TERNARY_SCHEMES", "scheme_for", "pack", "unpack", "packed_bytes", "PackingError"]


class PackingError(ValueError):
    """Packed bytes or codes that do not fit the scheme (corrupt data or a wrong shape)."""


@dataclasses.dataclass(frozen=True)
class Scheme:
    name: str
    levels: int  # 2: codes ±1; 3: codes -1, 0, +1
    per_byte: int
    base: int  # the radix of one field: 2 for bits1, 4 for bits2, 3 for base3

    @property
    def bits_per_code(self) -> float:
        return 8 / self.per_byte


SCHEMES = {
    s.name: s
    for s in (Scheme("bits1", 2, 8, 2), Scheme("bits2", 3, 4, 4), Scheme("base3", 3, 5, 3))
}


#: The schemes that hold ternary codes; binary codes always use ``bits1``.
TERNARY_SCHEMES = tuple(name for name, s in SCHEMES.items() if s.levels == 3)


def scheme_for(code_levels: int, ternary: str = "bits2") -> Scheme:
    """The scheme that stores codes of ``code_levels`` levels: ``bits1`` for binary, ``ternary`` for ternary.

    Example:
        >>> scheme_for(2).bits_per_code, scheme_for(3, "base3").bits_per_code
        (1.0, 1.6)
    """
    if code_levels == 2:
        return SCHEMES["bits1"]
    if code_levels == 3 and ternary in TERNARY_SCHEMES:
        return SCHEMES[ternary]
    raise PackingError(f"no packing for {code_levels}-level codes with ternary scheme {ternary!r}; ternary codes "
                       f"pack as {' or '.join(TERNARY_SCHEMES)}")


def _scheme(name: str) -> Scheme:
    try:
        return SCHEMES[name]
    except KeyError:
        raise PackingError(f"unknown packing scheme {name!r}; known: {', '.join(SCHEMES)}") from None


def _weights(scheme: Scheme, device: torch.device) -> torch.Tensor:
    """Place values of the fields in one byte, first field most significant."""
    return scheme.base ** torch.arange(scheme.per_byte - 1, -1, -1, device=device, dtype=torch.int32)


def packed_bytes(numel: int, scheme: str) -> int:
    """Bytes one row of ``numel`` codes packs into."""
    return math.ceil(numel / _scheme(scheme).per_byte)


def pack(codes: torch.Tensor, scheme: str, rows: int = 1) -> torch.Tensor:
    """Pack ``int8`` codes into a ``[rows, bytes]`` ``uint8`` tensor (``rows`` splits the leading dim)."""
    s = _scheme(scheme)
    if codes.dtype != torch.int8:
        raise PackingError(f"codes must be int8, got {codes.dtype}")
    digits = codes.reshape(rows, -1).to(torch.int32)
    if s.levels == 2:
        if not bool(((digits == 1) | (digits == -1)).all()):
            raise PackingError(f"scheme {scheme!r} packs binary codes (-1, +1) only")
        digits = (digits + 1) // 2
    else:
        if not bool(((digits >= -1) & (digits <= 1)).all()):
            raise PackingError(f"scheme {scheme!r} packs ternary codes (-1, 0, +1) only")
        digits = digits + 1
    pad = (-digits.shape[1]) % s.per_byte
    digits = torch.nn.functional.pad(digits, (0, pad))
    fields = digits.view(rows, -1, s.per_byte)
    return (fields * _weights(s, codes.device)).sum(-1, dtype=torch.int32).to(torch.uint8)


def unpack(data: torch.Tensor, scheme: str, shape: Sequence[int]) -> torch.Tensor:
    """Inverse of :func:`pack`: ``int8`` codes of ``shape`` (rows = ``data.shape[0]``)."""
    s = _scheme(scheme)
    shape = tuple(shape)
    if data.dtype != torch.uint8 or data.dim() != 2:
        raise PackingError(f"packed codes are a 2-D uint8 tensor, got {data.dtype} of shape {tuple(data.shape)}")
    rows = data.shape[0]
    numel = math.prod(shape)
    if rows == 0 or numel % rows or data.shape[1] != packed_bytes(numel // rows, scheme):
        raise PackingError(
            f"{tuple(data.shape)} packed bytes cannot hold codes of shape {shape} with scheme {scheme!r} "
            f"(expected [{rows}, {packed_bytes(numel // max(rows, 1), scheme)}])"
        )
    values = data.to(torch.int32)
    if s.base == 3 and bool((values > 3**s.per_byte - 1).any()):
        raise PackingError(f"byte value above {3**s.per_byte - 1} in {scheme!r} data: the file is corrupt")
    digits = (values.unsqueeze(-1) // _weights(s, data.device)) % s.base
    digits = digits.view(rows, -1)[:, : numel // rows]
    if s.levels == 2:
        codes = digits * 2 - 1
    else:
        if bool((digits == 3).any()):
            raise PackingError(f"2-bit field value 3 in {scheme!r} data: the file is corrupt")
        codes = digits - 1
    return codes.to(torch.int8).reshape(shape)
