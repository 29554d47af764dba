"""Tests for pysmpc.kernels.bits against the Python-int twins."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pysmpc.kernels.bits import (
    and_finish,
    n_words,
    pack_bitplanes,
    pack_bits,
    popcount,
    unpack_bits,
)
from pysmpc.kernels.reference_bits import (
    reference_and_finish,
    reference_pack_bitplanes,
    reference_pack_bits,
    reference_popcount,
    reference_unpack_bits,
)

EDGES = [0, 1, 2**63 - 1, 2**63, 2**64 - 1]
U64 = st.one_of(st.sampled_from(EDGES), st.integers(0, 2**64 - 1))
LAYOUTS = ["C", "F", "strided", "reversed"]


def as_layout(a: np.ndarray, layout: str) -> np.ndarray:
    """Return an array equal to ``a`` but stored in the named memory layout."""
    if a.ndim == 0:
        return a  # NumPy's layout helpers would promote 0-d to 1-d
    if layout == "C":
        return np.ascontiguousarray(a)
    if layout == "F":
        return np.asfortranarray(a)
    if layout == "strided":
        big = np.zeros((2 * a.shape[0] + 1,) + a.shape[1:], dtype=a.dtype)
        big[1::2] = a
        return big[1::2]
    if layout == "reversed":
        return np.ascontiguousarray(a[::-1])[::-1]
    raise AssertionError(layout)


def u64_vectors(max_n=300):
    return st.integers(0, max_n).flatmap(lambda n: hnp.arrays(np.uint64, n, elements=U64))


def bit_ranges():
    return st.integers(0, 64).flatmap(lambda lo: st.tuples(st.just(lo), st.integers(lo, 64)))


def random_u64(rng, shape):
    return rng.integers(0, 2**64, size=shape, dtype=np.uint64)


# ----------------------------------------------------------- pack_bitplanes


@settings(max_examples=120, deadline=None)
@given(
    x=u64_vectors(),
    lohi=bit_ranges(),
    layout=st.sampled_from(LAYOUTS),
    parallel=st.sampled_from([None, False, True]),
)
def test_pack_bitplanes_matches_reference(x, lohi, layout, parallel):
    lo, hi = lohi
    xv = as_layout(x, layout)
    before = xv.copy()
    got = pack_bitplanes(xv, lo, hi, parallel=parallel)
    want = reference_pack_bitplanes(x, lo, hi)
    assert np.array_equal(xv, before), "input modified"
    assert got.shape == (hi - lo, n_words(x.size)) and got.dtype == np.uint64
    assert np.array_equal(got, want), f"n={x.size}, lo={lo}, hi={hi}, x={x!r}"


@pytest.mark.parametrize("n", [0, 1, 63, 64, 65, 127, 128, 1000])
@pytest.mark.parametrize("lo, hi", [(0, 64), (0, 1), (63, 64), (5, 13), (0, 7), (0, 8), (7, 7)])
def test_pack_bitplanes_all_ones_padding_zero(n, lo, hi):
    x = np.full(n, 2**64 - 1, dtype=np.uint64)
    got = pack_bitplanes(x, lo, hi)
    assert np.array_equal(got, reference_pack_bitplanes(x, lo, hi))
    assert popcount(got) == n * (hi - lo), f"padding bits set: n={n}, lo={lo}, hi={hi}"


def test_pack_bitplanes_large_parallel_equals_serial():
    rng = np.random.default_rng(11)
    x = random_u64(rng, 300_001)
    full = pack_bitplanes(x, 0, 64, parallel=True)
    assert np.array_equal(full, pack_bitplanes(x, 0, 64, parallel=False))
    assert np.array_equal(pack_bitplanes(x, 2, 5, parallel=True), full[2:5])
    # Spot-check against the twin on a slice that crosses word boundaries.
    assert np.array_equal(full[:, 100:103], reference_pack_bitplanes(x[6400:6592], 0, 64))
    # Bit planes reassemble the elements.
    back = np.zeros(x.size, dtype=np.uint64)
    for j in range(64):
        back |= unpack_bits(full[j], x.size) << np.uint64(j)
    assert np.array_equal(back, x)


@pytest.mark.parametrize(
    "args, exc, match",
    [
        ((np.zeros(4, np.int64), 0, 1), TypeError, "uint64"),
        ((np.zeros((2, 2), np.uint64), 0, 1), ValueError, "1-D"),
        ((np.zeros(4, np.uint64), 3, 2), ValueError, "lo <= hi"),
        ((np.zeros(4, np.uint64), 0, 65), ValueError, "hi <= 64"),
        ((np.zeros(4, np.uint64), -1, 2), ValueError, "0 <= lo"),
    ],
)
def test_pack_bitplanes_bad_arguments(args, exc, match):
    with pytest.raises(exc, match=match):
        pack_bitplanes(*args)


# ------------------------------------------------------ pack / unpack bits


@settings(max_examples=80, deadline=None)
@given(
    bits=st.integers(0, 300).flatmap(lambda n: hnp.arrays(np.uint8, n, elements=st.integers(0, 1))),
    dtype=st.sampled_from([np.bool_, np.uint8, np.uint64, np.int32]),
    layout=st.sampled_from(LAYOUTS),
)
def test_pack_bits_matches_reference_and_round_trips(bits, dtype, layout):
    b = as_layout(bits.astype(dtype), layout)
    before = b.copy()
    packed = pack_bits(b)
    assert np.array_equal(b, before), "input modified"
    assert np.array_equal(packed, reference_pack_bits(bits))
    assert packed.shape == (n_words(bits.size),)
    assert np.array_equal(unpack_bits(packed, bits.size), bits.astype(np.uint64))


@settings(max_examples=60, deadline=None)
@given(plane=u64_vectors(6), extra=st.integers(0, 63), layout=st.sampled_from(LAYOUTS))
def test_unpack_bits_matches_reference_ignores_padding(plane, extra, layout):
    n = max(0, 64 * plane.size - extra)
    plane = plane[: n_words(n)]
    pv = as_layout(plane, layout)
    got = unpack_bits(pv, n)
    assert np.array_equal(got, reference_unpack_bits(plane, n))
    assert np.array_equal(pv, plane)


def test_pack_bits_rejects_non_bits():
    with pytest.raises(ValueError, match="not 0 or 1"):
        pack_bits(np.array([0, 1, 2], dtype=np.uint8))
    with pytest.raises(ValueError, match="0 or 1"):
        pack_bits(np.array([0, -1], dtype=np.int64))
    with pytest.raises(TypeError, match="dtype float64"):
        pack_bits(np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="1-D"):
        pack_bits(np.zeros((2, 2), np.uint8))


def test_unpack_bits_checks_word_count():
    with pytest.raises(ValueError, match="65 bits has 2 words, got 1"):
        unpack_bits(np.zeros(1, np.uint64), 65)
    with pytest.raises(ValueError, match="non-negative"):
        unpack_bits(np.zeros(0, np.uint64), -1)


# --------------------------------------------------------------- and_finish


@settings(max_examples=60, deadline=None)
@given(
    data=st.data(),
    shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5),
    party0=st.booleans(),
    layout=st.sampled_from(LAYOUTS),
)
def test_and_finish_matches_reference(data, shape, party0, layout):
    arrays = [data.draw(hnp.arrays(np.uint64, shape, elements=U64)) for _ in range(5)]
    views = [as_layout(a, layout) for a in arrays]
    copies = [v.copy() for v in views]
    got = and_finish(*views, party0)
    for v, c in zip(views, copies):
        assert np.array_equal(v, c), "input modified"
    assert got.shape == shape
    assert np.array_equal(got, reference_and_finish(*arrays, party0)), f"shape={shape}"


def test_and_finish_computes_and_of_xor_shared_bits():
    # Three parties XOR-share x, y and a triple (u, v, w = u & v); opening
    # d = x ^ u, e = y ^ v and finishing locally must give shares of x & y.
    rng = np.random.default_rng(5)
    shape = (3, 17)
    x, y, u, v = (random_u64(rng, shape) for _ in range(4))
    w = u & v

    def share(secret):
        s0, s1 = random_u64(rng, shape), random_u64(rng, shape)
        return [s0, s1, secret ^ s0 ^ s1]

    us, vs, ws = share(u), share(v), share(w)
    d_open, e_open = x ^ u, y ^ v
    z = [and_finish(d_open, e_open, us[p], vs[p], ws[p], party0=(p == 0)) for p in range(3)]
    assert np.array_equal(z[0] ^ z[1] ^ z[2], x & y)


def test_and_finish_out_may_alias_an_input():
    rng = np.random.default_rng(6)
    d, e, u, v, w = (random_u64(rng, (4, 70)) for _ in range(5))
    want = reference_and_finish(d, e, u, v, w, True)
    got = and_finish(d, e, u, v, w, True, out=w)
    assert got is w
    assert np.array_equal(w, want)


def test_and_finish_bad_arguments():
    a = np.zeros(3, np.uint64)
    with pytest.raises(ValueError, match="shape"):
        and_finish(a, a, a, a, np.zeros(4, np.uint64), True)
    with pytest.raises(TypeError, match="u must be a uint64"):
        and_finish(a, a, a.astype(np.int64), a, a, True)
    with pytest.raises(ValueError, match="C-contiguous"):
        and_finish(a, a, a, a, a, True, out=np.zeros(6, np.uint64)[::2])


# ----------------------------------------------------------------- popcount


@settings(max_examples=60, deadline=None)
@given(
    shape=hnp.array_shapes(min_dims=0, max_dims=2, min_side=0, max_side=70),
    data=st.data(),
    layout=st.sampled_from(LAYOUTS),
)
def test_popcount_matches_reference(shape, data, layout):
    words = data.draw(hnp.arrays(np.uint64, shape, elements=U64))
    assert popcount(as_layout(words, layout)) == reference_popcount(words)


def test_popcount_edges():
    assert popcount(np.array(EDGES, dtype=np.uint64)) == 0 + 1 + 63 + 1 + 64
    assert popcount(np.zeros(0, np.uint64)) == 0
    with pytest.raises(TypeError):
        popcount(np.zeros(2, np.int64))
