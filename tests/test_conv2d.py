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
