import numpy as np

from helpers import FP, assert_cost, run_shared
from pysmpc.protocols import tanh as tanh_protocol
from pysmpc.protocols.tanh import ABS_ERROR, tanh


def test_tanh_over_the_whole_encodable_range():
    x = np.concatenate([np.linspace(-20, 20, 4001), np.linspace(-FP.max_value, FP.max_value, 51),
                        [0.0, 2**-16, -(2**-16)]])
    z, parties = run_shared(lambda p, a: tanh(p, a), FP.encode(x))
    got = FP.decode(z)
    error = np.abs(got - np.tanh(FP.decode(FP.encode(x))))
    assert error.max() <= ABS_ERROR, f"x={x[error.argmax()]} got={got[error.argmax()]}"
    assert_cost(parties, tanh_protocol.cost(x.shape), "tanh")


def test_tanh_keeps_batch_axes():
    x = np.random.default_rng(6).uniform(-3, 3, size=(4, 2, 3))
    z, parties = run_shared(lambda p, a: tanh(p, a), FP.encode(x))
    assert z.shape == x.shape
    assert np.abs(FP.decode(z) - np.tanh(FP.decode(FP.encode(x)))).max() <= ABS_ERROR
    assert_cost(parties, tanh_protocol.cost(x.shape))
