"""Softmax cross-entropy gradient on shares (protocols.softmax_ce) against float, with cost."""

import numpy as np
import pytest

from helpers import FP, assert_cost, run_shared, signed
from pysmpc.graph.backward import softmax_cross_entropy
from pysmpc.protocols import softmax_ce


def test_gradient_is_softmax_minus_onehot_within_the_bound():
    rng = np.random.default_rng(9)
    logits = rng.uniform(-12, 12, (64, 10))
    labels = rng.integers(0, 10, 64)
    onehot = np.eye(10)[labels]

    def program(party, z, y):
        grad, _ = softmax_ce.softmax_cross_entropy_grad(party, z, y)
        return grad

    grad, parties = run_shared(program, FP.encode(logits), FP.encode(onehot), record=True)
    _, expected = softmax_cross_entropy(logits, labels)
    assert np.abs(signed(grad) / 2**16 - expected).max() <= softmax_ce.ABS_ERROR
    assert_cost(parties, softmax_ce.cost(logits.shape))


def test_shapes_must_agree():
    with pytest.raises(ValueError, match="must both be"):
        run_shared(lambda p, z, y: softmax_ce.softmax_cross_entropy_grad(p, z, y),
                   FP.encode(np.zeros((2, 3))), FP.encode(np.zeros((2, 4))))
