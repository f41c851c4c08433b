"""The packed kernels' weight layout: binary codes as bits in 64-bit words, 8 output channels a block.

A binary weight ``[O, C/G, KH, KW]`` with codes ``±1`` becomes an ``int64`` tensor
``[G, OB, KH, KW, WG, 8]``: per group, blocks of 8 output channels (``OB = ceil(O/G / 8)``), per
tap, ``WG = ceil(C/G / 64)`` words of 64 input channels, one word per output channel of the block.
Bit ``c % 64`` of word ``c // 64`` is 1 where the code is ``-1`` (the sign bit); channels beyond
``C/G`` and output channels beyond ``O/G`` are zero bits, which add nothing to a popcount of
``a XOR w`` as long as the activations' padding bits are zero too. A Linear layer is the 1x1,
one-group case. The same bits as the ``bits1`` checkpoint scheme, reordered for the kernel:
8 x smaller than ``int8`` codes.

Example:
    >>> import torch
    >>> from quantswap.kernels.layout import pack_weight, unpack_weight
    >>> codes = torch.randint(0, 2, (24, 16, 3, 3), dtype=torch.int8) * 2 - 1
    >>> words = pack_weight(codes, groups=2)
    >>> tuple(words.shape), words.dtype
    ((2, 2, 3, 3, 1, 8), torch.int64)
    >>> torch.equal(unpack_weight(words, out_channels=24, in_channels=16), codes)
    True
"""

from __future__ import annotations

import sys

import torch
from torch.nn import functional as F

__all__ = ["LANES", "WORD_BITS", "pack_weight", "unpack_weight", "weight_sign_bits"]

LANES = 8  # output channels per block: one 512-bit vector of 64-bit words
WORD_BITS = 64
_SHIFTS = torch.arange(8, dtype=torch.uint8)

if sys.byteorder != "little":  # the words are assembled from bytes, least significant first
    raise ImportError("quantswap.kernels assumes a little-endian CPU")


def pack_weight(codes: torch.Tensor, groups: int = 1) -> torch.Tensor:
    """``int64 [G, OB, KH, KW, WG, 8]`` words from ``±1`` codes ``[O, C/G, KH, KW]`` (or ``[O, C]``)."""
    if codes.dim() == 2:
        codes = codes[:, :, None, None]
    if codes.dim() != 4:
        raise ValueError(f"expected codes [O, C/G, KH, KW] or [O, C], got shape {tuple(codes.shape)}")
    out_channels, cg, kh, kw = codes.shape
    if out_channels % groups:
        raise ValueError(f"{out_channels} output channels do not split into {groups} groups")
    og = out_channels // groups
    ob, wg = -(-og // LANES), -(-cg // WORD_BITS)
    bits = (codes < 0).to(torch.uint8).view(groups, og, cg, kh, kw)
    bits = F.pad(bits, (0, 0, 0, 0, 0, wg * WORD_BITS - cg, 0, ob * LANES - og))  # zero bits: no contribution
    bits = bits.view(groups, ob, LANES, wg, WORD_BITS // 8, 8, kh, kw).permute(0, 1, 6, 7, 3, 2, 4, 5)
    data = (bits << _SHIFTS.to(bits.device)).sum(-1, dtype=torch.uint8)  # [G, OB, KH, KW, WG, 8 lanes, 8 bytes]
    return data.contiguous().view(torch.int64).squeeze(-1)


def weight_sign_bits(words: torch.Tensor, out_channels: int, in_channels: int) -> torch.Tensor:
    """The bits of :func:`pack_weight` back in ``[O, C/G, KH, KW]`` order (``uint8``, 1 for ``-1``)."""
    groups, ob, kh, kw, wg, lanes = words.shape
    data = words.contiguous().view(torch.uint8).view(groups, ob, kh, kw, wg, lanes, 8, 1)
    bits = (data >> _SHIFTS.to(words.device)) & 1  # [G, OB, KH, KW, WG, 8 lanes, 8 bytes, 8 bits]
    bits = bits.permute(0, 1, 5, 4, 6, 7, 2, 3).reshape(groups, ob * lanes, wg * WORD_BITS, kh, kw)
    og = out_channels // groups
    return bits[:, :og, :in_channels].reshape(out_channels, in_channels, kh, kw)


def unpack_weight(words: torch.Tensor, out_channels: int, in_channels: int) -> torch.Tensor:
    """``int8`` codes ``[O, C/G, KH, KW]`` from :func:`pack_weight`'s words (``in_channels``: per group)."""
    return (1 - 2 * weight_sign_bits(words, out_channels, in_channels).to(torch.int8)).contiguous()
