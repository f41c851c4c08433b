"""Pack/unpack of quantized codes: exact for every scheme, shape and value pattern."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from quantswap.packing import SCHEMES, PackingError, pack, packed_bytes, unpack

settings.register_profile("quantswap", deadline=None, max_examples=60)
settings.load_profile("quantswap")


@st.composite
def codes_and_scheme(draw):
    scheme = draw(st.sampled_from(sorted(SCHEMES)))
    rows = draw(st.integers(1, 4)) if SCHEMES[scheme].levels == 3 else 1
    inner = draw(st.lists(st.integers(1, 7), min_size=0, max_size=3))  # sizes rarely a multiple of 8 or 5
    values = (-1, 1) if SCHEMES[scheme].levels == 2 else (-1, 0, 1)
    pattern = draw(st.sampled_from(["random", "all-positive", "all-negative", "zeros"]))
    if pattern == "zeros" and 0 not in values:
        pattern = "all-positive"  # binary codes have no zero: sign(0) is +1 before encoding
    shape = (rows, *inner)
    n = math.prod(shape)
    if pattern == "random":
        picks = draw(st.lists(st.sampled_from(values), min_size=n, max_size=n))
    else:
        picks = [{"all-positive": 1, "all-negative": -1, "zeros": 0}[pattern]] * n
    return torch.tensor(picks, dtype=torch.int8).reshape(shape), scheme, rows


@given(codes_and_scheme())
def test_unpack_inverts_pack(case):
    codes, scheme, rows = case
    packed = pack(codes, scheme, rows=rows)
    per_row = codes.numel() // rows
    assert packed.dtype == torch.uint8 and tuple(packed.shape) == (rows, packed_bytes(per_row, scheme))
    assert torch.equal(unpack(packed, scheme, codes.shape), codes)


@pytest.mark.parametrize("n", [1, 7, 8, 9, 15, 16, 17, 1001])
def test_bits1_size_and_layout_match_numpy_packbits(n):
    np = pytest.importorskip("numpy")
    codes = torch.where(torch.rand(n) < 0.5, 1, -1).to(torch.int8)
    packed = pack(codes, "bits1")
    assert packed.shape == (1, math.ceil(n / 8))
    assert packed[0].numpy().tolist() == np.packbits((codes > 0).numpy()).tolist()


@pytest.mark.parametrize("scheme, per_byte", [("bits2", 4), ("base3", 5)])
@pytest.mark.parametrize("n", [1, 4, 5, 6, 19, 20, 21])
def test_ternary_sizes(scheme, per_byte, n):
    codes = torch.randint(-1, 2, (3, n), dtype=torch.int8)
    packed = pack(codes, scheme, rows=3)
    assert packed.shape == (3, math.ceil(n / per_byte))
    assert torch.equal(unpack(packed, scheme, codes.shape), codes)


def test_base3_is_smaller_than_bits2():
    codes = torch.randint(-1, 2, (1, 1000), dtype=torch.int8)
    assert pack(codes, "base3").numel() == 200 and pack(codes, "bits2").numel() == 250


def test_sign_zero_convention_survives_packing():
    from quantswap.methods.xnor import XnorWeight

    w = torch.tensor([[0.0, -0.0, 1e-30, -1e-30, -2.0, 3.0, 0.0, 0.0, 0.0]])
    codes, _ = XnorWeight().encode(w)
    assert codes.tolist() == [[1, 1, 1, -1, -1, 1, 1, 1, 1]]  # sign(0) = +1, -0.0 included
    assert torch.equal(unpack(pack(codes, "bits1"), "bits1", codes.shape), codes)


def test_bad_input_is_refused_with_a_reason():
    with pytest.raises(PackingError, match="binary codes"):
        pack(torch.zeros(8, dtype=torch.int8), "bits1")
    with pytest.raises(PackingError, match="ternary codes"):
        pack(torch.full((4,), 2, dtype=torch.int8), "bits2")
    with pytest.raises(PackingError, match="int8"):
        pack(torch.ones(8), "bits1")
    with pytest.raises(PackingError, match="unknown packing scheme 'bits3'"):
        pack(torch.ones(8, dtype=torch.int8), "bits3")
    with pytest.raises(PackingError, match=r"cannot hold codes of shape \(17,\)"):
        unpack(torch.zeros(1, 2, dtype=torch.uint8), "bits1", (17,))
    with pytest.raises(PackingError, match="corrupt"):
        unpack(torch.full((1, 1), 243, dtype=torch.uint8), "base3", (5,))
    with pytest.raises(PackingError, match="corrupt"):
        unpack(torch.full((1, 1), 255, dtype=torch.uint8), "bits2", (4,))
