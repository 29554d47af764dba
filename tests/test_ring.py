"""Elementwise ring ops (pysmpc.ring) against their Python-int twins."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pysmpc import ring
from pysmpc.kernels import reference as ref

EDGE = [0, 1, 2, 2**63 - 1, 2**63, 2**63 + 1, 2**64 - 2, 2**64 - 1]
elements = st.one_of(st.sampled_from(EDGE), st.integers(0, 2**64 - 1))
shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=7)
scalars = st.one_of(st.sampled_from(EDGE + [-1, -(2**63), 2**64, 3 * 2**64 + 5]), st.integers(-(2**70), 2**70))


def u64_arrays(shape=shapes):
    return hnp.arrays(np.uint64, shape, elements=elements)


def layouts(a: np.ndarray):
    """Same values as a, in several memory layouts."""
    yield "C", a
    yield "F", a.copy(order="F")
    if a.ndim:
        big = np.zeros(tuple(2 * s + 1 for s in a.shape), np.uint64)
        view = big[tuple(slice(1, None, 2) for _ in a.shape)]
        view[...] = a
        yield "strided", view
        yield "reversed", np.ascontiguousarray(a[::-1])[::-1]


BINARY = [
    (ring.add, ref.ring_add),
    (ring.sub, ref.ring_sub),
    (ring.mul, ref.ring_mul),
]


def check_eq(got, want, *inputs):
    assert got.dtype == np.uint64
    assert got.shape == want.shape
    assert np.array_equal(got, want), f"inputs={inputs!r}\ngot={got!r}\nwant={want!r}"


@pytest.mark.parametrize("op,twin", BINARY, ids=["add", "sub", "mul"])
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_binary_matches_reference(op, twin, data):
    a = data.draw(u64_arrays())
    b = data.draw(u64_arrays(st.just(a.shape)))
    want = twin(a, b)
    for (la, va), (lb, vb) in zip(layouts(a), layouts(b)):
        ca, cb = va.copy(), vb.copy()
        check_eq(op(va, vb), want, la, lb, a, b)
        assert np.array_equal(va, ca) and np.array_equal(vb, cb), "input modified"


@pytest.mark.parametrize("op,twin", BINARY, ids=["add", "sub", "mul"])
@settings(max_examples=60, deadline=None)
@given(a=u64_arrays(), s=scalars)
def test_binary_scalar_matches_reference(op, twin, a, s):
    want = twin(a, s % 2**64)
    for layout, va in layouts(a):
        ca = va.copy()
        check_eq(op(va, s), want, layout, a, s)
        check_eq(op(va, np.uint64(s % 2**64)), want, layout, a, s)
        assert np.array_equal(va, ca), "input modified"


@settings(max_examples=60, deadline=None)
@given(a=u64_arrays())
def test_neg_matches_reference(a):
    for layout, va in layouts(a):
        ca = va.copy()
        check_eq(ring.neg(va), ref.ring_neg(a), layout, a)
        assert np.array_equal(va, ca)


@pytest.mark.parametrize(
    "op,twin",
    [(ring.rshift_arith, ref.ring_rshift_arith), (ring.rshift_logical, ref.ring_rshift_logical)],
    ids=["arith", "logical"],
)
@settings(max_examples=60, deadline=None)
@given(a=u64_arrays(), k=st.one_of(st.sampled_from([0, 1, 31, 32, 62, 63]), st.integers(0, 63)))
def test_shifts_match_reference(op, twin, a, k):
    for layout, va in layouts(a):
        ca = va.copy()
        check_eq(op(va, k), twin(a, k), layout, a, k)
        assert np.array_equal(va, ca)


def test_rshift_arith_edge_values():
    a = np.array(EDGE, np.uint64)
    got = ring.rshift_arith(a, 1)
    signed = a.view(np.int64) >> 1
    assert np.array_equal(got, signed.view(np.uint64))
    assert ring.rshift_arith(np.array([2**64 - 1], np.uint64), 63)[0] == 2**64 - 1
    assert ring.rshift_arith(np.array([2**63], np.uint64), 63)[0] == 2**64 - 1
    assert ring.rshift_logical(np.array([2**63], np.uint64), 63)[0] == 1


@pytest.mark.parametrize("op", [ring.add, ring.sub, ring.mul])
def test_in_place(op):
    rng = np.random.default_rng(1)
    a = rng.integers(0, 2**64, 1000, dtype=np.uint64, endpoint=False)
    b = rng.integers(0, 2**64, 1000, dtype=np.uint64, endpoint=False)
    want = op(a, b)
    a2, b2 = a.copy(), b.copy()
    assert op(a2, b, out=a2) is a2 and np.array_equal(a2, want)
    assert op(a, b2, out=b2) is b2 and np.array_equal(b2, want)
    a3 = a.copy()
    assert op(a3, 5, out=a3) is a3 and np.array_equal(a3, op(a, 5))
    a4 = a.copy()
    assert ring.neg(a4, out=a4) is a4 and np.array_equal(a4, ring.neg(a))
    a5 = a.copy()
    ring.rshift_arith(a5, 7, out=a5)
    assert np.array_equal(a5, ring.rshift_arith(a, 7))


def test_out_non_contiguous_and_overlapping():
    a = np.arange(12, dtype=np.uint64).reshape(3, 4)
    b = np.full((3, 4), 2**64 - 1, np.uint64)
    out = np.zeros((4, 3), np.uint64).T  # F-ordered view
    assert ring.add(a, b, out=out) is out
    assert np.array_equal(out, a - np.uint64(1))
    # out overlaps a shifted view of the input: must still be exact.
    x = np.arange(10, dtype=np.uint64)
    want = x[:-1] + x[1:]
    ring.add(x[:-1], x[1:], out=x[1:])
    assert np.array_equal(x[1:], want)


def test_validation_messages():
    a = np.zeros((2, 3), np.uint64)
    with pytest.raises(TypeError, match="uint64"):
        ring.add(a.astype(np.int64), a)
    with pytest.raises(TypeError, match="uint64"):
        ring.mul(a, a.astype(np.float64))
    with pytest.raises(TypeError, match="uint64"):
        ring.neg([1, 2, 3])
    with pytest.raises(TypeError):
        ring.mul(a, 1.5)
    with pytest.raises(ValueError, match=r"\(2, 3\) vs \(3, 2\)"):
        ring.sub(a, a.T)
    with pytest.raises(ValueError, match="out has shape"):
        ring.add(a, a, out=np.zeros((3,), np.uint64))
    with pytest.raises(TypeError, match="uint64"):
        ring.add(a, a, out=np.zeros((2, 3), np.int64))
    with pytest.raises(ValueError, match=r"\[0, 63\]"):
        ring.rshift_arith(a, 64)
    with pytest.raises(ValueError, match=r"\[0, 63\]"):
        ring.rshift_logical(a, -1)


def test_read_only_inputs_accepted():
    a = np.arange(5, dtype=np.uint64)
    a.flags.writeable = False
    assert np.array_equal(ring.add(a, a), a * np.uint64(2))
    assert np.array_equal(ring.mul(a, 3), a * np.uint64(3))
