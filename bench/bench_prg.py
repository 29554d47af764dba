"""Benchmark PRG keystream throughput (AES-128-CTR through OpenSSL).

Run: PYTHONPATH=. python -m pytest bench/bench_prg.py --benchmark-only
Each case records bytes/s and GB/s (from the median time) in ``extra_info``; a PRG is local, so
rounds and bytes sent are recorded as 0.
"""

import numpy as np
import pytest

from pysmpc.sharing.prg import PRG

SEED = bytes(range(16))


@pytest.mark.parametrize("nbytes", [1 << 20, 64 << 20], ids=["1MB", "64MB"])
def test_prg_fill(benchmark, nbytes):
    prg = PRG(SEED)
    out = np.ones(nbytes // 8, dtype=np.uint64)  # touched: no page faults timed
    benchmark(prg.fill, out)
    median = benchmark.stats.stats.median
    benchmark.extra_info.update(
        bytes=nbytes,
        bytes_per_s=nbytes / median,
        gb_per_s=nbytes / median / 1e9,
        rounds=0,
        bytes_sent=0,
    )


def test_prg_random_bits_1m(benchmark):
    prg = PRG(SEED)
    n = 1 << 20
    benchmark(prg.random_bits, n)
    median = benchmark.stats.stats.median
    benchmark.extra_info.update(bits=n, bytes_per_s=n / 8 / median, rounds=0, bytes_sent=0)
