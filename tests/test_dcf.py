"""The DCF (sharing.dcf): both keys' outputs add up to beta * [x < alpha], and its kernels match their NumPy twin."""

import numpy as np
import pytest

from pysmpc.sharing.dcf import (DcfKey, dcf_eval, dcf_eval_reference, dcf_gen, dcf_gen_reference, key_words,
                                pack_public, unpack_public)
from pysmpc.sharing.prg import PRG


def _keys(alpha, width, levels, label=b"dcf-test"):
    prg = PRG(bytes(16)).derive(label)
    n = len(alpha)
    beta = prg.random_u64((n, width))
    roots = prg.random_u64((n, 2)), prg.random_u64((n, 2))
    return beta, roots, dcf_gen(np.asarray(alpha, np.uint64), beta, levels, *roots)


@pytest.mark.parametrize("levels,width", [(1, 1), (4, 2), (6, 3), (3, 5)])
def test_every_threshold_at_every_input(levels, width):
    size = 1 << levels
    alpha = np.repeat(np.arange(size, dtype=np.uint64), size)
    x = np.tile(np.arange(size, dtype=np.uint64), size)
    beta, roots, public = _keys(alpha, width, levels)
    cw, tail = pack_public(*public)  # through the wire format
    k0, k1 = (unpack_public(root, cw, tail, width) for root in roots)
    y = dcf_eval(0, k0, x) + dcf_eval(1, k1, x)
    expected = np.where((x < alpha)[:, None], beta, np.uint64(0))
    bad = np.nonzero((y != expected).any(axis=1))[0]
    assert bad.size == 0, f"L={levels} w={width}: wrong at alpha={alpha[bad[:5]]} x={x[bad[:5]]}"


def test_31_bit_edges_and_random_inputs():
    levels, n = 31, 9000  # more than two of dcf_eval's chunks
    rng = np.random.default_rng(3)
    top = (1 << levels) - 1
    alpha = np.concatenate([[0, 1, top, top, 0, 1 << 30], rng.integers(0, top + 1, n - 6)]).astype(np.uint64)
    x = np.concatenate([[0, 0, top, top - 1, top, (1 << 30) - 1], rng.integers(0, top + 1, n - 6)]).astype(np.uint64)
    x[6:40] = alpha[6:40]  # x == alpha: not below
    x[40:80] = alpha[40:80] - np.uint64(1) * (alpha[40:80] > 0)
    beta, roots, public = _keys(alpha, 3, levels)
    k0, k1 = DcfKey(roots[0], *public), DcfKey(roots[1], *public)
    y = dcf_eval(0, k0, x) + dcf_eval(1, k1, x)
    np.testing.assert_array_equal(y, np.where((x < alpha)[:, None], beta, np.uint64(0)))


def test_kernels_match_the_numpy_twin_and_leave_inputs_alone():
    levels, n, width = 12, 300, 3
    rng = np.random.default_rng(4)
    alpha = rng.integers(0, 1 << levels, n).astype(np.uint64)
    beta, roots, public = _keys(alpha, width, levels)
    twin = dcf_gen_reference(alpha, beta, levels, *roots)
    for got, want in zip(public, twin):
        np.testing.assert_array_equal(got, want)
    key = DcfKey(roots[1], *public)
    x = rng.integers(0, 1 << levels, n).astype(np.uint64)
    before = [a.copy() for a in (key.root, key.cw, key.t_cw, key.leaf, x)]
    np.testing.assert_array_equal(dcf_eval(1, key, x), dcf_eval_reference(1, key, x))
    for a, b in zip(before, (key.root, key.cw, key.t_cw, key.leaf, x)):
        np.testing.assert_array_equal(a, b)


def test_one_key_looks_uniform_whatever_the_threshold():
    # A key's correction words for alpha = 0 everywhere and for random alpha:
    # both pass a chi-square test on their top byte (they are PRG outputs).
    levels, n = 20, 2048
    for alpha in (np.zeros(n, np.uint64), np.random.default_rng(6).integers(0, 1 << levels, n).astype(np.uint64)):
        _, _, (cw, _t, leaf) = _keys(alpha, 2, levels)
        words = np.concatenate([cw.reshape(-1), leaf.reshape(-1)])
        counts = np.bincount((words >> np.uint64(56)).astype(np.int64), minlength=256)
        chi2 = float(((counts - len(words) / 256) ** 2 / (len(words) / 256)).sum())
        assert chi2 < 420, f"correction words not uniform: chi2={chi2:.1f}"


def test_key_size_formula():
    n, levels, width = 100, 7, 3
    _, _, public = _keys(np.zeros(n, np.uint64), width, levels)
    cw, tail = pack_public(*public)
    assert cw.size + tail.size == key_words(n, levels, width)


def test_bad_arguments_are_refused():
    prg = PRG(bytes(16))
    roots = prg.random_u64((4, 2)), prg.random_u64((4, 2))
    beta = prg.random_u64((4, 1))
    with pytest.raises(ValueError, match="below 2\\^3"):
        dcf_gen(np.array([0, 1, 2, 8], np.uint64), beta, 3, *roots)
    with pytest.raises(ValueError, match="input bits"):
        dcf_gen(np.zeros(4, np.uint64), beta, 0, *roots)
    with pytest.raises(ValueError, match="payload width"):
        dcf_gen(np.zeros(4, np.uint64), prg.random_u64((4, 20)), 3, *roots)
    key = DcfKey(roots[0], *dcf_gen(np.zeros(4, np.uint64), beta, 3, *roots))
    with pytest.raises(ValueError, match="needs 4 inputs"):
        dcf_eval(0, key, np.zeros(3, np.uint64))
