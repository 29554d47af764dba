import numpy as np
import pytest

from helpers import FP, run_shared, signed
from pysmpc.kernels.reference_bits import reference_sum_pool2d
from pysmpc.protocols.pool import avg_pool2d, max_pool2d, sum_pool2d


def test_sum_pool_is_local_and_exact():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 2**64, size=(2, 6, 6, 3), dtype=np.uint64)
    z, parties = run_shared(lambda p, a: sum_pool2d(p, a, 2), x)
    np.testing.assert_array_equal(z, reference_sum_pool2d(x, 2, 2))
    for p in parties:
        assert p.channel.totals().bytes_sent == 0


@pytest.mark.parametrize("k", [2, 3])
def test_avg_pool_within_one_unit(k):
    rng = np.random.default_rng(k)
    values = rng.uniform(-50, 50, size=(2, 7, 7, 4))
    x = FP.encode(values)
    z, parties = run_shared(lambda p, a: avg_pool2d(p, a, k, FP.frac_bits), x)
    h = 7 // k
    windows = signed(x)[:, : h * k, : h * k, :].reshape(2, h, k, h, k, 4).astype(np.float64)
    expected = windows.mean(axis=(2, 4)) / FP.scale
    # one unit from truncation, plus the encoding error of 1/k^2 times the window sum
    inv_error = abs(round(FP.scale / (k * k)) / FP.scale - 1 / (k * k))
    bound = 1.0 / FP.scale + np.abs(windows.sum(axis=(2, 4)) / FP.scale) * inv_error + 1.0 / FP.scale
    assert np.all(np.abs(signed(z) / FP.scale - expected) <= bound)
    assert parties[0].channel.totals(online=True).rounds == 1


def test_max_pool_matches_numpy():
    rng = np.random.default_rng(9)
    values = rng.uniform(-10, 10, size=(3, 6, 6, 2))
    x = FP.encode(values)
    z, parties = run_shared(lambda p, a: max_pool2d(p, a, 2), x)
    expected = signed(x).reshape(3, 3, 2, 3, 2, 2).max(axis=(2, 4))
    np.testing.assert_array_equal(signed(z), expected)
    assert parties[0].channel.totals(online=True).rounds == 8  # two tournament levels of 4 rounds
