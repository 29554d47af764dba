"""Comparison carry kernels against direct NumPy forms."""

import numpy as np
import pytest

from pysmpc.kernels.carries import bilinear_xor, group_monomials, low_bit_index, tree_combine, tree_gather


@pytest.mark.parametrize("k,nw", [(4, 1), (4, 37), (3, 5)])
def test_group_monomials_are_ands_of_the_group_planes(k, nw):
    rng = np.random.default_rng(k * 100 + nw)
    planes = rng.integers(0, 2**63, (64, nw), dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    starts = np.array([0, 8, 60 - k], np.int64)
    count = (1 << k) - 1
    mask = rng.integers(0, 2**63, (count, len(starts), nw), dtype=np.uint64)
    mono = np.empty_like(mask)
    masked = np.empty_like(mask)
    group_monomials(planes, starts, low_bit_index(1 << k), mask, mono, masked)
    for g, start in enumerate(starts):
        for s in range(1, 1 << k):
            expect = np.full(nw, 0xFFFFFFFFFFFFFFFF, np.uint64)
            for j in range(k):
                if s >> j & 1:
                    expect &= planes[start + j]
            np.testing.assert_array_equal(mono[s - 1, g], expect)
    np.testing.assert_array_equal(masked, mono ^ mask)


def test_bilinear_xor_sums_the_listed_products_and_terms():
    rng = np.random.default_rng(1)
    left, right, linear = (rng.integers(0, 2**63, (5, 3, 7), dtype=np.uint64) for _ in range(3))
    init = rng.integers(0, 2**63, (2, 3, 7), dtype=np.uint64)
    pairs = np.array([[[0, 1], [4, 2], [3, 3]], [[1, 0], [0, 0], [0, 0]]], np.int64)
    pair_count = np.array([3, 1], np.int64)
    linear_index = np.array([[2, 0], [4, 1]], np.int64)
    linear_count = np.array([1, 2], np.int64)
    constant = np.array([0, 0xFFFFFFFFFFFFFFFF], np.uint64)
    out = np.empty_like(init)
    bilinear_xor(left, right, pairs, pair_count, linear, linear_index, linear_count, constant, init, out)
    expect_0 = init[0] ^ (left[0] & right[1]) ^ (left[4] & right[2]) ^ (left[3] & right[3]) ^ linear[2]
    expect_1 = init[1] ^ (left[1] & right[0]) ^ linear[4] ^ linear[1] ^ constant[1]
    np.testing.assert_array_equal(out[0], expect_0)
    np.testing.assert_array_equal(out[1], expect_1)
    bilinear_xor(left, right, pairs, pair_count, None, linear_index, linear_count, constant * 0, None, out)
    np.testing.assert_array_equal(out[1], left[1] & right[0])


def test_tree_gather_picks_each_nodes_child_and_masks_it():
    rng = np.random.default_rng(2)
    g, p = (rng.integers(0, 2**63, (8, 3), dtype=np.uint64) for _ in range(2))
    u = rng.integers(0, 2**63, (2, 2, 3), dtype=np.uint64)
    out = np.empty_like(u)
    tree_gather(g, p, np.array([False, True]), np.array([3, 1], np.int64), 4, u, out)
    for n in range(2):
        np.testing.assert_array_equal(out[0, n], g[4 * n + 3] ^ u[0, n])
        np.testing.assert_array_equal(out[1, n], p[4 * n + 1] ^ u[1, n])


@pytest.mark.parametrize("nw", [1, 3, 200])
def test_tree_combine_xors_the_terms_of_the_opened_variables(nw):
    rng = np.random.default_rng(nw)
    nv, nodes, dealt_count = 3, 2, 2
    mine, theirs, u = (rng.integers(0, 2**64, (nv, nodes, nw), dtype=np.uint64) for _ in range(3))
    dealt = rng.integers(0, 2**64, (dealt_count, nodes, nw), dtype=np.uint64)
    g = rng.integers(0, 2**64, (4 * nodes, nw), dtype=np.uint64)
    needed = np.array([1, 2, 3, 4, 5, 6, 7], np.int64)
    # (slot, variable subset, mask): mask -1 is the public term (first party
    # only), 0..nv-1 a variable's u, nv.. a dealt product.
    terms = np.array([(0, 3, -1), (0, 1, 4), (1, 7, -1), (1, 6, 0), (1, 0, 3), (0, 5, 2)], np.int64)
    before = [a.copy() for a in (mine, theirs, u, dealt, g)]
    d = mine ^ theirs
    masks = np.concatenate([u, dealt])
    for first in (True, False):
        out = np.empty((2, nodes, nw), np.uint64)
        tree_combine(mine, theirs, u, dealt, g, 4, low_bit_index(1 << nv), needed, terms, first, out)
        for n in range(nodes):
            expect = [g[4 * n + 3].copy(), np.zeros(nw, np.uint64)]
            for slot, subset, mask in terms:
                if mask < 0 and not first:
                    continue
                term = np.full(nw, 0xFFFFFFFFFFFFFFFF, np.uint64)
                for var in range(nv):
                    if subset >> var & 1:
                        term &= d[var, n]
                expect[slot] ^= term if mask < 0 else term & masks[mask, n]
            np.testing.assert_array_equal(out[0, n], expect[0], err_msg=f"G, node {n}, nw {nw}, first {first}")
            np.testing.assert_array_equal(out[1, n], expect[1], err_msg=f"P, node {n}, nw {nw}, first {first}")
    for got, was in zip((mine, theirs, u, dealt, g), before):
        np.testing.assert_array_equal(got, was)
