"""Load every Numba kernel before any protocol runs (a worker does this before it reports ready)."""

from __future__ import annotations

import time

import numpy as np

from pysmpc.kernels import bits, pool

__all__ = ["warm_up"]


def warm_up() -> float:
    """Call each Numba kernel once on a tiny input, serial and parallel paths; return the seconds taken.

    The first call of a Numba kernel in a process compiles it or loads it
    from Numba's cache and starts the thread pool: 1-5 s in all, more on a
    loaded machine. A party doing that in the middle of a protocol keeps its
    peers waiting for as long, so the peer timeout would have to cover it;
    warmed up, the longest wait in a batch-256 inference is a fraction of a
    second and the timeout can be a few seconds. Caller-owned buffers only:
    no randomness, no party.
    """
    start = time.perf_counter()
    x = np.arange(130, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    for parallel in (False, True):
        for planes in (1, bits._TRANSPOSE_MIN_PLANES):  # the per-bit and the transposing packers
            bits.pack_bitplanes(x, 0, planes, parallel=parallel)
        pool.sum_pool2d(x[:128].reshape(2, 4, 4, 4), 2, parallel=parallel)
    packed = bits.pack_bits(x & np.uint64(1) == 1)
    bits.unpack_bits(packed, len(x))
    bits.and_finish(packed, packed, packed, packed, packed, True)
    bits.popcount(packed)
    return time.perf_counter() - start
