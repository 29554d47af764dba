import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from helpers import FP, assert_cost, run_shared, signed
from pysmpc.kernels.bits import unpack_bits
from pysmpc.protocols import compare, relu as relu_protocol, select as select_protocol
from pysmpc.protocols.compare import greater_equal, less_than, msb
from pysmpc.protocols.relu import maximum, relu
from pysmpc.protocols.select import bit_to_arith, select

EDGE = np.array([0, 1, 2**63 - 1, 2**63, 2**64 - 1, 2**62, 2**64 - 2**62], dtype=np.uint64)


def _msb_plain(x):
    return (x >> np.uint64(63)).astype(np.uint64)


@pytest.mark.parametrize("n", [0, 1, 63, 64, 65, 200])
def test_msb_matches_the_sign_bit_and_its_cost(n):
    rng = np.random.default_rng(n)
    x = rng.integers(0, 2**64, size=n, dtype=np.uint64)
    words, parties = run_shared(lambda p, a: msb(p, a), x)
    np.testing.assert_array_equal(unpack_bits(words, n), _msb_plain(x), err_msg=f"n={n}")
    assert_cost(parties, compare.cost_msb(n), f"msb n={n}")


def test_msb_edge_values_and_shapes():
    x = np.tile(EDGE, 3).reshape(3, 7)
    words, _ = run_shared(lambda p, a: msb(p, a), x)
    np.testing.assert_array_equal(unpack_bits(words, x.size), _msb_plain(x.ravel()))


@settings(max_examples=20, deadline=None)
@given(st.lists(st.integers(-(2**62), 2**62), min_size=1, max_size=40),
       st.lists(st.integers(-(2**62), 2**62), min_size=1, max_size=40))
def test_less_than_and_greater_equal(xs, ys):
    n = min(len(xs), len(ys))
    x = np.array(xs[:n], dtype=np.int64).view(np.uint64)
    y = np.array(ys[:n], dtype=np.int64).view(np.uint64)
    lt, _ = run_shared(lambda p, a, b: less_than(p, a, b), x, y)
    ge, _ = run_shared(lambda p, a, b: greater_equal(p, a, b), x, y)
    expected = (np.array(xs[:n]) < np.array(ys[:n])).astype(np.uint64)
    np.testing.assert_array_equal(unpack_bits(lt, n), expected)
    np.testing.assert_array_equal(unpack_bits(ge, n), 1 - expected)


def test_less_than_a_public_value():
    x = FP.encode(np.array([-3.0, -0.5, 0.0, 0.25, 7.0]))
    bound = FP.encode(np.array(0.25))
    words, _ = run_shared(lambda p, a: less_than(p, a, bound), x)
    np.testing.assert_array_equal(unpack_bits(words, 5), [1, 1, 1, 0, 0])


@pytest.mark.parametrize("shape", [(1,), (10,), (4, 3, 2), (130,)])
def test_relu_is_exact_and_costs_four_rounds(shape):
    rng = np.random.default_rng(11)
    values = rng.uniform(-1000, 1000, size=shape)
    x = FP.encode(values)
    z, parties = run_shared(lambda p, a: relu(p, a), x)
    np.testing.assert_array_equal(z, np.where(signed(x) > 0, x, np.uint64(0)))
    assert_cost(parties, relu_protocol.cost(shape))
    assert relu_protocol.cost(shape).rounds == 4


def test_relu_at_the_range_limits():
    x = np.array([2**63 - 1, 2**63, 1, 2**64 - 1, 0], dtype=np.uint64)
    z, _ = run_shared(lambda p, a: relu(p, a), x)
    np.testing.assert_array_equal(z, np.array([2**63 - 1, 0, 1, 0, 0], dtype=np.uint64))


def test_maximum():
    x = FP.encode(np.array([1.0, -2.0, 3.5, 0.0]))
    y = FP.encode(np.array([0.5, -1.0, 3.5, -0.0]))
    z, _ = run_shared(lambda p, a, b: maximum(p, a, b), x, y)
    np.testing.assert_array_equal(z, FP.encode(np.array([1.0, -1.0, 3.5, 0.0])))


def test_select_multiplies_rows_by_bits():
    n, m = 70, 3
    rng = np.random.default_rng(2)
    x = rng.integers(0, 2**64, size=(n, m), dtype=np.uint64)
    signs = rng.integers(0, 2**64, size=n, dtype=np.uint64)

    def program(party, xs, s):
        return select(party, xs, msb(party, s))

    z, parties = run_shared(program, x, signs)
    expected = x * _msb_plain(signs)[:, None]
    np.testing.assert_array_equal(z, expected)
    assert_cost(parties, compare.cost_msb(n) + select_protocol.cost_select(n, n * m))


def test_bit_to_arith():
    rng = np.random.default_rng(4)
    s = rng.integers(0, 2**64, size=100, dtype=np.uint64)
    z, parties = run_shared(lambda p, a: bit_to_arith(p, msb(p, a)), s)
    np.testing.assert_array_equal(z, _msb_plain(s))
    assert_cost(parties, compare.cost_msb(100) + select_protocol.cost_bit_to_arith(100))


def test_relu_of_a_truncation_in_four_rounds():
    from pysmpc.protocols.relu import relu_truncated

    rng = np.random.default_rng(8)
    values = rng.integers(-(2**45), 2**45, size=300)
    values[:4] = [0, -1, 1, -(2**18)]
    x = values.astype(np.int64).view(np.uint64)
    z, parties = run_shared(lambda p, a: relu_truncated(p, a, 18), x)
    expected = np.maximum(values >> 18, 0)
    error = signed(z) - expected
    assert np.all((error == 0) | (error == 1)), (values[error > 1], signed(z)[error > 1])
    assert np.all(signed(z)[values < 0] == 0)
    assert_cost(parties, relu_protocol.cost_truncated((300,)))
    assert relu_protocol.cost_truncated((300,)).rounds == 4
