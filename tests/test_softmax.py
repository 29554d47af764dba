import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from helpers import FP, assert_cost, run_shared
from pysmpc.protocols import softmax as softmax_protocol
from pysmpc.protocols.softmax import ABS_ERROR, max_last_axis, softmax


def _exact(x):
    x = FP.decode(FP.encode(x))
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _run(x):
    z, parties = run_shared(lambda p, a: softmax(p, a), FP.encode(x))
    return FP.decode(z), parties


@pytest.mark.parametrize("shape, scale", [((64, 10), 8.0), ((5, 2), 3.0), ((3, 4, 7), 20.0), ((6, 1), 1.0),
                                          ((4, 33), 2.0)])
def test_softmax_matches_the_float_reference(shape, scale):
    x = np.random.default_rng(shape[-1]).uniform(-scale, scale, size=shape)
    got, parties = _run(x)
    error = np.abs(got - _exact(x))
    assert got.shape == shape
    assert error.max() <= ABS_ERROR, f"shape {shape}: worst row {np.unravel_index(error.argmax(), shape)[:-1]}"
    assert_cost(parties, softmax_protocol.cost(shape), f"softmax {shape}")


def test_softmax_over_the_whole_encodable_range_and_ties():
    rng = np.random.default_rng(2)
    x = rng.uniform(-2**14, 2**14, size=(40, 10))  # differences up to 2^15: all but the max underflow
    x[0] = 0.0  # all tied
    x[1, :] = -FP.max_value
    x[1, 3] = FP.max_value  # the widest gap the format holds
    x[2, [1, 5, 8]] = x[2].max() + 1  # a three-way tie
    x[3] = np.linspace(-12, 0, 10)  # around the exp cut-off -(F+1) ln 2
    x[4] = x[4].max() - np.arange(10) * 2**-16  # differences of one unit
    got, parties = _run(x)
    assert np.abs(got - _exact(x)).max() <= ABS_ERROR
    assert np.abs(got.sum(axis=-1) - 1).max() <= 10 * ABS_ERROR
    assert_cost(parties, softmax_protocol.cost(x.shape))


def test_max_last_axis_is_exact():
    x = np.random.default_rng(3).uniform(-1000, 1000, size=(9, 13))
    x[0, 12] = 5000  # the odd column that waits a level
    z, parties = run_shared(lambda p, a: max_last_axis(p, a), FP.encode(x))
    np.testing.assert_array_equal(z, FP.encode(x).view(np.int64).max(axis=1, keepdims=True).view(np.uint64))
    assert_cost(parties, softmax_protocol.cost_max_last_axis(9, 13))
    assert softmax_protocol.cost_max_last_axis(9, 13).rounds == 4 * 4


def test_softmax_rounds_grow_with_log_classes():
    for classes, levels in [(1, 0), (2, 1), (10, 4), (1000, 10)]:
        assert softmax_protocol.cost((8, classes)).rounds == 4 * levels + 38


@pytest.mark.parametrize("shape", [(), (3, 0)])
def test_softmax_needs_a_nonempty_last_axis(shape):
    with pytest.raises(ValueError, match="softmax"):
        run_shared(lambda p, a: softmax(p, a), np.zeros(shape, np.uint64))


@settings(max_examples=8, deadline=None)
@given(st.integers(1, 12), st.lists(st.floats(-2**14, 2**14), min_size=12, max_size=12))
def test_softmax_property(classes, values):
    x = np.array(values[:classes]).reshape(1, classes)
    got, _ = _run(x)
    assert np.abs(got - _exact(x)).max() <= ABS_ERROR, f"x={x}"
