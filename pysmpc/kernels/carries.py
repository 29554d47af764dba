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
    # Indexing elements, not taking row views: a view costs about 0.1 us
    # (reference counting), which at batch 1 (a word or a few per row) was
    # most of the call.
    count, groups, nw = mono.shape
    for g in range(groups):
        base = starts[g]
        for s in range(1, count + 1):
            plane = base + low_index[s]
            rest = s & (s - 1)
            for w in range(nw):
                v = planes[plane, w]
                if rest != 0:
                    v &= mono[rest - 1, g, w]
                mono[s - 1, g, w] = v
                masked[s - 1, g, w] = v ^ mask[s - 1, g, w]


@njit(cache=True, nogil=True)
def bilinear_xor(left, right, pairs, pair_count, linear, linear_index, linear_count, constant, init, out):
    """out[f, g] = init[f, g] ^ XOR_j left[pairs[f, j, 0], g] & right[pairs[f, j, 1], g]
    ^ XOR_j linear[linear_index[f, j], g] ^ constant[f], for each form f.

    `init` may be None (zeros) and `linear` may be None (no linear terms).
    """
    forms, groups, nw = out.shape
    for f in range(forms):
        for g in range(groups):
            for w in range(nw):
                out[f, g, w] = constant[f] if init is None else init[f, g, w] ^ constant[f]
            for j in range(pair_count[f]):
                a, b = pairs[f, j, 0], pairs[f, j, 1]
                for w in range(nw):
                    out[f, g, w] ^= left[a, g, w] & right[b, g, w]
            if linear is not None:
                for j in range(linear_count[f]):
                    a = linear_index[f, j]
                    for w in range(nw):
                        out[f, g, w] ^= linear[a, g, w]


@njit(cache=True, nogil=True)
def tree_gather(g, p, var_is_p, var_child, fan_in, u, out):
    """out[v, n] = (p if var_is_p[v] else g)[fan_in * n + var_child[v]] ^ u[v, n]."""
    nv, nodes, nw = out.shape
    for v in range(nv):
        for n in range(nodes):
            child = fan_in * n + var_child[v]
            for w in range(nw):
                plane = p[child, w] if var_is_p[v] else g[child, w]
                out[v, n, w] = plane ^ u[v, n, w]


_BLOCK = 128  # words per block: the block's AND table stays in L1/L2, and inner loops vectorize


@njit(cache=True, nogil=True)
def tree_combine(mine, theirs, u, dealt, g, fan_in, low_index, needed, terms, first, out):
    """One fan-in node per (n, word): XOR shares of the node's G (out[0]) and P (out[1]).

    d = mine ^ theirs: opened (variables, nodes, nw); table[X] = AND of d
    over the variable subset X, built for the subsets in `needed`
    (ascending, closed under dropping the lowest bit), a block of words at
    a time. Each term (slot, rest, mask) adds table[rest] & masks[mask] to
    out[slot], or table[rest] alone when mask is -1 (the public part, P0
    only); masks are u (one per variable) then the dealt products. out[0]
    starts from the node's top child G, which each party already holds a
    share of.
    """
    nv, nodes, nw = mine.shape
    # Sized to the words at hand: a full (2^nv, _BLOCK) table is 128 KiB,
    # which malloc serves by mmap (page faults on every call) at batch 1.
    block = max(1, min(_BLOCK, nw))
    table = np.empty((1 << nv, block), np.uint64)
    for n in range(nodes):
        top = fan_in * n + fan_in - 1
        for start in range(0, nw, block):
            size = min(block, nw - start)
            for w in range(size):
                table[0, w] = _ALL_ONES
            for j in range(needed.shape[0]):
                x = needed[j]
                prev = x & (x - 1)
                var = low_index[x]
                for w in range(size):
                    table[x, w] = table[prev, w] & (mine[var, n, start + w] ^ theirs[var, n, start + w])
            for w in range(size):
                out[0, n, start + w] = g[top, start + w]
                out[1, n, start + w] = 0
            for t in range(terms.shape[0]):
                mask = terms[t, 2]
                if mask < 0 and not first:
                    continue
                src = terms[t, 1]
                slot = terms[t, 0]
                if mask < 0:
                    for w in range(size):
                        out[slot, n, start + w] ^= table[src, w]
                elif mask < nv:
                    for w in range(size):
                        out[slot, n, start + w] ^= table[src, w] & u[mask, n, start + w]
                else:
                    for w in range(size):
                        out[slot, n, start + w] ^= table[src, w] & dealt[mask - nv, n, start + w]
