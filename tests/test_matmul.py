import numpy as np
import pytest

from helpers import assert_cost, run_shared
from pysmpc import ring
from pysmpc.protocols import matmul as matmul_protocol
from pysmpc.protocols.matmul import matmul, matmul_fixed, share_fixed_operand


@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (4, 7, 3), (1, 20, 10), (16, 1, 5), (0, 3, 2)])
def test_matmul_is_exact_and_costs_one_round(m, k, n):
    rng = np.random.default_rng(m * 100 + k * 10 + n)
    x = rng.integers(0, 2**64, size=(m, k), dtype=np.uint64)
    y = rng.integers(0, 2**64, size=(k, n), dtype=np.uint64)
    z, parties = run_shared(lambda p, a, b: matmul(p, a, b), x, y)
    np.testing.assert_array_equal(z, ring.matmul(x, y), err_msg=f"({m},{k})@({k},{n})")
    assert_cost(parties, matmul_protocol.cost(x.shape, y.shape), f"matmul {m},{k},{n}")


def test_fixed_weights_are_opened_once_and_reused():
    rng = np.random.default_rng(7)
    w = rng.integers(0, 2**64, size=(6, 4), dtype=np.uint64)
    xs = [rng.integers(0, 2**64, size=(3, 6), dtype=np.uint64) for _ in range(3)]

    def program(party, w_share, *x_shares):
        share_fixed_operand(party, w_share, key="w")
        return [matmul_fixed(party, x, key="w") for x in x_shares]

    outs, parties = run_shared(program, w, *xs)
    for x, z in zip(xs, outs):
        np.testing.assert_array_equal(z, ring.matmul(x, w))
    # One opening of W (1 round, 8*24 bytes), then one of E per query.
    once = matmul_protocol.cost_open_weights(w.shape)
    per_query = matmul_protocol.cost_fixed((3, 6), w.shape)
    total = once + per_query + per_query + per_query
    assert_cost(parties, total, "fixed-weight matmul x3")


def test_shape_mismatch_is_a_clear_error():
    x = np.zeros((2, 3), np.uint64)
    with pytest.raises(ValueError, match=r"\(m,k\) @ \(k,n\)"):
        run_shared(lambda p, a, b: matmul(p, a, b), x, x)
