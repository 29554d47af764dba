"""Numba kernels for the local last steps of protocols, one pass each.

Each replaces a handful of NumPy expressions (and their temporaries) over
the same arrays. Arithmetic is mod 2^64 (uint64 wraps); kernels write into
caller-owned outputs, draw no randomness and release the GIL.
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["select_finish", "truncate_finish", "conv2d_finish"]


@njit(cache=True, nogil=True)
def select_finish(beta_mine, beta_theirs, e_mine, e_theirs, rho, a_rho, x, out):
    """out = x * b for b = beta ^ rho, from the opened beta and e = x - a (protocols.select).

    beta = beta_mine ^ beta_theirs packed (bit i of row i), e = e_mine +
    e_theirs; [x rho] = e [rho] + [a rho]; x b = beta x + (1 - 2 beta) x rho.
    Arrays are (n, r) but for the packed words and rho (n,).
    """
    n, r = x.shape
    if r == 1:
        _select_finish_column(beta_mine, beta_theirs, e_mine, e_theirs, rho, a_rho, x, out)
        return
    for i in range(n):
        word = beta_mine[i >> 6] ^ beta_theirs[i >> 6]
        beta = (word >> np.uint64(i & 63)) & np.uint64(1)
        rho_i = rho[i]
        for j in range(r):
            x_rho = (e_mine[i, j] + e_theirs[i, j]) * rho_i + a_rho[i, j]
            if beta:
                out[i, j] = x[i, j] - x_rho
            else:
                out[i, j] = x_rho


@njit(cache=True, nogil=True)
def _select_finish_column(beta_mine, beta_theirs, e_mine, e_theirs, rho, a_rho, x, out):
    """select_finish for one element per bit (r = 1, a relu), a packed word at a time.

    The 64 elements of a word in a fixed-count loop, beta applied as a mask
    rather than a branch: the loop vectorizes (about 2 ns per element
    against 11 for the element loop, which tested a random bit per element).
    """
    n = x.shape[0]
    zero = np.uint64(0)
    one = np.uint64(1)
    for w in range((n + 63) >> 6):
        word = beta_mine[w] ^ beta_theirs[w]
        base = w << 6
        for t in range(min(64, n - base)):
            i = base + t
            keep_x = zero - ((word >> np.uint64(t)) & one)  # all ones where beta = 1
            x_rho = (e_mine[i, 0] + e_theirs[i, 0]) * rho[i] + a_rho[i, 0]
            out[i, 0] = x_rho + (keep_x & (x[i, 0] - x_rho - x_rho))


@njit(cache=True, nogil=True)
def truncate_finish(c_open, r_msb, r_hi, frac_bits, public_part, offset, out):
    """out = (1 - c_63) 2^(64-F) [r_63] - [r >> F] (+ (c >> F) - offset on P0), elementwise.

    The local step of protocols.truncate; `public_part` says whether this
    party adds the public terms (P0).
    """
    shift = np.uint64(frac_bits)
    high = np.uint64(64 - frac_bits)
    one = np.uint64(1)
    c = c_open.reshape(-1)
    msb = r_msb.reshape(-1)
    hi = r_hi.reshape(-1)
    o = out.reshape(-1)
    for i in range(c.shape[0]):
        z = (((one - (c[i] >> np.uint64(63))) << high) * msb[i]) - hi[i]
        if public_part:
            z += (c[i] >> shift) - offset
        o[i] = z


@njit(cache=True, nogil=True)
def conv2d_finish(e_open, w, sh, sw, ac, out):
    """out = conv(e_open, w) + ac: a valid (unpadded) convolution, NHWC by HWIO, strides (sh, sw).

    The local step of protocols.conv2d.conv2d_fixed, direct rather than
    im2col + GEMM: at batch 1 the GEMM's packing and 4-row tiles cost more
    than the products (a 1 x 1 output did a quarter of its work).
    """
    n, oh, ow, o = out.shape
    kh, kw, c, _ = w.shape
    for b in range(n):
        for y in range(oh):
            for x in range(ow):
                for q in range(o):
                    out[b, y, x, q] = ac[b, y, x, q]
                for i in range(kh):
                    for j in range(kw):
                        for ch in range(c):
                            v = e_open[b, y * sh + i, x * sw + j, ch]
                            for q in range(o):
                                out[b, y, x, q] += v * w[i, j, ch, q]
