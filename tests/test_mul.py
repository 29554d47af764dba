import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from helpers import FP, assert_cost, run_shared, signed
from pysmpc.protocols import mul as mul_protocol
from pysmpc.protocols.mul import mul

EDGE = np.array([0, 1, 2**63 - 1, 2**63, 2**64 - 1, 12345], dtype=np.uint64)


@pytest.mark.parametrize("shape", [(0,), (1,), (7,), (3, 5)])
def test_mul_is_exact_in_the_ring_and_costs_one_round(shape):
    rng = np.random.default_rng(1)
    x = rng.integers(0, 2**64, size=shape, dtype=np.uint64)
    y = rng.integers(0, 2**64, size=shape, dtype=np.uint64)
    z, parties = run_shared(lambda p, a, b: mul(p, a, b), x, y)
    np.testing.assert_array_equal(z, x * y, err_msg=f"shape {shape}")
    assert_cost(parties, mul_protocol.cost(shape, shape), f"mul {shape}")


def test_mul_edge_values():
    x = np.repeat(EDGE, len(EDGE))
    y = np.tile(EDGE, len(EDGE))
    z, _ = run_shared(lambda p, a, b: mul(p, a, b), x, y)
    np.testing.assert_array_equal(z, x * y)


def test_mul_broadcasts_a_row():
    x = np.arange(12, dtype=np.uint64).reshape(3, 4)
    y = np.array([[2, 3, 5, 7]], dtype=np.uint64)
    z, parties = run_shared(lambda p, a, b: mul(p, a, b), x, y)
    np.testing.assert_array_equal(z, x * y)
    assert_cost(parties, mul_protocol.cost(x.shape, y.shape))


def test_share_times_share_is_not_local():
    from pysmpc.sharing.shares import AShare

    a = AShare(np.zeros(3, np.uint64), 0)
    with pytest.raises(TypeError, match="protocols.mul"):
        a * a


@settings(max_examples=15, deadline=None)
@given(st.lists(st.floats(-100, 100), min_size=1, max_size=20))
def test_fixed_point_product_after_truncation(values):
    from pysmpc.protocols.truncate import truncate

    x = np.array(values)
    y = x[::-1].copy()
    z, _ = run_shared(lambda p, a, b: truncate(p, mul(p, a, b), FP.frac_bits), FP.encode(x), FP.encode(y))
    exact = [int(a) * int(b) for a, b in zip(signed(FP.encode(x)), signed(FP.encode(y)))]
    floor = np.array([e >> FP.frac_bits for e in exact])
    error = signed(z) - floor
    assert np.all((error == 0) | (error == 1)), (x, y, signed(z), floor)


@pytest.mark.parametrize("shape", [(0,), (1,), (70,), (3, 5)])
def test_square_is_exact_in_the_ring_and_costs_half_a_mul(shape):
    from pysmpc.protocols.mul import square

    rng = np.random.default_rng(7)
    x = rng.integers(0, 2**64, size=shape, dtype=np.uint64)
    if x.size >= len(EDGE):
        x.reshape(-1)[: len(EDGE)] = EDGE
    z, parties = run_shared(lambda p, a: square(p, a), x)
    np.testing.assert_array_equal(z, x * x, err_msg=f"shape {shape}")
    assert_cost(parties, mul_protocol.cost_square(shape), f"square {shape}")
    n = int(np.prod(shape))
    assert mul_protocol.cost_square(shape).bytes_sent * 2 == mul_protocol.cost(shape, shape).bytes_sent or n == 0


@pytest.mark.parametrize("w_shape", [(3,), (1, 1, 3), (4, 5, 3)])
def test_mul_fixed_broadcasts_a_fixed_weight_and_opens_only_x(w_shape):
    from helpers import assert_cost
    from pysmpc.protocols.matmul import cost_open_weights, share_fixed_operand
    from pysmpc.protocols.mul import cost_fixed, mul_fixed

    rng = np.random.default_rng(len(w_shape))
    w = rng.integers(0, 2**64, size=w_shape, dtype=np.uint64)
    xs = [rng.integers(0, 2**64, size=(2, 4, 5, 3), dtype=np.uint64) for _ in range(2)]

    def program(party, w_share, *x_shares):
        share_fixed_operand(party, w_share, key="scale")
        return [mul_fixed(party, x, "scale") for x in x_shares]

    outs, parties = run_shared(program, w, *xs)
    for x, z in zip(xs, outs):
        np.testing.assert_array_equal(z, x * w)
    assert_cost(parties, cost_open_weights(w.shape) + cost_fixed(xs[0].shape) + cost_fixed(xs[1].shape))


def test_mul_fixed_refuses_a_weight_that_does_not_broadcast():
    from pysmpc.protocols.matmul import share_fixed_operand
    from pysmpc.protocols.mul import mul_fixed

    def program(party, w_share, x_share):
        share_fixed_operand(party, w_share, key="bad")
        return mul_fixed(party, x_share, "bad")

    with pytest.raises(ValueError, match="does not broadcast"):
        run_shared(program, np.zeros((2, 3), np.uint64), np.zeros((4, 3), np.uint64))
