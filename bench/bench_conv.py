"""Benchmark ring conv2d (pysmpc.ring.conv2d) on the seed MNIST CNN's layers.

Run: pytest bench/bench_conv.py --benchmark-only
Layers ('valid', stride 1, 3x3 kernels, NHWC x HWIO), at batch 1 and 64:
  conv1  (N, 28, 28, 1)  -> (N, 26, 26, 16)
  conv2  (N, 13, 13, 16) -> (N, 11, 11, 32)   (after 2x2 average pooling)
  conv3  (N, 5, 5, 32)   -> (N, 3, 3, 64)
and ResNet-20's three 3x3 'same' convolutions at batch 64 (test_conv2d_resnet20):
  stage1 (64, 32, 32, 16) -> (64, 32, 32, 16)
  stage2 (64, 16, 16, 32) -> (64, 16, 16, 32)
  stage3 (64, 8, 8, 64)   -> (64, 8, 8, 64)
beside NumPy float64 convolution by im2col + BLAS matmul.  extra_info
records MACs/s.  Convolution on shares is local: rounds and bytes sent are 0.
"""

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from pysmpc import ring

LAYERS = {"conv1": (28, 1, 16), "conv2": (13, 16, 32), "conv3": (5, 32, 64)}
K = 3


def _numpy_conv_f64(x, w):
    n, h, wd, c = x.shape
    o = w.shape[3]
    win = sliding_window_view(x, (K, K), axis=(1, 2))  # (n, oh, ow, c, K, K)
    oh, ow = win.shape[1], win.shape[2]
    cols = win.transpose(0, 1, 2, 4, 5, 3).reshape(n * oh * ow, K * K * c)
    return (cols @ w.reshape(K * K * c, o)).reshape(n, oh, ow, o)


def _bench_conv(benchmark, group: str, x_shape: tuple, out_channels: int, impl: str, same: bool = False) -> None:
    """Time one 3x3 convolution of uniform ring operands ('valid', or 'same' with zero padding); MACs/s in extra_info."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 2**64, x_shape, dtype=np.uint64, endpoint=False)
    w = rng.integers(0, 2**64, (K, K, x_shape[-1], out_channels), dtype=np.uint64, endpoint=False)
    if impl == "numpy-f64":
        x, w = x.astype(np.float64), w.astype(np.float64)

        def fn(x, w):
            return _numpy_conv_f64(np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))) if same else x, w)
    else:
        def fn(x, w):
            return ring.conv2d(x, w, padding="same" if same else "valid")
    benchmark.group = group
    out = benchmark(fn, x, w)
    macs = out.size * K * K * x_shape[-1]
    benchmark.extra_info.update(
        input=list(x.shape), weights=list(w.shape), macs=macs, macs_per_s=macs / benchmark.stats.stats.median,
        rounds=0, bytes_sent=0, gemm_kernel=ring.gemm_kernel(),
    )


@pytest.mark.parametrize("impl", ["ring", "numpy-f64"])
@pytest.mark.parametrize("batch", [1, 64])
@pytest.mark.parametrize("layer", list(LAYERS))
def test_conv2d(benchmark, layer, batch, impl):
    h, c, o = LAYERS[layer]
    _bench_conv(benchmark, f"{layer} batch {batch}", (batch, h, h, c), o, impl)


RESNET20 = {"stage1": (32, 16), "stage2": (16, 32), "stage3": (8, 64)}


@pytest.mark.parametrize("impl", ["ring", "numpy-f64"])
@pytest.mark.parametrize("stage", list(RESNET20))
def test_conv2d_resnet20(benchmark, stage, impl):
    h, c = RESNET20[stage]
    _bench_conv(benchmark, f"resnet20 {stage} batch 64", (64, h, h, c), c, impl, same=True)
