import numpy as np
import pytest

from helpers import assert_cost, run_shared
from pysmpc import ring
from pysmpc.protocols import conv2d as conv_protocol
from pysmpc.protocols.conv2d import conv2d, conv2d_fixed
from pysmpc.protocols.matmul import cost_open_weights, share_fixed_operand


@pytest.mark.parametrize(
    "x_shape,w_shape,stride,padding",
    [
        ((1, 6, 6, 1), (3, 3, 1, 2), 1, "valid"),
        ((2, 7, 5, 3), (3, 2, 3, 4), 2, "same"),
        ((3, 5, 5, 2), (1, 1, 2, 3), 1, "valid"),
    ],
)
def test_conv2d_is_exact_and_costs_one_round(x_shape, w_shape, stride, padding):
    rng = np.random.default_rng(sum(x_shape))
    x = rng.integers(0, 2**64, size=x_shape, dtype=np.uint64)
    w = rng.integers(0, 2**64, size=w_shape, dtype=np.uint64)
    z, parties = run_shared(lambda p, a, b: conv2d(p, a, b, stride, padding), x, w)
    np.testing.assert_array_equal(z, ring.conv2d(x, w, stride=stride, padding=padding))
    assert_cost(parties, conv_protocol.cost(x_shape, w_shape, stride, padding))


def test_conv2d_with_fixed_weights_over_several_queries():
    rng = np.random.default_rng(3)
    w = rng.integers(0, 2**64, size=(3, 3, 2, 4), dtype=np.uint64)
    xs = [rng.integers(0, 2**64, size=(2, 8, 8, 2), dtype=np.uint64) for _ in range(2)]

    def program(party, w_share, *x_shares):
        share_fixed_operand(party, w_share, key="conv1")
        return [conv2d_fixed(party, x, "conv1") for x in x_shares]

    outs, parties = run_shared(program, w, *xs)
    for x, z in zip(xs, outs):
        np.testing.assert_array_equal(z, ring.conv2d(x, w))
    per_query = conv_protocol.cost_fixed((2, 8, 8, 2), w.shape)
    assert_cost(parties, cost_open_weights(w.shape) + per_query + per_query)


def test_channel_mismatch_is_a_clear_error():
    x = np.zeros((1, 5, 5, 3), np.uint64)
    w = np.zeros((3, 3, 2, 1), np.uint64)
    with pytest.raises(ValueError, match="channels"):
        run_shared(lambda p, a, b: conv2d(p, a, b), x, w)


def naive_depthwise(x, w, stride):
    """Python ints, one window at a time: the depthwise product's definition mod 2^64."""
    n, h, wd, c = x.shape
    kh, kw, _, m = w.shape
    oh, ow = (h - kh) // stride + 1, (wd - kw) // stride + 1
    out = np.zeros((n, oh, ow, c * m), np.uint64)
    for i in range(oh):
        for j in range(ow):
            patch = x[:, i * stride : i * stride + kh, j * stride : j * stride + kw, :]
            for ch in range(c):
                for k in range(m):
                    total = [sum(int(a) * int(b) for a, b in zip(patch[b_, :, :, ch].ravel(), w[:, :, ch, k].ravel()))
                             for b_ in range(n)]
                    out[:, i, j, ch * m + k] = [t % 2**64 for t in total]
    return out


@pytest.mark.parametrize("stride", [1, 2])
def test_depthwise_conv2d_fixed_is_exact_and_costs_one_round(stride):
    from pysmpc.protocols.conv2d import cost_depthwise_fixed, depthwise_conv2d_fixed

    rng = np.random.default_rng(stride)
    w = rng.integers(0, 2**64, size=(3, 2, 3, 2), dtype=np.uint64)
    x = rng.integers(0, 2**64, size=(2, 6, 5, 3), dtype=np.uint64)

    def program(party, w_share, x_share):
        share_fixed_operand(party, w_share, key="dw")
        return depthwise_conv2d_fixed(party, x_share, "dw", stride)

    z, parties = run_shared(program, w, x)
    np.testing.assert_array_equal(z, naive_depthwise(x, w, stride))
    np.testing.assert_array_equal(ring.depthwise_conv2d(x, w, stride), z)
    assert_cost(parties, cost_open_weights(w.shape) + cost_depthwise_fixed(x.shape, w.shape, stride))
