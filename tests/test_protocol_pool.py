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


def test_padded_average_divides_by_the_elements_each_window_covers():
    from helpers import assert_cost
    from pysmpc.protocols.pool import avg_pool2d_padded, cost_avg_pool2d_padded

    rng = np.random.default_rng(4)
    values = rng.uniform(-20, 20, size=(2, 5, 6, 3))
    x = FP.encode(values)
    pads = (1, 1, 1, 0)
    z, parties = run_shared(lambda p, a: avg_pool2d_padded(p, a, (3, 2), (2, 2), pads, FP.frac_bits), x)
    padded = np.pad(values, ((0, 0), (1, 1), (1, 0), (0, 0)))
    ones = np.pad(np.ones((5, 6)), ((1, 1), (1, 0)))
    want = np.zeros(z.shape)
    for i in range(z.shape[1]):
        for j in range(z.shape[2]):
            window = padded[:, 2 * i : 2 * i + 3, 2 * j : 2 * j + 2, :]
            want[:, i, j, :] = window.sum(axis=(1, 2)) / ones[2 * i : 2 * i + 3, 2 * j : 2 * j + 2].sum()
    assert np.abs(signed(z) / FP.scale - want).max() < 3 * 120 / FP.scale  # a unit plus 1/c's encoding error
    assert_cost(parties, cost_avg_pool2d_padded(z.shape))


def test_padded_rectangular_max_pool_never_picks_the_padding():
    from helpers import assert_cost
    from pysmpc.protocols.pool import cost_max_pool2d

    rng = np.random.default_rng(5)
    values = rng.uniform(-30, -1, size=(2, 5, 4, 2))  # all negative: zero padding would win
    x = FP.encode(values)
    z, parties = run_shared(lambda p, a: max_pool2d(p, a, (3, 2), (2, 1), pads=(1, 1, 0, 1)), x)
    padded = np.pad(signed(x), ((0, 0), (1, 1), (0, 1), (0, 0)), constant_values=np.iinfo(np.int64).min)
    view = np.lib.stride_tricks.sliding_window_view(padded, (3, 2), axis=(1, 2))[:, ::2, ::1]
    np.testing.assert_array_equal(signed(z), view.max(axis=(4, 5)))
    assert_cost(parties, cost_max_pool2d(z.shape, (3, 2)))


@pytest.mark.parametrize("hw", [(4, 4), (3, 5)])
def test_global_pools(hw):
    from helpers import assert_cost
    from pysmpc.protocols.pool import cost_global_avg_pool, cost_global_max_pool, global_avg_pool, global_max_pool

    rng = np.random.default_rng(hw[1])
    values = rng.uniform(-10, 10, size=(2, *hw, 3))
    x = FP.encode(values)
    z, parties = run_shared(lambda p, a: global_max_pool(p, a, keepdims=True), x)
    np.testing.assert_array_equal(signed(z), signed(x).max(axis=(1, 2), keepdims=True))
    assert_cost(parties, cost_global_max_pool(x.shape))
    z, parties = run_shared(lambda p, a: global_avg_pool(p, a, FP.frac_bits), x)
    assert np.abs(signed(z) / FP.scale - values.mean(axis=(1, 2))).max() < 3 * 2**-15
    assert_cost(parties, cost_global_avg_pool(x.shape))
