"""Slow, obviously-correct twins of the Numba kernels in pool.py and bits.py.

Each function computes with Python ints (exact, no wrap-around surprises)
and reduces mod 2^64 only at the end. Tests compare every Numba kernel with
its twin here; nothing in the package should call these on a hot path.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "reference_and_finish",
    "reference_pack_bitplanes",
    "reference_pack_bits",
    "reference_popcount",
    "reference_sum_pool2d",
    "reference_unpack_bits",
]

_MOD = 1 << 64


def _to_u64(values, shape) -> np.ndarray:
    flat = [int(v) % _MOD for v in values]
    return np.array(flat, dtype=np.uint64).reshape(shape)


def reference_sum_pool2d(x: np.ndarray, k: int, stride: int | None = None) -> np.ndarray:
    """Sum k x k windows of an NHWC array with Python ints, then reduce mod 2^64."""
    stride = k if stride is None else stride
    n, h, w, c = x.shape
    oh = (h - k) // stride + 1 if h >= k else 0
    ow = (w - k) // stride + 1 if w >= k else 0
    if n * oh * ow * c == 0:
        return np.zeros((n, oh, ow, c), dtype=np.uint64)
    xs = x.astype(object)  # Python ints: exact sums
    acc = np.zeros((n, oh, ow, c), dtype=object)
    for i in range(k):
        for j in range(k):
            acc = acc + xs[
                :,
                i : i + stride * (oh - 1) + 1 : stride,
                j : j + stride * (ow - 1) + 1 : stride,
                :,
            ]
    return _to_u64(acc.reshape(-1), acc.shape)


def reference_pack_bitplanes(x: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Pack bits lo .. hi-1 of each element into planes, one bit at a time."""
    values = [int(v) for v in x]
    nwords = (len(values) + 63) // 64
    out = [[0] * nwords for _ in range(hi - lo)]
    for j in range(hi - lo):
        for i, v in enumerate(values):
            out[j][i // 64] |= ((v >> (lo + j)) & 1) << (i % 64)
    return np.array(out, dtype=np.uint64).reshape(hi - lo, nwords)


def reference_pack_bits(b) -> np.ndarray:
    """Pack 0/1 values into uint64 words, bit t of word w = element 64*w + t."""
    values = [int(v) for v in np.asarray(b).reshape(-1)]
    words = [0] * ((len(values) + 63) // 64)
    for i, v in enumerate(values):
        words[i // 64] |= (v & 1) << (i % 64)
    return np.array(words, dtype=np.uint64)


def reference_unpack_bits(plane: np.ndarray, n: int) -> np.ndarray:
    """Expand a packed plane into n uint64 values, each 0 or 1."""
    return np.array([(int(plane[i // 64]) >> (i % 64)) & 1 for i in range(n)], dtype=np.uint64)


def reference_and_finish(d, e, u, v, w, party0: bool) -> np.ndarray:
    """Compute w ^ (d & v) ^ (e & u) ^ (party0 ? d & e : 0) element by element."""
    shape = np.shape(d)
    flat = [np.asarray(a).reshape(-1) for a in (d, e, u, v, w)]
    out = []
    for di, ei, ui, vi, wi in zip(*flat):
        di, ei, ui, vi, wi = int(di), int(ei), int(ui), int(vi), int(wi)
        z = wi ^ (di & vi) ^ (ei & ui)
        if party0:
            z ^= di & ei
        out.append(z)
    return _to_u64(out, shape)


def reference_popcount(words: np.ndarray) -> int:
    """Count set bits with Python's int.bit_count."""
    return sum(int(v).bit_count() for v in np.asarray(words).reshape(-1))
