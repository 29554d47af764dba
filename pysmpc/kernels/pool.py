"""Numba sum pooling on uint64 share tensors (NHWC layout, mod 2^64).

Sum pooling is linear, so each party pools its own additive share locally
and the pooled shares still reconstruct to the pooled secret. Averaging is
a sum followed by a public scaling or truncation; that step belongs to the
``avg_pool2d`` protocol, not to this kernel.

Contract of :func:`sum_pool2d`: the input is never modified; a
non-contiguous input is copied to C order first; the output buffer is either
caller-owned (``out=``) or allocated once per call; no randomness is drawn.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

__all__ = ["sum_pool2d"]

# Below this many additions (output elements times k*k) the serial loop is
# used. On 2 idle cores the thread pool is ~1.5-2x faster from ~4e4
# additions on (memory-bound), but when another process holds a core a
# parallel call waits for a descheduled worker: (64,26,26,16), k=2 went from
# 0.3 ms (min) to 8 ms (median) and 12-25 ms (p90), against ~1 ms serial.
# Parties share the machine, so only large calls default to parallel.
_PARALLEL_MIN_ADDS = 1 << 22


@njit(cache=True, inline="always")
def _pool_row(x, out, row, k, stride):
    """Fill output row ``row`` (a flat index over N*OH) of ``out``."""
    oh_count = out.shape[1]
    n = row // oh_count
    oh = row % oh_count
    h0 = oh * stride
    for ow in range(out.shape[2]):
        w0 = ow * stride
        for c in range(out.shape[3]):
            out[n, oh, ow, c] = np.uint64(0)
        for i in range(k):
            for j in range(k):
                # uint64 + uint64 wraps mod 2^64 in Numba, which is exactly
                # the ring addition of additive shares.
                for c in range(out.shape[3]):
                    out[n, oh, ow, c] += x[n, h0 + i, w0 + j, c]


@njit(cache=True, parallel=True, nogil=True)
def _sum_pool2d_parallel(x, out, k, stride):
    rows = out.shape[0] * out.shape[1]
    for row in prange(rows):
        _pool_row(x, out, row, k, stride)


@njit(cache=True, nogil=True)
def _sum_pool2d_serial(x, out, k, stride):
    rows = out.shape[0] * out.shape[1]
    for row in range(rows):
        _pool_row(x, out, row, k, stride)


def sum_pool2d(
    x: np.ndarray,
    k: int,
    stride: int | None = None,
    out: np.ndarray | None = None,
    parallel: bool | None = None,
) -> np.ndarray:
    """Sum k x k windows of an NHWC uint64 tensor, 'valid' padding, mod 2^64.

    1. Copy ``x`` to C order if it is not already (the input is never
       written).
    2. out[n, oh, ow, c] = sum over 0 <= i, j < k of
       x[n, oh*stride + i, ow*stride + j, c]  (mod 2^64): local, one pass.

    Shapes: ``x`` is (N, H, W, C); the result is (N, OH, OW, C) with
    OH = (H - k) // stride + 1 and OW = (W - k) // stride + 1 (0 if the
    window does not fit).

    Args:
        x: uint64 array of rank 4, any memory order.
        k: window side, k >= 1.
        stride: step between windows, >= 1; defaults to ``k``.
        out: optional caller-owned C-contiguous uint64 buffer of the output
            shape; it must not overlap ``x``.
        parallel: run rows (N*OH) on the Numba thread pool. ``None`` decides
            by size; ``True``/``False`` force a path.

    Returns:
        ``out`` (or a new array) holding the pooled sums.

    Cost: local; N*OH*OW*C*k*k ring additions, no communication.
    """
    if not isinstance(x, np.ndarray) or x.dtype != np.uint64:
        raise TypeError(
            f"sum_pool2d: x must be a uint64 ndarray, got "
            f"{type(x).__name__} of dtype {getattr(x, 'dtype', None)}"
        )
    if x.ndim != 4:
        raise ValueError(f"sum_pool2d: x must be NHWC (rank 4), got shape {x.shape}")
    k = _positive_int("k", k)
    stride = k if stride is None else _positive_int("stride", stride)
    n, h, w, c = x.shape
    oh = (h - k) // stride + 1 if h >= k else 0
    ow = (w - k) // stride + 1 if w >= k else 0
    shape = (n, oh, ow, c)
    if out is None:
        out = np.empty(shape, dtype=np.uint64)
    else:
        if not isinstance(out, np.ndarray) or out.dtype != np.uint64:
            raise TypeError("sum_pool2d: out must be a uint64 ndarray")
        if out.shape != shape:
            raise ValueError(
                f"sum_pool2d: out has shape {out.shape}, expected {shape} "
                f"for x of shape {x.shape}, k={k}, stride={stride}"
            )
        if not out.flags.c_contiguous or not out.flags.writeable:
            raise ValueError("sum_pool2d: out must be C-contiguous and writeable")
        if np.shares_memory(out, x):
            raise ValueError("sum_pool2d: out must not overlap x")
    if out.size == 0:
        return out
    xc = np.ascontiguousarray(x)
    if parallel is None:
        parallel = out.size * k * k >= _PARALLEL_MIN_ADDS
    if parallel:
        _sum_pool2d_parallel(xc, out, k, stride)
    else:
        _sum_pool2d_serial(xc, out, k, stride)
    return out


def _positive_int(name: str, value) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"sum_pool2d: {name} must be an int, got {value!r}")
    if value < 1:
        raise ValueError(f"sum_pool2d: {name} must be >= 1, got {value}")
    return int(value)
