"""relu that keeps its comparison bit, and the backward pass that reuses it (protocols.relu_grad)."""

import numpy as np
import pytest

from helpers import FP, assert_cost, run_shared, signed
from pysmpc.protocols import relu_grad


def test_forward_truncates_keeps_the_bit_and_backward_reuses_it():
    rng = np.random.default_rng(8)
    x = rng.uniform(-3, 3, (130,))
    x[:3] = [0.0, -2.0**-16, 2.0**-16]
    dy = rng.uniform(-5, 5, x.shape)
    x2 = (FP.encode(x).view(np.int64) << 2).view(np.uint64)  # x with F + 2 fractional bits (a pooled sum, say)

    def program(party, xs, dys):
        y, keep = relu_grad.relu_truncated_keep(party, xs, 2)
        return y, relu_grad.relu_backward(party, dys, keep)

    (y, dx), parties = run_shared(program, x2, FP.encode(dy), record=True)
    assert np.abs(signed(y) / 2**16 - np.maximum(x, 0)).max() <= 2.0**-16
    # relu'(x) = 1 for x >= 0 (0 included), as the msb is 0 there; exact.
    np.testing.assert_array_equal(signed(dx), np.where(x >= 0, signed(FP.encode(dy)), 0))
    assert_cost(parties, relu_grad.cost_forward(x.shape) + relu_grad.cost_backward(x.shape))


def test_backward_refuses_a_gradient_of_another_size():
    def program(party, xs, dys):
        _, keep = relu_grad.relu_truncated_keep(party, xs, 2)
        return relu_grad.relu_backward(party, dys, keep)

    with pytest.raises(ValueError, match="kept bits"):
        run_shared(program, FP.encode(np.zeros(4)), FP.encode(np.zeros(5)))
