import numpy as np

from helpers import FP, run_shared
from pysmpc.protocols.argmax import argmax


def test_argmax_one_hot_matches_numpy_with_ties_to_the_lower_index():
    rng = np.random.default_rng(12)
    values = rng.uniform(-20, 20, size=(9, 10))
    values[0, 3] = values[0, 7] = 100.0  # a tie
    z, parties = run_shared(lambda p, a: argmax(p, a), FP.encode(values))
    expected = np.zeros((9, 10), np.uint64)
    expected[np.arange(9), values.argmax(axis=1)] = 1
    np.testing.assert_array_equal(z, expected)
    assert parties[0].channel.totals(online=True).rounds == 4 * 4  # ceil(log2(10)) levels of 4 rounds
