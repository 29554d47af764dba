"""Tests for pysmpc.kernels.pool.sum_pool2d against its Python-int twin."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pysmpc.kernels.pool import sum_pool2d
from pysmpc.kernels.reference_bits import reference_sum_pool2d

EDGES = [0, 1, 2**63 - 1, 2**63, 2**64 - 1]
U64 = st.one_of(st.sampled_from(EDGES), st.integers(0, 2**64 - 1))
LAYOUTS = ["C", "F", "strided", "reversed", "transposed"]


def as_layout(a: np.ndarray, layout: str) -> np.ndarray:
    """Return an array equal to ``a`` but stored in the named memory layout."""
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
    if layout == "transposed":
        axes = tuple(reversed(range(a.ndim)))
        return np.ascontiguousarray(a.transpose(axes)).transpose(axes)
    raise AssertionError(layout)


def check_pool(x, k, stride, parallel=None):
    before = x.copy()
    got = sum_pool2d(x, k, stride, parallel=parallel)
    want = reference_sum_pool2d(np.ascontiguousarray(x), k, stride)
    assert np.array_equal(x, before), f"input modified: shape={x.shape}, k={k}, stride={stride}"
    assert got.dtype == np.uint64 and got.flags.c_contiguous
    assert got.shape == want.shape, f"x.shape={x.shape}, k={k}, stride={stride}"
    assert np.array_equal(got, want), (
        f"x.shape={x.shape}, k={k}, stride={stride}, parallel={parallel}\n"
        f"x={x!r}\ngot={got!r}\nwant={want!r}"
    )


@settings(max_examples=80, deadline=None)
@given(
    data=st.data(),
    shape=st.tuples(
        st.integers(0, 3), st.integers(0, 9), st.integers(0, 9), st.integers(0, 4)
    ),
    k=st.integers(1, 4),
    stride=st.one_of(st.none(), st.integers(1, 4)),
    layout=st.sampled_from(LAYOUTS),
    parallel=st.sampled_from([None, False, True]),
)
def test_matches_reference(data, shape, k, stride, layout, parallel):
    x = data.draw(hnp.arrays(np.uint64, shape, elements=U64))
    check_pool(as_layout(x, layout), k, stride, parallel)


@pytest.mark.parametrize("value", EDGES)
@pytest.mark.parametrize("k", [1, 2, 3])
def test_edge_values_wrap(value, k):
    x = np.full((2, 6, 6, 3), value, dtype=np.uint64)
    got = sum_pool2d(x, k)
    assert np.all(got == np.uint64((k * k * value) % 2**64)), f"value={value}, k={k}"


@pytest.mark.parametrize("parallel", [False, True])
def test_large_input_both_paths(parallel):
    rng = np.random.default_rng(7)  # test data only; kernels draw nothing
    x = rng.integers(0, 2**64, size=(8, 26, 26, 16), dtype=np.uint64, endpoint=False)
    check_pool(x, 2, None, parallel)
    check_pool(x[:, ::2], 3, 1, parallel)


def test_default_stride_is_k():
    x = np.arange(2 * 8 * 8 * 3, dtype=np.uint64).reshape(2, 8, 8, 3)
    assert np.array_equal(sum_pool2d(x, 2), sum_pool2d(x, 2, 2))
    assert sum_pool2d(x, 2).shape == (2, 4, 4, 3)
    assert sum_pool2d(x, 3).shape == (2, 2, 2, 3)


def test_linear_on_shares():
    # Pooling each additive share pools the secret: the property the
    # avg_pool2d protocol relies on to stay local.
    rng = np.random.default_rng(3)
    shares = [rng.integers(0, 2**64, size=(3, 10, 10, 4), dtype=np.uint64) for _ in range(3)]
    secret = shares[0] + shares[1] + shares[2]
    pooled = [sum_pool2d(s, 2) for s in shares]
    assert np.array_equal(pooled[0] + pooled[1] + pooled[2], sum_pool2d(secret, 2))


def test_out_buffer_is_used():
    x = np.arange(1 * 4 * 4 * 2, dtype=np.uint64).reshape(1, 4, 4, 2)
    out = np.full((1, 2, 2, 2), 99, dtype=np.uint64)
    got = sum_pool2d(x, 2, out=out)
    assert got is out
    assert np.array_equal(out, reference_sum_pool2d(x, 2))


def test_window_larger_than_input():
    x = np.ones((2, 2, 5, 3), dtype=np.uint64)
    assert sum_pool2d(x, 3).shape == (2, 0, 1, 3)


@pytest.mark.parametrize(
    "x, k, stride, out, exc, match",
    [
        (np.zeros((1, 4, 4, 1), np.int64), 2, None, None, TypeError, "uint64"),
        (np.zeros((4, 4, 1), np.uint64), 2, None, None, ValueError, "rank 4"),
        (np.zeros((1, 4, 4, 1), np.uint64), 0, None, None, ValueError, "k must be >= 1"),
        (np.zeros((1, 4, 4, 1), np.uint64), 2, 0, None, ValueError, "stride must be >= 1"),
        (np.zeros((1, 4, 4, 1), np.uint64), 2.0, None, None, TypeError, "k must be an int"),
        (
            np.zeros((1, 4, 4, 1), np.uint64), 2, None,
            np.zeros((1, 3, 3, 1), np.uint64), ValueError, "expected",
        ),
        (
            np.zeros((1, 4, 4, 1), np.uint64), 2, None,
            np.zeros((1, 2, 2, 1), np.int64), TypeError, "out must be",
        ),
    ],
)
def test_bad_arguments(x, k, stride, out, exc, match):
    with pytest.raises(exc, match=match):
        sum_pool2d(x, k, stride, out=out)


def test_out_overlapping_input_rejected():
    x = np.zeros((1, 2, 2, 1), np.uint64)
    with pytest.raises(ValueError, match="overlap"):
        sum_pool2d(x, 1, out=x)
