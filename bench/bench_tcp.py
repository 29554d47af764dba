"""Beaver matmul, conv2d and ReLU over TCP (three worker processes on loopback).

Run: pytest bench/bench_tcp.py --benchmark-only -p no:randomly
Each operation runs three ways in the same session and benchmark group:
plaintext numpy, the in-process LocalCluster, and TcpCluster (spawned
workers, ephemeral ports, no TLS). Secure benchmarks record in extra_info
the online bytes P0 sends and receives, its online rounds, and the dealer's
bytes (from cluster.stats(); identical for both transports by design).
"""

import numpy as np
import pytest

from pysmpc import LocalCluster
from pysmpc.runtime.tcp import TcpCluster

RELU_SIZES = [10**4, 10**5]
MATMUL_SHAPES = {"dense 64x784@784x10": ((64, 784), (784, 10))}
# The seed CNN's convolutions (NHWC input, HWIO weights), batch 1.
CONV_SHAPES = {
    "conv1": ((1, 28, 28, 1), (3, 3, 1, 16)),
    "conv2": ((1, 13, 13, 16), (3, 3, 16, 32)),
    "conv3": ((1, 5, 5, 32), (3, 3, 32, 64)),
}
BACKENDS = ["local", "tcp"]


@pytest.fixture(scope="module")
def clusters():
    with LocalCluster() as local, TcpCluster(ephemeral_ports=True) as tcp:
        yield {"local": local, "tcp": tcp}


def _record_cost(benchmark, cluster, fn, elements):
    cluster.reset_stats()
    fn().free()
    stats = cluster.stats()
    online = {t: s for t, s in stats["P0"].items() if not t.startswith(("dealer", "setup"))}
    benchmark.extra_info.update(
        elements=elements,
        rounds=sum(s["rounds"] for s in online.values()),
        bytes_sent_p0=sum(s["bytes_sent"] for s in online.values()),
        bytes_received_p0=sum(s["bytes_received"] for s in online.values()),
        dealer_bytes=sum(s["bytes_sent"] for s in stats["P2"].values()),
        per_tag_p0={t: (s["bytes_sent"], s["rounds"]) for t, s in online.items()},
    )


def _run(benchmark, cluster, fn, elements, rounds=5):
    _record_cost(benchmark, cluster, fn, elements)
    benchmark.pedantic(lambda: fn().free(), rounds=rounds, iterations=1, warmup_rounds=1)


@pytest.mark.parametrize("name", sorted(MATMUL_SHAPES))
def test_matmul_plaintext_numpy(benchmark, name):
    (a_shape, b_shape) = MATMUL_SHAPES[name]
    rng = np.random.default_rng(0)
    a, b = rng.uniform(-1, 1, a_shape), rng.uniform(-1, 1, b_shape)
    benchmark.group = f"matmul {name}"
    benchmark(np.matmul, a, b)


@pytest.mark.tcp
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(MATMUL_SHAPES))
def test_matmul_secure(benchmark, clusters, backend, name):
    cluster = clusters[backend]
    (a_shape, b_shape) = MATMUL_SHAPES[name]
    rng = np.random.default_rng(0)
    x, w = cluster.share(rng.uniform(-1, 1, a_shape)), cluster.share(rng.uniform(-1, 1, b_shape))
    benchmark.group = f"matmul {name}"
    _run(benchmark, cluster, lambda: x @ w, a_shape[0] * b_shape[1])  # Beaver matmul + truncation


@pytest.mark.parametrize("layer", sorted(CONV_SHAPES))
def test_conv_plaintext_numpy(benchmark, layer):
    x_shape, k_shape = CONV_SHAPES[layer]
    rng = np.random.default_rng(1)
    x, k = rng.uniform(-1, 1, x_shape), rng.uniform(-1, 1, k_shape)
    benchmark.group = f"conv {layer}"
    benchmark(_conv_float, x, k)


@pytest.mark.tcp
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layer", sorted(CONV_SHAPES))
def test_conv_secure(benchmark, clusters, backend, layer):
    cluster = clusters[backend]
    x_shape, k_shape = CONV_SHAPES[layer]
    rng = np.random.default_rng(1)
    x, k = cluster.share(rng.uniform(-1, 1, x_shape)), cluster.share(rng.uniform(-1, 1, k_shape))
    benchmark.group = f"conv {layer}"
    _run(benchmark, cluster, lambda: x.conv2d(k), x_shape[0])


@pytest.mark.parametrize("n", RELU_SIZES)
def test_relu_plaintext_numpy(benchmark, n):
    x = np.random.default_rng(2).uniform(-10, 10, n)
    benchmark.group = f"relu n={n}"
    benchmark(np.maximum, x, 0.0)


@pytest.mark.tcp
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n", RELU_SIZES)
def test_relu_secure(benchmark, clusters, backend, n):
    cluster = clusters[backend]
    x = cluster.share(np.random.default_rng(2).uniform(-10, 10, n))
    benchmark.group = f"relu n={n}"
    _run(benchmark, cluster, x.relu, n)
    benchmark.extra_info["elements_per_s"] = n / benchmark.stats.stats.mean


def _conv_float(x, w):
    n, h, wd, c = x.shape
    kh, kw, _, o = w.shape
    oh, ow = h - kh + 1, wd - kw + 1
    cols = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(1, 2))  # n,oh,ow,c,kh,kw
    cols = cols.transpose(0, 1, 2, 4, 5, 3).reshape(n * oh * ow, kh * kw * c)
    return (cols @ w.reshape(kh * kw * c, o)).reshape(n, oh, ow, o)
