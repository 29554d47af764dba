"""Max pooling that keeps its tournament bits, and its backward pass (protocols.max_pool_grad), with cost."""

import numpy as np
import pytest

from helpers import FP, assert_cost, run_shared, signed
from pysmpc.graph import backward as plain
from pysmpc.protocols import max_pool_grad


@pytest.mark.parametrize("pool,stride", [((2, 2), (2, 2)), ((3, 3), (1, 1)), ((2, 3), (2, 1))])
def test_forward_is_the_max_and_backward_routes_to_the_first_maximum(pool, stride):
    rng = np.random.default_rng(14)
    x = np.round(rng.uniform(-2, 2, (2, 7, 8, 3)), 1)  # rounded: ties, which go to the first maximum
    x[0, :3, :3, 0] = 0.0
    y_ref, cache = plain.max_pool2d_forward(x, pool, stride)
    dy = rng.uniform(-3, 3, y_ref.shape)
    dx_ref = plain.max_pool2d_backward(cache, dy)

    def program(party, xs, dys):
        y, kept = max_pool_grad.max_pool2d_keep(party, xs, pool, stride)
        return y, max_pool_grad.max_pool2d_backward(party, dys, kept)

    (y, dx), parties = run_shared(program, FP.encode(x), FP.encode(dy), record=True)
    np.testing.assert_array_equal(signed(y), signed(FP.encode(y_ref)))
    np.testing.assert_array_equal(signed(dx), signed(dx_ring(dy, dx_ref, cache)))
    assert_cost(parties, max_pool_grad.cost_forward(y_ref.shape, pool) + max_pool_grad.cost_backward(y_ref.shape,
                                                                                                       pool))


def dx_ring(dy, dx_ref, cache):
    """The float reference's routing applied to the encoded dy (exact: each position sums encoded values)."""
    x, y, (ph, pw), (sh, sw) = cache
    n, oh, ow, c = dy.shape
    enc = signed(FP.encode(dy))
    out = np.zeros(x.shape, np.int64)
    taken = np.zeros(y.shape, dtype=bool)
    for i in range(ph):
        for j in range(pw):
            rows, cols = slice(i, i + sh * (oh - 1) + 1, sh), slice(j, j + sw * (ow - 1) + 1, sw)
            hit = (x[:, rows, cols, :] == y) & ~taken
            taken |= hit
            out[:, rows, cols, :] += enc * hit
    assert np.allclose(out / 2**16, dx_ref, atol=1e-4)
    return out.view(np.uint64)


def test_backward_refuses_a_gradient_of_another_shape():
    def program(party, xs, dys):
        _, kept = max_pool_grad.max_pool2d_keep(party, xs, (2, 2), (2, 2))
        return max_pool_grad.max_pool2d_backward(party, dys, kept)

    with pytest.raises(ValueError, match="the pool's output"):
        run_shared(program, FP.encode(np.zeros((1, 4, 4, 1))), FP.encode(np.zeros((1, 3, 2, 1))))
