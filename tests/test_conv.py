"""im2col and conv2d (pysmpc.ring) against direct-loop Python-int twins."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pysmpc import ring
from pysmpc.kernels import reference as ref


def rand(rng, *shape):
    return rng.integers(0, 2**64, shape, dtype=np.uint64, endpoint=False)


@pytest.mark.parametrize("padding", ["valid", "same"])
@pytest.mark.parametrize("stride", [1, 2, (1, 2)])
@pytest.mark.parametrize("n,h,w,c,kh,kw,o", [(2, 7, 6, 3, 3, 3, 4), (3, 5, 5, 1, 2, 2, 2), (1, 4, 9, 2, 1, 3, 5)])
def test_conv2d_matches_direct_loop(n, h, w, c, kh, kw, o, stride, padding):
    rng = np.random.default_rng(n * 100 + h * 10 + kh)
    x, wt = rand(rng, n, h, w, c), rand(rng, kh, kw, c, o)
    x.flat[0], wt.flat[0] = 2**64 - 1, 2**63
    xc, wc = x.copy(), wt.copy()
    s = stride if isinstance(stride, tuple) else (stride, stride)
    got = ring.conv2d(x, wt, stride=stride, padding=padding)
    want = ref.ring_conv2d(x, wt, s, padding)
    assert got.dtype == np.uint64 and got.shape == want.shape
    assert np.array_equal(got, want), f"x{x.shape} w{wt.shape} stride={stride} padding={padding}"
    assert np.array_equal(x, xc) and np.array_equal(wt, wc), "input modified"
    cols = ring.im2col(x, kh, kw, stride=stride, padding=padding)
    assert np.array_equal(cols, ref.ring_im2col(x, kh, kw, s, padding))


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 3),
    h=st.integers(1, 9),
    w=st.integers(1, 9),
    c=st.integers(1, 4),
    kh=st.integers(1, 4),
    kw=st.integers(1, 4),
    o=st.integers(1, 5),
    sh=st.integers(1, 3),
    sw=st.integers(1, 3),
    padding=st.sampled_from(["valid", "same"]),
    seed=st.integers(0, 2**32 - 1),
)
def test_conv2d_random_shapes(n, h, w, c, kh, kw, o, sh, sw, padding, seed):
    if padding == "valid" and (kh > h or kw > w):
        with pytest.raises(ValueError, match="larger than input"):
            ring.conv2d(np.zeros((n, h, w, c), np.uint64), np.zeros((kh, kw, c, o), np.uint64), padding="valid")
        return
    rng = np.random.default_rng(seed)
    x, wt = rand(rng, n, h, w, c), rand(rng, kh, kw, c, o)
    got = ring.conv2d(x, wt, stride=(sh, sw), padding=padding)
    assert np.array_equal(got, ref.ring_conv2d(x, wt, (sh, sw), padding))


def test_conv2d_non_contiguous_inputs_and_chunks():
    rng = np.random.default_rng(11)
    x = rand(rng, 5, 8, 8, 3)
    wt = rand(rng, 3, 3, 3, 4)
    want = ref.ring_conv2d(x, wt, (1, 1), "same")
    x_nc = np.ascontiguousarray(x.transpose(0, 3, 1, 2)).transpose(0, 2, 3, 1)
    w_nc = np.asfortranarray(wt)
    assert np.array_equal(ring.conv2d(x_nc, w_nc, padding="same"), want)
    # Several images per im2col chunk, and a last partial chunk.
    import pysmpc.ring as ring_mod

    saved = ring_mod._CONV_CHUNK_ROWS
    try:
        ring_mod._CONV_CHUNK_ROWS = 2 * 64
        assert np.array_equal(ring.conv2d(x, wt, padding="same"), want)
    finally:
        ring_mod._CONV_CHUNK_ROWS = saved


def test_mnist_shapes_batch():
    # The seed model's layers at batch 4, against numpy uint64 matmul on the
    # reference im2col (the Python-int conv twin is slow at this size).
    rng = np.random.default_rng(2)
    for (h, c, o) in [(28, 1, 16), (13, 16, 32), (5, 32, 64)]:
        x, wt = rand(rng, 4, h, h, c), rand(rng, 3, 3, c, o)
        got = ring.conv2d(x, wt)
        cols = ring.im2col(x, 3, 3)
        assert np.array_equal(cols, ref.ring_im2col(x, 3, 3))
        want = (cols @ wt.reshape(-1, o)).reshape(4, h - 2, h - 2, o)
        assert np.array_equal(got, want)


@pytest.mark.parametrize(
    "in_hw,k_hw,stride,padding,expected",
    [
        ((28, 28), (3, 3), 1, "valid", (26, 26, 0, 0)),
        ((26, 26), (2, 2), 2, "valid", (13, 13, 0, 0)),
        ((13, 13), (2, 2), 2, "valid", (6, 6, 0, 0)),
        ((28, 28), (3, 3), 1, "same", (28, 28, 1, 1)),
        ((5, 6), (3, 3), 2, "same", (3, 3, 1, 0)),  # pad_total 2 and 1
        ((4, 4), (2, 2), 2, "same", (2, 2, 0, 0)),
        ((7, 7), (4, 4), (1, 3), "SAME", (7, 3, 1, 1)),  # pad 3 -> 1 before, 2 after
    ],
)
def test_conv_output_shape(in_hw, k_hw, stride, padding, expected):
    assert ring.conv_output_shape(in_hw, k_hw, stride, padding) == expected


def test_empty_and_validation():
    assert ring.conv2d(np.zeros((0, 5, 5, 2), np.uint64), np.ones((3, 3, 2, 4), np.uint64)).shape == (0, 3, 3, 4)
    got = ring.conv2d(np.zeros((2, 5, 5, 0), np.uint64), np.ones((3, 3, 0, 4), np.uint64))
    assert got.shape == (2, 3, 3, 4) and not got.any()
    assert ring.im2col(np.zeros((0, 5, 5, 2), np.uint64), 3, 3).shape == (0, 18)
    x = np.zeros((1, 5, 5, 2), np.uint64)
    with pytest.raises(TypeError, match="uint64"):
        ring.conv2d(x.astype(np.int64), np.ones((3, 3, 2, 4), np.uint64))
    with pytest.raises(ValueError, match="channels"):
        ring.conv2d(x, np.ones((3, 3, 3, 4), np.uint64))
    with pytest.raises(ValueError, match="NHWC"):
        ring.conv2d(x[0], np.ones((3, 3, 2, 4), np.uint64))
    with pytest.raises(ValueError, match="padding"):
        ring.conv2d(x, np.ones((3, 3, 2, 4), np.uint64), padding="full")
    with pytest.raises(ValueError, match="positive"):
        ring.conv2d(x, np.ones((3, 3, 2, 4), np.uint64), stride=0)
