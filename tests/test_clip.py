import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from helpers import FP, assert_cost, run_shared
from pysmpc.protocols import clip as clip_protocol
from pysmpc.protocols.clip import clip, relu6

EDGES = np.array([0.0, 2**-16, -(2**-16), 6.0, 6.0 - 2**-16, 6.0 + 2**-16, FP.max_value, -FP.max_value])


def _clip_exact(x, lo, hi):
    """The clip of x's encoding to the encoded bounds, as ring values."""
    ring = FP.encode(x).view(np.int64)
    lo_ring = None if lo is None else FP.encode(lo).view(np.int64)
    hi_ring = None if hi is None else FP.encode(hi).view(np.int64)
    return np.clip(ring, lo_ring, hi_ring).view(np.uint64)


def test_relu6_is_exact_over_the_whole_encodable_range():
    x = np.concatenate([np.linspace(-10, 10, 2001), np.linspace(-FP.max_value, FP.max_value, 101), EDGES])
    z, parties = run_shared(lambda p, a: relu6(p, a), FP.encode(x))
    np.testing.assert_array_equal(z, _clip_exact(x, 0.0, 6.0))
    assert_cost(parties, clip_protocol.cost_relu6(x.shape), "relu6")
    assert clip_protocol.cost_relu6(x.shape).rounds == 4


@pytest.mark.parametrize("lo, hi", [(-1.5, 2.25), (None, 0.5), (-3.0, None), (1.0, 1.0), (-2**14, 2**14)])
def test_clip_to_any_bounds(lo, hi):
    rng = np.random.default_rng(5)
    x = np.concatenate([rng.uniform(-5, 5, size=500), EDGES, [-1.5, 2.25, 0.5, -3.0, 1.0]])
    z, parties = run_shared(lambda p, a: clip(p, a, lo, hi), FP.encode(x))
    np.testing.assert_array_equal(z, _clip_exact(x, lo, hi), err_msg=f"lo={lo} hi={hi}")
    sides = (lo is not None) + (hi is not None)
    assert_cost(parties, clip_protocol.cost(x.shape, sides), f"clip({lo}, {hi})")


def test_clip_keeps_batch_axes():
    x = np.random.default_rng(8).uniform(-10, 10, size=(3, 4, 5))
    z, parties = run_shared(lambda p, a: relu6(p, a), FP.encode(x))
    assert z.shape == x.shape
    np.testing.assert_array_equal(z, _clip_exact(x, 0.0, 6.0))
    assert_cost(parties, clip_protocol.cost_relu6(x.shape))


@pytest.mark.parametrize("lo, hi, message", [(2.0, 1.0, "lo <= hi"), (None, None, "at least one bound"),
                                             (float("nan"), 1.0, "finite"), (0.0, float("inf"), "finite")])
def test_bad_bounds_are_refused(lo, hi, message):
    with pytest.raises(ValueError, match=message):
        run_shared(lambda p, a: clip(p, a, lo, hi), np.zeros(2, np.uint64))


@settings(max_examples=15, deadline=None)
@given(st.lists(st.floats(-FP.max_value, FP.max_value), min_size=1, max_size=40),
       st.floats(-100, 100), st.floats(0, 200))
def test_clip_property(values, lo, width):
    x = np.array(values)
    z, _ = run_shared(lambda p, a: clip(p, a, lo, lo + width), FP.encode(x))
    np.testing.assert_array_equal(z, _clip_exact(x, lo, lo + width), err_msg=f"x={values} lo={lo} hi={lo + width}")
