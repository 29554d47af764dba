"""SGD with momentum on shares (protocols.sgd) against float, with cost."""

import numpy as np
import pytest

from helpers import FP, assert_cost, run_shared, signed
from pysmpc.protocols import sgd
from pysmpc.sharing.fixedpoint import FixedPoint


def test_two_momentum_steps_match_float_within_two_units():
    rng = np.random.default_rng(4)
    w = rng.uniform(-1, 1, (6, 5))
    b = rng.uniform(-1, 1, (5,))
    g_w = [rng.uniform(-30, 30, w.shape) for _ in range(2)]  # batch sums: 2F fractional bits
    g_b = [rng.uniform(-30, 30, b.shape) for _ in range(2)]  # F fractional bits
    f2 = FixedPoint(frac_bits=32, int_bits=28)
    lr, batch, mu = 0.1, 64, 0.9

    def program(party, w_s, b_s, gw0, gb0, gw1, gb1):
        weights, velocities = [w_s, b_s], None
        for gw, gb in ((gw0, gb0), (gw1, gb1)):
            weights, velocities = sgd.sgd_momentum(party, weights, velocities, [gw, gb], [32, 16], lr=lr,
                                                   batch=batch, momentum=mu)
        return weights

    (w_new, b_new), parties = run_shared(program, FP.encode(w), FP.encode(b), f2.encode(g_w[0]), FP.encode(g_b[0]),
                                         f2.encode(g_w[1]), FP.encode(g_b[1]), record=True)
    ref_w, ref_b, v_w, v_b = w.copy(), b.copy(), 0, 0
    for gw, gb in zip(g_w, g_b):
        v_w, v_b = mu * v_w + gw, mu * v_b + gb
        ref_w, ref_b = ref_w - lr / batch * v_w, ref_b - lr / batch * v_b
    # Each step: the velocity's truncation (< 1 unit, times lr/batch), the
    # step's truncation (< 1 unit) and the encoding of momentum (2^-17 of v).
    bound = 2 * 2.0**-16 + 4 * lr / batch * 2.0**-16 * 40
    assert np.abs(signed(w_new) / 2**16 - ref_w).max() <= bound
    assert np.abs(signed(b_new) / 2**16 - ref_b).max() <= bound
    assert_cost(parties, sgd.cost([30, 5]) + sgd.cost([30, 5]))


def test_truncation_is_unbiased_stochastic_rounding():
    """An update of 0.3 units in the last place moves the weights by 0.3 units on average, not 0."""
    n = 20000
    w = np.zeros(n)
    g = np.full(n, 0.3 * 2.0**-16 * 64 / 0.5)  # lr / batch * g = 0.3 units

    def program(party, w_s, g_s):
        (new,), _ = sgd.sgd_momentum(party, [w_s], None, [g_s], [16], lr=0.5, batch=64, momentum=0.0)
        return new

    out, _ = run_shared(program, FP.encode(w), FP.encode(g))
    mean_units = -signed(out).mean()
    assert abs(mean_units - 0.3) < 0.03, mean_units


def test_bad_arguments_are_refused():
    x = FP.encode(np.zeros(3))
    with pytest.raises(ValueError, match="momentum < 1"):
        run_shared(lambda p, w, g: sgd.sgd_momentum(p, [w], None, [g], [16], lr=0.1, batch=8, momentum=1.0), x, x)
    with pytest.raises(ValueError, match="below 2"):
        run_shared(lambda p, w, g: sgd.sgd_momentum(p, [w], None, [g], [16], lr=1e-9, batch=8, momentum=0.5), x, x)
