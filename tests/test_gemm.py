"""Ring GEMM (pysmpc.ring.matmul) against the Python-int twin, per kernel."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pysmpc import ring
from pysmpc.kernels import _ring
from pysmpc.kernels import reference as ref

EDGE = [0, 1, 2, 2**63 - 1, 2**63, 2**63 + 1, 2**64 - 1]
elements = st.one_of(st.sampled_from(EDGE), st.integers(0, 2**64 - 1))
KERNELS = ["scalar", "avx2", "avx512"]


def rand(rng, *shape):
    return rng.integers(0, 2**64, shape, dtype=np.uint64, endpoint=False)


@pytest.fixture(params=KERNELS)
def kernel(request):
    """Force one GEMM micro-kernel for the test (skipped if the CPU lacks it)."""
    name = request.param
    if not _ring.gemm_kernel_available(name):
        pytest.skip(f"CPU cannot run the {name} kernel")
    before = _ring.gemm_kernel()
    _ring.set_gemm_kernel(name)
    assert ring.gemm_kernel() == name
    yield name
    _ring.set_gemm_kernel(before)


@pytest.fixture
def threads():
    before = ring.get_num_threads()
    yield
    ring.set_num_threads(before)


def variants(a: np.ndarray):
    """Same matrix in several layouts: C, F, transposed view, strided view."""
    yield "C", a
    yield "F", np.asfortranarray(a)
    yield "T", np.ascontiguousarray(a.T).T
    big = np.zeros((2 * a.shape[0] + 1, 3 * a.shape[1] + 2), np.uint64)
    view = big[1::2, 2::3]
    view[...] = a
    yield "strided", view
    rows = np.zeros((a.shape[0], a.shape[1] + 5), np.uint64)
    rows[:, 3 : 3 + a.shape[1]] = a
    yield "padded-rows", rows[:, 3 : 3 + a.shape[1]]


dims = st.one_of(st.sampled_from([0, 1, 2, 3, 4, 5, 8, 9, 17]), st.integers(0, 24))


# The kernel fixture deliberately holds for all generated examples.
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_matmul_matches_reference(kernel, data):
    m, k, n = data.draw(dims), data.draw(dims), data.draw(dims)
    a = data.draw(hnp.arrays(np.uint64, (m, k), elements=elements))
    b = data.draw(hnp.arrays(np.uint64, (k, n), elements=elements))
    want = ref.ring_matmul(a, b)
    for (la, va), (lb, vb) in zip(variants(a), variants(b)):
        ca, cb = va.copy(), vb.copy()
        got = ring.matmul(va, vb)
        assert got.dtype == np.uint64 and got.shape == (m, n)
        assert np.array_equal(got, want), f"kernel={kernel} a({la})={a!r} b({lb})={b!r}"
        assert np.array_equal(va, ca) and np.array_equal(vb, cb), "input modified"


@pytest.mark.parametrize(
    "m,k,n",
    [(1, 1, 1), (1, 7, 1), (1, 300, 9), (9, 300, 1), (5, 1, 6), (4, 4, 4), (8, 16, 16), (13, 257, 11)],
)
def test_edge_shapes(kernel, m, k, n):
    rng = np.random.default_rng(m * 1000 + k * 10 + n)
    a, b = rand(rng, m, k), rand(rng, k, n)
    a[0, 0], b[0, 0] = 2**64 - 1, 2**63
    assert np.array_equal(ring.matmul(a, b), ref.ring_matmul(a, b))


def test_numpy_uint64_matmul_is_exact_mod_2_64():
    # Justifies numpy as the reference for the large cases below (the
    # Python-int twin is too slow at that size).
    rng = np.random.default_rng(7)
    a, b = rand(rng, 6, 40), rand(rng, 40, 5)
    assert np.array_equal(a @ b, ref.ring_matmul(a, b))


@pytest.mark.parametrize(
    "m,k,n",
    [
        (300, 150, 200),  # row blocks not a multiple of MC, two threads by rows
        (97, 600, 131),  # k spans several KC slices (accumulate path)
        (37, 70, 1001),  # n spans several NC blocks
        (3, 600, 1000),  # too few rows: threads split columns
        (301, 600, 16),  # narrow C: A's rows read in place, the partial row tile packed
    ],
)
@pytest.mark.parametrize("nthreads", [1, 2])
def test_large_blocking_and_threads(kernel, threads, m, k, n, nthreads):
    rng = np.random.default_rng(m + k + n)
    a, b = rand(rng, m, k), rand(rng, k, n)
    ring.set_num_threads(nthreads)
    assert ring.get_num_threads() == nthreads
    got = ring.matmul(a, b)
    assert np.array_equal(got, a @ b), f"kernel={kernel} threads={nthreads} shape={(m, k, n)}"
    got_t = ring.matmul(np.asfortranarray(a), b[:, ::-1])
    assert np.array_equal(got_t, a @ b[:, ::-1])


def test_kernels_agree_bitwise():
    rng = np.random.default_rng(3)
    a, b = rand(rng, 67, 301), rand(rng, 301, 45)
    before = _ring.gemm_kernel()
    results = {}
    try:
        for name in KERNELS:
            if _ring.gemm_kernel_available(name):
                _ring.set_gemm_kernel(name)
                results[name] = ring.matmul(a, b)
    finally:
        _ring.set_gemm_kernel(before)
    first = results.pop("scalar")
    for name, got in results.items():
        assert np.array_equal(got, first), name


def test_empty_and_k_zero():
    a = np.zeros((3, 0), np.uint64)
    b = np.zeros((0, 4), np.uint64)
    got = ring.matmul(a, b)
    assert got.shape == (3, 4) and not got.any()
    out = np.full((3, 4), 7, np.uint64)
    assert ring.matmul(a, b, out=out) is out and not out.any()
    assert ring.matmul(np.zeros((0, 5), np.uint64), np.ones((5, 2), np.uint64)).shape == (0, 2)
    assert ring.matmul(np.ones((2, 5), np.uint64), np.ones((5, 0), np.uint64)).shape == (2, 0)


def test_out_argument():
    rng = np.random.default_rng(5)
    a, b = rand(rng, 20, 30), rand(rng, 30, 10)
    want = a @ b
    out = np.empty((20, 10), np.uint64)
    assert ring.matmul(a, b, out=out) is out and np.array_equal(out, want)
    out_f = np.empty((10, 20), np.uint64).T
    assert ring.matmul(a, b, out=out_f) is out_f and np.array_equal(out_f, want)
    sq = rand(rng, 16, 16)
    want_sq = sq @ sq
    assert ring.matmul(sq, sq, out=sq) is sq and np.array_equal(sq, want_sq)


def test_validation_messages():
    a = np.zeros((2, 3), np.uint64)
    with pytest.raises(TypeError, match="uint64"):
        ring.matmul(a.astype(np.int64), a.T)
    with pytest.raises(ValueError, match=r"\(2, 3\) @ \(2, 3\)"):
        ring.matmul(a, a)
    with pytest.raises(ValueError, match="2-D"):
        ring.matmul(np.zeros(3, np.uint64), a)
    with pytest.raises(ValueError, match="out has shape"):
        ring.matmul(a, a.T, out=np.zeros((3, 3), np.uint64))


def test_kernel_control():
    assert ring.gemm_kernel() in ("scalar", "avx2", "avx512")
    assert _ring.gemm_kernel_available("scalar")
    assert not _ring.gemm_kernel_available("sse9")
    with pytest.raises(ValueError, match="sse9"):
        _ring.set_gemm_kernel("sse9")
    assert ring.get_num_threads() >= 1
