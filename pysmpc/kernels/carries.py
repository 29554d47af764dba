"""Numba kernels for the carry computation of the comparison protocol.

Fused versions of the local steps of ``protocols.compare``: each walks the
packed bit planes once, where the NumPy form made a pass (and often a
temporary) per monomial and per term. The layouts follow compare.py:

- planes: ``uint64[64, nw]``, bit plane i of the 64-bit values.
- monomials of a k-position group: ``uint64[2^k - 1, groups, nw]``; index
  S - 1 holds the AND of the planes in the position subset S (bit j of S =
  position start + j).
- bilinear forms: lists of (S - 1, T - 1) index pairs per output form.

All kernels write into caller-owned outputs, draw no randomness and
release the GIL (the three in-process parties run them at the same time).
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["group_monomials", "bilinear_xor", "tree_gather", "tree_combine", "low_bit_index"]

_ALL_ONES = np.uint64(0xFFFFFFFFFFFFFFFF)


def low_bit_index(size: int) -> np.ndarray:
    """index[s] = position of the lowest set bit of s (index[0] unused)."""
    index = np.zeros(size, np.int64)
    for s in range(1, size):
        index[s] = ((s & -s).bit_length()) - 1
    return index


@njit(cache=True, nogil=True)
def group_monomials(planes, starts, low_index, mask, mono, masked):
    """mono[S-1, g] = AND of planes starts[g] + j for j in S; masked = mono ^ mask.

    S runs over 1 .. 2^k - 1 (k from mono's first axis); each monomial is
    the one without its lowest position, ANDed with that position's plane.
    """
    count, groups, nw = mono.shape
    for g in range(groups):
        base = starts[g]
        for s in range(1, count + 1):
            i = low_index[s]
            rest = s & (s - 1)
            plane = planes[base + i]
            row = mono[s - 1, g]
            if rest == 0:
                for w in range(nw):
                    row[w] = plane[w]
            else:
                prev = mono[rest - 1, g]
                for w in range(nw):
                    row[w] = prev[w] & plane[w]
            m = mask[s - 1, g]
            out = masked[s - 1, g]
            for w in range(nw):
                out[w] = row[w] ^ m[w]


@njit(cache=True, nogil=True)
def bilinear_xor(left, right, pairs, pair_count, linear, linear_index, linear_count, constant, init, out):
    """out[f, g] = init[f, g] ^ XOR_j left[pairs[f, j, 0], g] & right[pairs[f, j, 1], g]
    ^ XOR_j linear[linear_index[f, j], g] ^ constant[f], for each form f.

    `init` may be None (zeros) and `linear` may be None (no linear terms).
    """
    forms, groups, nw = out.shape
    for f in range(forms):
        for g in range(groups):
            row = out[f, g]
            if init is None:
                for w in range(nw):
                    row[w] = constant[f]
            else:
                src = init[f, g]
                for w in range(nw):
                    row[w] = src[w] ^ constant[f]
            for j in range(pair_count[f]):
                a = left[pairs[f, j, 0], g]
                b = right[pairs[f, j, 1], g]
                for w in range(nw):
                    row[w] ^= a[w] & b[w]
            if linear is not None:
                for j in range(linear_count[f]):
                    a = linear[linear_index[f, j], g]
                    for w in range(nw):
                        row[w] ^= a[w]


@njit(cache=True, nogil=True)
def tree_gather(g, p, var_is_p, var_child, fan_in, u, out):
    """out[v, n] = (p if var_is_p[v] else g)[fan_in * n + var_child[v]] ^ u[v, n]."""
    nv, nodes, nw = out.shape
    for v in range(nv):
        src = p if var_is_p[v] else g
        for n in range(nodes):
            plane = src[fan_in * n + var_child[v]]
            m = u[v, n]
            row = out[v, n]
            for w in range(nw):
                row[w] = plane[w] ^ m[w]


_BLOCK = 128  # words per block: the block's AND table stays in L1/L2, and inner loops vectorize


@njit(cache=True, nogil=True)
def tree_combine(d, masks, g, fan_in, low_index, needed, terms, first, out):
    """One fan-in node per (n, word): XOR shares of the node's G (out[0]) and P (out[1]).

    d: opened (variables, nodes, nw); table[X] = AND of d over the variable
    subset X, built for the subsets in `needed` (ascending, closed under
    dropping the lowest bit), a block of words at a time. Each term
    (slot, rest, mask) adds table[rest] & masks[mask] to out[slot], or
    table[rest] alone when mask is -1 (the public part, P0 only). out[0]
    starts from the node's top child G, which each party already holds a
    share of.
    """
    nv, nodes, nw = d.shape
    table = np.empty((1 << nv, _BLOCK), np.uint64)
    for n in range(nodes):
        top = g[fan_in * n + fan_in - 1]
        for start in range(0, nw, _BLOCK):
            size = min(_BLOCK, nw - start)
            for w in range(size):
                table[0, w] = _ALL_ONES
            for j in range(needed.shape[0]):
                x = needed[j]
                prev = table[x & (x - 1)]
                row = d[low_index[x], n]
                dst = table[x]
                for w in range(size):
                    dst[w] = prev[w] & row[start + w]
            out_g = out[0, n]
            out_p = out[1, n]
            for w in range(size):
                out_g[start + w] = top[start + w]
                out_p[start + w] = 0
            for t in range(terms.shape[0]):
                mask = terms[t, 2]
                if mask < 0 and not first:
                    continue
                src = table[terms[t, 1]]
                dst = out_g if terms[t, 0] == 0 else out_p
                if mask < 0:
                    for w in range(size):
                        dst[start + w] ^= src[w]
                else:
                    m = masks[mask, n]
                    for w in range(size):
                        dst[start + w] ^= src[w] & m[start + w]
