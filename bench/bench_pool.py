"""Benchmark the Numba sum_pool2d kernel beside a NumPy reshape-sum baseline.

Run: PYTHONPATH=. python -m pytest bench/bench_pool.py --benchmark-only
Input: one party's share, uint64 (64, 26, 26, 16) NHWC, 2x2 windows,
stride 2. Pooling is local: rounds and bytes sent are 0.
"""

import numpy as np
import pytest

from pysmpc.kernels.pool import sum_pool2d

SHAPE = (64, 26, 26, 16)
K = 2


def _share():
    # Benchmark input only; kernels draw no randomness of their own.
    rng = np.random.default_rng(0)
    return rng.integers(0, 2**64, size=SHAPE, dtype=np.uint64)


def _numpy_pool(x):
    n, h, w, c = x.shape
    oh, ow = h // K, w // K
    v = x[:, : oh * K, : ow * K].reshape(n, oh, K, ow, K, c)
    return v.sum(axis=(2, 4), dtype=np.uint64)  # uint64 sum wraps mod 2^64


def _record(benchmark, x):
    median = benchmark.stats.stats.median
    benchmark.extra_info.update(
        shape=list(SHAPE), k=K, bytes_in=x.nbytes, bytes_per_s=x.nbytes / median,
        rounds=0, bytes_sent=0,
    )


@pytest.mark.parametrize("parallel", [None, False, True], ids=["auto", "serial", "parallel"])
def test_sum_pool2d_numba(benchmark, parallel):
    x = _share()
    out = np.empty((SHAPE[0], SHAPE[1] // K, SHAPE[2] // K, SHAPE[3]), dtype=np.uint64)
    sum_pool2d(x, K, out=out, parallel=parallel)  # compile / load cache outside timing
    benchmark(sum_pool2d, x, K, None, out, parallel)
    assert np.array_equal(out, _numpy_pool(x))
    _record(benchmark, x)


def test_sum_pool2d_numpy_baseline(benchmark):
    x = _share()
    benchmark(_numpy_pool, x)
    _record(benchmark, x)
