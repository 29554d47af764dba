"""Fused protocol finishing kernels against their NumPy formulas."""

import numpy as np
import pytest

from pysmpc.kernels.bits import unpack_bits
from pysmpc.kernels import reference
from pysmpc.kernels.finish import conv2d_finish, select_finish, truncate_finish

_U64 = np.uint64


def _words(rng, shape):
    return rng.integers(0, 2**64, shape, dtype=np.uint64)


@pytest.mark.parametrize("n,r", [(130, 3), (130, 1), (128, 1), (1, 1)])  # r = 1: the word-at-a-time path (relu)
def test_select_finish_is_beta_x_plus_one_minus_two_beta_x_rho(n, r):
    rng = np.random.default_rng(0)
    words = (n + 63) // 64
    beta_mine, beta_theirs = _words(rng, words), _words(rng, words)
    e_mine, e_theirs, a_rho, x = (_words(rng, (n, r)) for _ in range(4))
    rho = rng.integers(0, 2, n).astype(np.uint64)
    out = np.empty((n, r), np.uint64)
    select_finish(beta_mine, beta_theirs, e_mine, e_theirs, rho, a_rho, x, out)
    beta = unpack_bits(beta_mine ^ beta_theirs, n)[:, None]
    x_rho = (e_mine + e_theirs) * rho[:, None] + a_rho
    np.testing.assert_array_equal(out, beta * x + (_U64(1) - _U64(2) * beta) * x_rho)


def test_truncate_finish_matches_the_formula_on_both_parties():
    rng = np.random.default_rng(1)
    c, r_hi = _words(rng, (4, 5)), _words(rng, (4, 5))
    r_msb = rng.integers(0, 2, (4, 5)).astype(np.uint64)
    f, offset = 16, _U64((1 << 62) >> 16)
    for public_part in (True, False):
        out = np.empty_like(c)
        truncate_finish(c, r_msb, r_hi, f, public_part, offset, out)
        expect = ((_U64(1) - (c >> _U64(63))) << _U64(64 - f)) * r_msb - r_hi
        if public_part:
            expect += (c >> _U64(f)) - offset
        np.testing.assert_array_equal(out, expect)


def test_conv2d_finish_is_the_convolution_plus_the_folded_term():
    rng = np.random.default_rng(2)
    for x_shape, w_shape, stride in (((2, 7, 6, 3), (3, 2, 3, 4), (1, 1)), ((1, 9, 9, 2), (4, 4, 2, 5), (2, 3))):
        e, w = _words(rng, x_shape), _words(rng, w_shape)
        expect_shape = reference.ring_conv2d(e, w, stride).shape
        ac = _words(rng, expect_shape)
        e_before, w_before, ac_before = e.copy(), w.copy(), ac.copy()
        out = np.empty(expect_shape, np.uint64)
        conv2d_finish(e, w, stride[0], stride[1], ac, out)
        np.testing.assert_array_equal(out, reference.ring_conv2d(e, w, stride) + ac,
                                      err_msg=f"x {x_shape}, w {w_shape}, stride {stride}")
        for got, before in ((e, e_before), (w, w_before), (ac, ac_before)):
            np.testing.assert_array_equal(got, before)
