"""Numba kernels for one tree level of a DCF (sharing.dcf), for n keys at once.

The AES calls stay outside (OpenSSL, one buffer per level); these kernels
do what is around them in one pass: build the PRG's input blocks (seed ^
tweak of the side each element takes) and apply the correction words.
Arithmetic is mod 2^64 (uint64 wraps). Kernels write into caller-owned
arrays, draw no randomness and release the GIL. NumPy twins:
kernels/reference_dcf.py.
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["eval_inputs", "eval_level", "eval_leaf", "gen_level"]

_ONE = np.uint64(1)
_NOT_LSB = np.uint64(0xFFFFFFFFFFFFFFFE)


@njit(cache=True, nogil=True)
def eval_inputs(s, x, shift, tweaks, side_fixed, out):
    """out[j, b] = s[j] ^ tweaks[side, b] with side = bit `shift` of x[j] (or side_fixed >= 0 for all).

    s (n, 2), x (n,), tweaks (3, B_max, 2), out (n, B, 2).
    """
    n, nb = out.shape[0], out.shape[1]
    for j in range(n):
        side = side_fixed if side_fixed >= 0 else np.int64((x[j] >> np.uint64(shift)) & _ONE)
        for b in range(nb):
            out[j, b, 0] = s[j, 0] ^ tweaks[side, b, 0]
            out[j, b, 1] = s[j, 1] ^ tweaks[side, b, 1]


@njit(cache=True, nogil=True)
def eval_level(aes_out, blocks, cw, t_cw, x, shift, s, t, acc, next_shift, tweaks):
    """One level of Eval, then the next level's AES inputs.

    g = aes_out ^ blocks is G(s) on the side each element takes (n, B, 2).
    Updates s (n, 2), t (n,) and acc (n, w) in place: seed and control bit
    from g's first block (control bit = its lowest bit, then cleared),
    corrected by cw[:, :2] and t_cw[side] where t is set; the payload words
    (g's later blocks, + cw[:, 2:] where t is set) added to acc. Then
    overwrites blocks with s ^ tweaks[side'] for the next level, side' =
    bit next_shift of x, or the leaf's tweaks (side 2) when next_shift < 0.
    Branch-free in t (a mask), as t is a coin flip per element.
    """
    n, w = acc.shape
    nb = blocks.shape[1]
    for j in range(n):
        side = np.int64((x[j] >> np.uint64(shift)) & _ONE)
        mask = np.uint64(0) - t[j]
        s0 = aes_out[j, 0, 0] ^ blocks[j, 0, 0]
        s1 = aes_out[j, 0, 1] ^ blocks[j, 0, 1]
        tn = (s0 & _ONE) ^ (np.uint64(t_cw[side, j]) & mask)
        s0 = (s0 & _NOT_LSB) ^ (cw[j, 0] & mask)
        s1 ^= cw[j, 1] & mask
        for k in range(w):
            b = 1 + (k >> 1)
            h = k & 1
            acc[j, k] += (aes_out[j, b, h] ^ blocks[j, b, h]) + (cw[j, 2 + k] & mask)
        s[j, 0] = s0
        s[j, 1] = s1
        t[j] = tn
        nside = 2 if next_shift < 0 else np.int64((x[j] >> np.uint64(max(next_shift, 0))) & _ONE)
        for b in range(nb):
            blocks[j, b, 0] = s0 ^ tweaks[nside, b, 0]
            blocks[j, b, 1] = s1 ^ tweaks[nside, b, 1]


@njit(cache=True, nogil=True)
def eval_leaf(aes_out, blocks, t, leaf, acc):
    """The leaf: acc (n, w) += Convert(s), the payload words of G on side 2, plus leaf (n, w) where t is set.

    aes_out ^ blocks is that G (n, B, 2); branch-free in t, as eval_level.
    """
    n, w = acc.shape
    for j in range(n):
        mask = np.uint64(0) - t[j]
        for k in range(w):
            b = 1 + (k >> 1)
            h = k & 1
            acc[j, k] += (aes_out[j, b, h] ^ blocks[j, b, h]) + (leaf[j, k] & mask)


@njit(cache=True, nogil=True)
def gen_level(aes_out, blocks, alpha, shift, beta, s, t, v_alpha, cw, t_cw, tweaks):
    """One level of Gen for both parties, then the next level's AES inputs.

    g = aes_out ^ blocks is G(s) on both sides (2 parties, n, 2 sides, B, 2);
    g replaces aes_out. Writes this level's correction words cw (n, 2 + w)
    and t_cw (2, n), updates both parties' seeds s (2, n, 2), bits t (2, n)
    and the running payload v_alpha (n, w) in place (BCG+21 Fig. 1, step
    3), then sets blocks to s ^ tweaks[side, b] for both sides.
    """
    n, w = v_alpha.shape
    nb = blocks.shape[3]
    g = aes_out
    for j in range(n):
        for p in range(2):
            for side in range(2):
                for b in range(nb):
                    g[p, j, side, b, 0] ^= blocks[p, j, side, b, 0]
                    g[p, j, side, b, 1] ^= blocks[p, j, side, b, 1]
        a = np.int64((alpha[j] >> np.uint64(shift)) & _ONE)
        keep = a
        lose = 1 - a
        neg = t[1, j] != 0
        # seeds and control bits of each party on each side
        sl0 = g[0, j, lose, 0, 0] & _NOT_LSB
        sl1 = g[1, j, lose, 0, 0] & _NOT_LSB
        cw0 = sl0 ^ sl1
        cw1 = g[0, j, lose, 0, 1] ^ g[1, j, lose, 0, 1]
        cw[j, 0] = cw0
        cw[j, 1] = cw1
        for k in range(w):
            vl0 = g[0, j, lose, 1 + (k >> 1), k & 1]
            vl1 = g[1, j, lose, 1 + (k >> 1), k & 1]
            vk0 = g[0, j, keep, 1 + (k >> 1), k & 1]
            vk1 = g[1, j, keep, 1 + (k >> 1), k & 1]
            v = vl1 - vl0 - v_alpha[j, k]
            if a:  # the left subtree (x < alpha) is lost: its payload goes into the correction
                v += beta[j, k]
            if neg:
                v = np.uint64(0) - v
            cw[j, 2 + k] = v
            corr = np.uint64(0) - v if neg else v
            v_alpha[j, k] = v_alpha[j, k] - vk1 + vk0 + corr
        tl = (g[0, j, 0, 0, 0] ^ g[1, j, 0, 0, 0] ^ np.uint64(a) ^ _ONE) & _ONE
        tr = (g[0, j, 1, 0, 0] ^ g[1, j, 1, 0, 0] ^ np.uint64(a)) & _ONE
        t_cw[0, j] = np.uint8(tl)
        t_cw[1, j] = np.uint8(tr)
        t_keep_cw = tr if keep else tl
        for p in range(2):
            ns0 = g[p, j, keep, 0, 0]
            tk = ns0 & _ONE
            ns0 &= _NOT_LSB
            ns1 = g[p, j, keep, 0, 1]
            if t[p, j]:
                ns0 ^= cw0
                ns1 ^= cw1
                tk ^= t_keep_cw
            s[p, j, 0] = ns0
            s[p, j, 1] = ns1
            t[p, j] = tk
            for side in range(2):
                for b in range(nb):
                    blocks[p, j, side, b, 0] = ns0 ^ tweaks[side, b, 0]
                    blocks[p, j, side, b, 1] = ns1 ^ tweaks[side, b, 1]
