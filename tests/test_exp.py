import numpy as np
import pytest

from helpers import FP, assert_cost, run_shared
from pysmpc.protocols import exp as exp_protocol
from pysmpc.protocols.exp import (ABS_ERROR, RELATIVE_ERROR, SQUARINGS, exp, exp_in_range, exp_limits,
                                  exp_nonpositive)

LOW, HIGH = exp_limits(16)
LARGEST = FP.max_value  # 2^15 - 2^-16, what exp returns above HIGH
EDGES = np.array([0.0, 2**-16, -(2**-16), LOW, LOW + 2**-16, LOW - 2**-16, HIGH, HIGH - 2**-16, HIGH + 2**-16,
                  FP.max_value, -FP.max_value, 1.0, -1.0])


def _exact(x):
    """e^x of x's encoding (what the protocol sees), in float64 (inf far above HIGH)."""
    with np.errstate(over="ignore"):
        return np.exp(FP.decode(FP.encode(x)))


def _run(protocol, x, **kwargs):
    z, parties = run_shared(lambda p, a: protocol(p, a, **kwargs), FP.encode(x))
    return FP.decode(z), parties


def test_exp_over_the_whole_encodable_range():
    # Dense over [-40, 40] (beyond both limits), plus edges and the extremes.
    x = np.concatenate([np.linspace(-40, 40, 4001), EDGES])
    got, parties = _run(exp, x)
    exact = _exact(x)
    inside = (x >= LOW) & (x <= HIGH)
    bound = ABS_ERROR + RELATIVE_ERROR * exact
    ratio = np.abs(got - exact)[inside] / bound[inside]
    assert ratio.max() <= 1, f"worst x={x[inside][ratio.argmax()]}: got {got[inside][ratio.argmax()]}"
    # Below LOW the result is 0 exactly; above HIGH the format's largest value.
    np.testing.assert_array_equal(got[x < LOW - 2**-16], 0.0)
    np.testing.assert_array_equal(got[x > HIGH + 2**-16], LARGEST)
    assert_cost(parties, exp_protocol.cost(x.shape), "exp")


def test_exp_is_accurate_to_units_in_the_last_place_for_nonpositive_x():
    x = np.linspace(LOW, 0, 2001)
    got, _ = _run(exp, x)
    assert np.abs(got - _exact(x)).max() <= 2**-15 + 2**-30


def test_exp_nonpositive_over_all_nonpositive_values():
    x = np.concatenate([np.linspace(-14, 0, 2001), np.linspace(-FP.max_value, -14, 301), EDGES[EDGES <= 0]])
    got, parties = _run(exp_nonpositive, x)
    assert np.abs(got - _exact(x)).max() <= ABS_ERROR
    np.testing.assert_array_equal(got[x < LOW - 2**-16], 0.0)
    assert_cost(parties, exp_protocol.cost_nonpositive(x.shape), "exp_nonpositive")


def test_exp_nonpositive_beyond_its_range():
    # Documented: still accurate for 0 < x < ln 4 (the squares stay below
    # 2^62), meaningless well beyond.
    x = np.array([0.25, 0.5, 1.0, 1.3, 3.0])
    got, _ = _run(exp_nonpositive, x)
    exact = _exact(x)
    assert np.all(np.abs(got - exact)[:4] <= ABS_ERROR + RELATIVE_ERROR * exact[:4])
    assert abs(got[4] - exact[4]) > 1


def test_exp_in_range_and_its_documented_failure_below():
    # On [low, 0] as stated; down to -200 the base's cubic is still positive
    # and the result still about 0; below its root (t = -1.596, x = -204)
    # the base is negative and its 128th power wrong (large below x = -322,
    # where the base passes -1).
    x = np.concatenate([np.linspace(LOW, 0, 501), [-50.0, -100.0, -200.0, -250.0, -300.0]])
    got, parties = _run(exp_in_range, x, upper=0.0)
    exact = _exact(x)
    assert np.abs(got - exact)[:-2].max() <= ABS_ERROR
    assert np.all(np.abs(got - exact)[-2:] > ABS_ERROR)
    assert abs(got[-1]) > 1
    assert_cost(parties, exp_protocol.cost_in_range(x.shape))


@pytest.mark.parametrize("shape", [(0,), (1,), (3, 4, 5)])
def test_exp_keeps_any_shape(shape):
    rng = np.random.default_rng(3)
    x = rng.uniform(-5, 5, size=shape)
    got, parties = _run(exp, x)
    assert got.shape == shape
    assert np.all(np.abs(got - _exact(x)) <= ABS_ERROR + RELATIVE_ERROR * _exact(x))
    assert_cost(parties, exp_protocol.cost(shape), f"exp {shape}")


def test_exp_at_another_precision():
    fp = FP.__class__(frac_bits=20, int_bits=11)
    low, high = exp_limits(20)
    x = np.linspace(low - 1, high, 801)
    z, _ = run_shared(lambda p, a: exp(p, a, frac_bits=20), fp.encode(x))
    exact = np.exp(fp.decode(fp.encode(x)))
    exact[x < low] = 0
    assert np.all(np.abs(fp.decode(z) - exact) <= 2.0**-19 + RELATIVE_ERROR * exact)


def test_the_relative_error_constant_bounds_the_approximation():
    # (T3(x/m))^m against e^x in float64, with no fixed-point rounding.
    x = np.linspace(0, HIGH, 100_001)
    t = x / 2**SQUARINGS
    approx = (1 + t + t * t / 2 + t**3 / 6) ** (2**SQUARINGS)
    assert np.abs(approx / np.exp(x) - 1).max() <= RELATIVE_ERROR


def test_bad_parameters_are_refused():
    with pytest.raises(ValueError, match="frac_bits in 1..22"):
        run_shared(lambda p, a: exp(p, a, frac_bits=24), np.zeros(2, np.uint64))
    with pytest.raises(ValueError, match="leaves the format|above"):
        run_shared(lambda p, a: exp_in_range(p, a, upper=11.0), np.zeros(2, np.uint64))
    with pytest.raises(TypeError, match="frac_bits must be an int"):
        run_shared(lambda p, a: exp(p, a, frac_bits=16.0), np.zeros(2, np.uint64))
