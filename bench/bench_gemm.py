"""Benchmark the ring GEMM (pysmpc.ring.matmul) beside NumPy.

Run: pytest bench/bench_gemm.py --benchmark-only
Compares, at m = k = n in {64, 256, 1024}:
  ring          pysmpc.ring.matmul, kernel chosen automatically
  ring-<name>   the same with each micro-kernel this CPU can run forced
  numpy-u64     np.matmul on uint64 (NumPy's exact but unblocked loop)
  numpy-f64     np.matmul on float64 (BLAS): the speed a float model gets
extra_info records MACs/s (m*n*k / median time).  GEMM is local: rounds
and bytes sent are 0.
"""

import numpy as np
import pytest

from pysmpc import ring
from pysmpc.kernels import _ring

SIZES = [64, 256, 1024]
IMPLS = ["ring", "ring-scalar", "ring-avx2", "ring-avx512", "numpy-u64", "numpy-f64"]


def _operands(n: int, dtype):
    rng = np.random.default_rng(n)
    a = rng.integers(0, 2**64, (n, n), dtype=np.uint64, endpoint=False)
    b = rng.integers(0, 2**64, (n, n), dtype=np.uint64, endpoint=False)
    return a.astype(dtype), b.astype(dtype)


@pytest.fixture
def forced_kernel():
    before = _ring.gemm_kernel()
    yield _ring.set_gemm_kernel
    _ring.set_gemm_kernel(before)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("n", SIZES)
def test_gemm(benchmark, forced_kernel, n, impl):
    if impl.startswith("ring-"):
        name = impl.split("-", 1)[1]
        if not _ring.gemm_kernel_available(name):
            pytest.skip(f"CPU cannot run the {name} kernel")
        forced_kernel(name)
    dtype = np.float64 if impl == "numpy-f64" else np.uint64
    a, b = _operands(n, dtype)
    fn = ring.matmul if impl.startswith("ring") else np.matmul
    benchmark.group = f"gemm {n}^3"
    if impl == "numpy-u64" and n >= 1024:
        benchmark.pedantic(fn, args=(a, b), rounds=1, iterations=1)  # ~minutes per call
    else:
        benchmark(fn, a, b)
    median = benchmark.stats.stats.median
    benchmark.extra_info.update(
        m=n, k=n, n=n, macs=n**3, macs_per_s=n**3 / median,
        kernel=_ring.gemm_kernel() if impl.startswith("ring") else "",
        threads=ring.get_num_threads() if impl.startswith("ring") else 0,
        rounds=0, bytes_sent=0,
    )
