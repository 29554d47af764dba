"""DP-SGD pieces: per-example clipping at the owners, privacy accounting with Google's dp-accounting.

The mechanism, per step: every owner samples each of its examples with
probability q (Poisson sampling), clips each sampled example's gradient to
L2 norm C and sends the sum of the clipped gradients to the cluster as
shares; P0 and P1 each add N(0, (sigma C)^2) noise to their share of the
total (every round of a DP series, ``Aggregator.open_dp_series``: the
workers fix sigma, C, q and the budget and keep the accountant), and only
the noisy sum is revealed. One example changes the sum by at most C (add/remove
neighbours), so the step is the sampled Gaussian mechanism with noise
multiplier sigma as long as at least one of P0's and P1's noises stays in:
the guarantee below assumes no more than one of the three parties is
corrupted (the cluster's threat model). The revealed sum carries both
noises, variance 2 (sigma C)^2: utility pays for noise twice, privacy is
counted once.

The accountant is dp-accounting's RDP accountant (``RdpAccountant``) on
``PoissonSampledDpEvent(q, GaussianDpEvent(sigma))``, and sigma for a
target epsilon comes from ``dp_accounting.calibrate_dp_mechanism``: nothing
here computes a privacy bound by hand. Install with ``pip install
'pysmpc[dp]'``.
"""

from __future__ import annotations

import numpy as np

from pysmpc.runtime.accounting import dp_accounting_module as _dp_accounting
from pysmpc.runtime.accounting import dp_epsilon
from pysmpc.runtime.accounting import dp_event as _event

__all__ = ["PrivacyAccountant", "clip_and_sum", "dp_epsilon", "noise_multiplier_for"]


def clip_and_sum(per_example_grads: list, clip_norm: float) -> tuple[list, np.ndarray]:
    """Clip each example's whole gradient to L2 norm ``clip_norm`` and sum over the examples.

    Args:
        per_example_grads: arrays with a leading batch axis (the same batch
            size for all), together one gradient per example.
        clip_norm: C.

    Returns:
        (sums, norms): the summed clipped gradients, shaped like the inputs
        without the batch axis, and each example's norm before clipping.
        g_n is scaled by min(1, C / ||g_n||).
    """
    n = per_example_grads[0].shape[0]
    sq = np.zeros(n, dtype=np.float64)
    for g in per_example_grads:
        sq += np.einsum("ij,ij->i", g.reshape(n, -1), g.reshape(n, -1), dtype=np.float64)
    norms = np.sqrt(sq)
    scale = np.minimum(1.0, clip_norm / np.maximum(norms, 1e-12))
    sums = [np.tensordot(scale.astype(g.dtype), g, axes=(0, 0)) for g in per_example_grads]
    return sums, norms


def noise_multiplier_for(target_epsilon: float, delta: float, sample_rate: float, steps: int) -> float:
    """Return the smallest noise multiplier sigma whose epsilon after ``steps`` is at most the target.

    Uses ``dp_accounting.calibrate_dp_mechanism`` with the RDP accountant.
    """
    dpa = _dp_accounting()
    sigma = dpa.calibrate_dp_mechanism(
        dpa.rdp.RdpAccountant,
        lambda s: _event(s, sample_rate, steps),
        target_epsilon,
        delta,
        bracket_interval=dpa.ExplicitBracketInterval(0.1, 100.0),
        tol=1e-4,
    )
    # The calibration returns a sigma within tol of the boundary on the safe side; check it.
    if dp_epsilon(sigma, sample_rate, steps, delta) > target_epsilon:
        sigma *= 1.001
    return float(sigma)


class PrivacyAccountant:
    """Track the privacy spent by DP-SGD steps (dp-accounting's RDP accountant).

    >>> acc = PrivacyAccountant(noise_multiplier=1.1, sample_rate=0.01, delta=1e-5)
    >>> acc.step(100); acc.epsilon()
    """

    def __init__(self, noise_multiplier: float, sample_rate: float, delta: float):
        dpa = _dp_accounting()
        self.noise_multiplier = float(noise_multiplier)
        self.sample_rate = float(sample_rate)
        self.delta = float(delta)
        self.steps = 0
        self._accountant = dpa.rdp.RdpAccountant()
        self._step_event = dpa.PoissonSampledDpEvent(self.sample_rate, dpa.GaussianDpEvent(self.noise_multiplier))

    def step(self, count: int = 1) -> None:
        """Record ``count`` steps of the sampled Gaussian mechanism."""
        self._accountant.compose(self._step_event, int(count))
        self.steps += int(count)

    def epsilon(self) -> float:
        """Return epsilon at this accountant's delta for the steps so far."""
        return float(self._accountant.get_epsilon(self.delta)) if self.steps else 0.0
