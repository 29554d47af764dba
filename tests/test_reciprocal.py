import numpy as np
import pytest

from helpers import FP, assert_cost, run_shared
from pysmpc.protocols import reciprocal as reciprocal_protocol
from pysmpc.protocols.reciprocal import ABS_ERROR, CONVERGENCE, RELATIVE_ERROR, reciprocal, reciprocal_range


def _run(x, **kwargs):
    z, parties = run_shared(lambda p, a: reciprocal(p, a, **kwargs), FP.encode(x))
    with np.errstate(divide="ignore"):  # x = 0 in the out-of-range test
        return FP.decode(z), 1 / FP.decode(FP.encode(x)), parties


def _within_bound(got, exact):
    return np.abs(got - exact) <= ABS_ERROR + RELATIVE_ERROR * exact


def test_reciprocal_over_the_default_range():
    lo, hi = reciprocal_range(16)
    assert (lo, hi) == (2.0**-15, 2.0**15)
    # Log-spaced over [2^-15, 2^15 - 2^-16], every octave bound and its neighbours.
    octaves = 2.0 ** np.arange(-15, 15)
    x = np.concatenate([np.geomspace(lo, FP.max_value, 3000), octaves, octaves + 2**-16, octaves[1:] - 2**-16,
                        [FP.max_value]])
    got, exact, parties = _run(x)
    ok = _within_bound(got, exact)
    assert ok.all(), f"x={x[~ok][:5]} got={got[~ok][:5]} exact={exact[~ok][:5]}"
    assert_cost(parties, reciprocal_protocol.cost(x.shape), "default range")
    assert reciprocal_protocol.cost(x.shape).rounds == 14


@pytest.mark.parametrize("lo, hi, rounds", [(1.0, 2.0, 9), (0.5, 10.5, 14), (3.0, 5.0, 14)])
def test_reciprocal_on_a_declared_range(lo, hi, rounds):
    x = np.concatenate([np.linspace(lo, hi, 1001), [lo + 2**-16, hi - 2**-16]])
    got, exact, parties = _run(x, lo=lo, hi=hi)
    assert _within_bound(got, exact).all(), np.abs(got - exact).max()
    assert_cost(parties, reciprocal_protocol.cost(x.shape, lo=lo, hi=hi), f"[{lo}, {hi}]")
    assert reciprocal_protocol.cost(x.shape, lo=lo, hi=hi).rounds == rounds


def test_reciprocal_outside_the_declared_range():
    # [1, 2] is one octave (j0 = 0, j1 = 0). Documented: the iteration still
    # converges for a = x/2 in [0.39, 1.11], i.e. x in [0.78, 2.22]; further
    # below it falls short of 1/x and stays below 20 * 2^-(j0+1) = 10 (x = 0
    # gives 10); far above 2^(j1+1) it diverges.
    slack = np.linspace(0.78, 2.22, 301)
    got, exact, _ = _run(slack, lo=1.0, hi=2.0)
    assert np.all(np.abs(got - exact) <= ABS_ERROR + 1e-6 * exact)
    below = np.array([0.0, 2**-16, 0.01, 0.1, 0.3, 0.5])
    got, exact, _ = _run(below, lo=1.0, hi=2.0)
    assert np.all(got <= np.minimum(exact, 10.0) + ABS_ERROR), got
    assert got[0] == 10.0
    far_above = np.array([3.3, 5.1, 7.3])
    got, exact, _ = _run(far_above, lo=1.0, hi=2.0)
    assert np.all(np.abs(got - exact) > 0.1), got


def test_reciprocal_keeps_any_shape():
    rng = np.random.default_rng(9)
    x = rng.uniform(0.5, 100, size=(2, 3, 4))
    got, exact, parties = _run(x, lo=0.5, hi=100)
    assert got.shape == x.shape and _within_bound(got, exact).all()
    assert_cost(parties, reciprocal_protocol.cost(x.shape, lo=0.5, hi=100))


def test_the_iteration_count_meets_the_relative_bound():
    # Goldschmidt leaves e0^16 with |e0| <= 3/8 from the start 5/4 on [1/2, 1).
    a = np.linspace(0.5, 1, 10_001)
    assert np.abs(1 - a * 1.25).max() <= 3 / 8
    assert CONVERGENCE < RELATIVE_ERROR / 2


@pytest.mark.parametrize("lo, hi, message", [(2.0, 1.0, "0 < lo < hi"), (0.0, 1.0, "0 < lo < hi"),
                                             (float("nan"), 1.0, "finite"), (1.0, 2.0**16, "fit the format"),
                                             (2.0**-17, 1.0, "fit the format")])
def test_bad_ranges_are_refused(lo, hi, message):
    with pytest.raises(ValueError, match=message):
        run_shared(lambda p, a: reciprocal(p, a, lo=lo, hi=hi), np.zeros(2, np.uint64))


@pytest.mark.parametrize("frac_bits, lo, hi", [(20, None, None), (12, 0.01, 100.0)])
def test_reciprocal_at_other_precisions(frac_bits, lo, hi):
    fp = FP.__class__(frac_bits=frac_bits, int_bits=31 - frac_bits)
    low, high = reciprocal_range(frac_bits) if lo is None else (lo, hi)
    x = np.geomspace(low, min(high, fp.max_value), 1001)
    z, _ = run_shared(lambda p, a: reciprocal(p, a, frac_bits=frac_bits, lo=lo, hi=hi), fp.encode(x))
    exact = 1 / fp.decode(fp.encode(x))
    assert np.all(np.abs(fp.decode(z) - exact) <= 2.0 ** (1 - frac_bits) + RELATIVE_ERROR * exact)


def test_a_range_too_wide_for_the_precision_is_refused():
    with pytest.raises(ValueError, match="too many octaves"):
        run_shared(lambda p, a: reciprocal(p, a, frac_bits=12), np.zeros(2, np.uint64))
