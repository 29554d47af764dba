import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from helpers import FP, assert_cost, run_shared
from pysmpc.protocols import sigmoid as sigmoid_protocol
from pysmpc.protocols.exp import exp_limits
from pysmpc.protocols.sigmoid import ABS_ERROR, sigmoid

CLAMP = -exp_limits(16)[0]  # (F + 1) ln 2: |x| is clamped there


def _exact(x):
    x = FP.decode(FP.encode(x))
    return 0.5 * (1 + np.tanh(x / 2))  # 1 / (1 + e^-x) without overflow


def test_sigmoid_over_the_whole_encodable_range():
    edges = [0.0, 2**-16, -(2**-16), CLAMP, -CLAMP, CLAMP + 2**-16, -CLAMP - 2**-16, FP.max_value, -FP.max_value]
    x = np.concatenate([np.linspace(-40, 40, 8001), np.linspace(-FP.max_value, FP.max_value, 101), edges])
    z, parties = run_shared(lambda p, a: sigmoid(p, a), FP.encode(x))
    got = FP.decode(z)
    error = np.abs(got - _exact(x))
    assert error.max() <= ABS_ERROR, f"x={x[error.argmax()]} got={got[error.argmax()]}"
    assert got.min() >= 0 and got.max() <= 1
    assert_cost(parties, sigmoid_protocol.cost(x.shape), "sigmoid")
    assert sigmoid_protocol.cost(x.shape).rounds == 32


def test_sigmoid_is_symmetric_and_monotone_to_its_error():
    x = np.linspace(0, 20, 801)
    z, _ = run_shared(lambda p, a: sigmoid(p, a), FP.encode(np.concatenate([x, -x])))
    got = FP.decode(z)
    assert np.abs(got[:801] + got[801:] - 1).max() <= 2 * ABS_ERROR
    assert np.diff(got[:801]).min() >= -2 * ABS_ERROR


@pytest.mark.parametrize("shape", [(0,), (1,), (2, 3, 5)])
def test_sigmoid_keeps_any_shape(shape):
    x = np.random.default_rng(4).uniform(-8, 8, size=shape)
    z, parties = run_shared(lambda p, a: sigmoid(p, a), FP.encode(x))
    got = FP.decode(z)
    assert got.shape == shape and np.all(np.abs(got - _exact(x)) <= ABS_ERROR)
    assert_cost(parties, sigmoid_protocol.cost(shape), f"sigmoid {shape}")


@settings(max_examples=10, deadline=None)
@given(st.lists(st.floats(-FP.max_value, FP.max_value), min_size=1, max_size=30))
def test_sigmoid_property(values):
    x = np.array(values)
    z, _ = run_shared(lambda p, a: sigmoid(p, a), FP.encode(x))
    error = np.abs(FP.decode(z) - _exact(x))
    assert error.max() <= ABS_ERROR, f"x={values} error={error}"
