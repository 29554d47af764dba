"""Secure ReLU, matmul and conv2d in-process, beside plaintext numpy in the same run.

Run: pytest bench/bench_protocols.py --benchmark-only
Each secure benchmark records, in extra_info, the online bytes each computing
party sends per element and the rounds of one call (from cluster.stats()).
"""

import numpy as np
import pytest

from pysmpc import LocalCluster

RELU_SIZES = [10**3, 10**4, 10**5, 10**6]
# The seed CNN's convolutions (NHWC input, HWIO weights) and its dense layer.
CONV_SHAPES = {
    "conv1": ((28, 28, 1), (3, 3, 1, 16)),
    "conv2": ((13, 13, 16), (3, 3, 16, 32)),
    "conv3": ((5, 5, 32), (3, 3, 32, 64)),
}


@pytest.fixture(scope="module")
def cluster():
    with LocalCluster() as c:
        yield c


def _record_cost(benchmark, cluster, fn, elements):
    cluster.reset_stats()
    fn().free()
    p0 = cluster.stats()["P0"]
    online = {t: s for t, s in p0.items() if not t.startswith(("dealer", "setup"))}
    sent = sum(s["bytes_sent"] for s in online.values())
    rounds = sum(s["rounds"] for s in online.values())
    dealer = sum(s["bytes_sent"] for s in cluster.stats()["P2"].values())
    benchmark.extra_info.update(
        elements=elements,
        rounds=rounds,
        bytes_sent_per_party=sent,
        bytes_per_element=sent / max(elements, 1),
        dealer_bytes=dealer,
    )


@pytest.mark.parametrize("n", RELU_SIZES)
def test_relu_plaintext_numpy(benchmark, n):
    x = np.random.default_rng(0).uniform(-10, 10, n)
    benchmark.group = f"relu n={n}"
    benchmark(np.maximum, x, 0.0)


@pytest.mark.parametrize("n", RELU_SIZES)
def test_relu_secure_in_process(benchmark, cluster, n):
    x = cluster.share(np.random.default_rng(0).uniform(-10, 10, n))
    benchmark.group = f"relu n={n}"
    _record_cost(benchmark, cluster, x.relu, n)
    rounds = 1 if n >= 10**6 else 5
    benchmark.pedantic(lambda: x.relu().free(), rounds=rounds, iterations=1)
    benchmark.extra_info["elements_per_s"] = n / benchmark.stats.stats.mean


@pytest.mark.parametrize("batch", [1, 64])
@pytest.mark.parametrize("layer", sorted(CONV_SHAPES))
def test_conv_plaintext_numpy(benchmark, layer, batch):
    (h, w, c), k = CONV_SHAPES[layer]
    rng = np.random.default_rng(1)
    x, kernel = rng.uniform(-1, 1, (batch, h, w, c)), rng.uniform(-1, 1, k)
    benchmark.group = f"conv {layer} batch={batch}"
    benchmark(_conv_float, x, kernel)


@pytest.mark.parametrize("batch", [1, 64])
@pytest.mark.parametrize("layer", sorted(CONV_SHAPES))
def test_conv_secure_in_process(benchmark, cluster, layer, batch):
    (h, w, c), k = CONV_SHAPES[layer]
    rng = np.random.default_rng(1)
    x = cluster.share(rng.uniform(-1, 1, (batch, h, w, c)))
    kernel = cluster.share(rng.uniform(-1, 1, k))
    benchmark.group = f"conv {layer} batch={batch}"
    fn = lambda: x.conv2d(kernel)  # noqa: E731 - Beaver conv + truncation
    _record_cost(benchmark, cluster, fn, batch)
    benchmark.pedantic(lambda: fn().free(), rounds=5, iterations=1)


@pytest.mark.parametrize("batch", [1, 64, 256])
def test_dense_secure_in_process(benchmark, cluster, batch):
    rng = np.random.default_rng(2)
    x = cluster.share(rng.uniform(-1, 1, (batch, 64)))
    w = cluster.share(rng.uniform(-1, 1, (64, 10)))
    benchmark.group = f"dense 64x10 batch={batch}"
    fn = lambda: x @ w  # noqa: E731
    _record_cost(benchmark, cluster, fn, batch)
    benchmark.pedantic(lambda: fn().free(), rounds=5, iterations=1)


@pytest.mark.parametrize("batch", [1, 64, 256])
def test_dense_plaintext_numpy(benchmark, batch):
    rng = np.random.default_rng(2)
    x, w = rng.uniform(-1, 1, (batch, 64)), rng.uniform(-1, 1, (64, 10))
    benchmark.group = f"dense 64x10 batch={batch}"
    benchmark(np.matmul, x, w)


def _conv_float(x, w):
    n, h, wd, c = x.shape
    kh, kw, _, o = w.shape
    oh, ow = h - kh + 1, wd - kw + 1
    cols = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(1, 2))  # n,oh,ow,c,kh,kw
    cols = cols.transpose(0, 1, 2, 4, 5, 3).reshape(n * oh * ow, kh * kw * c)
    return (cols @ w.reshape(kh * kw * c, o)).reshape(n, oh, ow, o)
