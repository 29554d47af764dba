"""Privacy accounting for DP rounds, with Google's dp-accounting (RDP accountant).

Each DP round is the sampled Gaussian mechanism: Poisson sampling with rate
q, then Gaussian noise with multiplier sigma. Epsilon after T rounds at a
given delta comes from dp-accounting's ``RdpAccountant`` on
``SelfComposedDpEvent(PoissonSampledDpEvent(q, GaussianDpEvent(sigma)), T)``:
nothing here computes a privacy bound by hand. The workers use it to keep a
DP series within its budget; ``pysmpc.fl.dp`` uses it to calibrate sigma.
"""

from __future__ import annotations

__all__ = ["StepAccountant", "dp_epsilon", "dp_event", "dp_accounting_module", "MISSING_DP_ACCOUNTING"]

MISSING_DP_ACCOUNTING = ("differential privacy needs Google's dp-accounting package: pip install 'pysmpc[dp]' "
                         "(or pip install dp-accounting)")


def dp_accounting_module():
    try:
        import dp_accounting
    except ImportError as exc:
        raise ImportError(MISSING_DP_ACCOUNTING) from exc
    return dp_accounting


def dp_event(noise_multiplier: float, sample_rate: float, steps: int):
    """The DP event of `steps` sampled Gaussian steps."""
    dpa = dp_accounting_module()
    step = dpa.PoissonSampledDpEvent(sample_rate, dpa.GaussianDpEvent(noise_multiplier))
    return dpa.SelfComposedDpEvent(step, int(steps))


def dp_epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
    """Return epsilon at ``delta`` after ``steps`` sampled Gaussian steps (dp-accounting RDP accountant)."""
    dpa = dp_accounting_module()
    accountant = dpa.rdp.RdpAccountant()
    accountant.compose(dp_event(noise_multiplier, sample_rate, steps))
    return float(accountant.get_epsilon(delta))


class StepAccountant:
    """Epsilon of a series of identical sampled Gaussian steps, fast enough to check before every step.

    The RDP curve of one step is computed once (about 0.3 s); RDP composes
    by addition, so after T steps it is T times that curve, converted to
    epsilon at delta by dp-accounting's ``compute_epsilon`` (well under a
    millisecond). The same numbers as ``dp_epsilon``.
    """

    def __init__(self, noise_multiplier: float, sample_rate: float, delta: float):
        dpa = dp_accounting_module()
        accountant = dpa.rdp.RdpAccountant()
        accountant.compose(dp_event(noise_multiplier, sample_rate, 1))
        self._orders, self._step_rdp = accountant.orders, accountant.rdp
        self.delta = float(delta)

    def epsilon(self, steps: int) -> float:
        """Epsilon at this accountant's delta after `steps` steps (0 for none)."""
        if steps <= 0:
            return 0.0
        from dp_accounting.rdp.rdp_privacy_accountant import compute_epsilon

        return float(compute_epsilon(self._orders, steps * self._step_rdp, self.delta)[0])
