"""Privacy accounting for DP rounds, with Google's dp-accounting (RDP accountant).

Each DP round is the sampled Gaussian mechanism: Poisson sampling with rate
q, then Gaussian noise with multiplier sigma. Epsilon after T rounds at a
given delta comes from dp-accounting's ``RdpAccountant`` on
``SelfComposedDpEvent(PoissonSampledDpEvent(q, GaussianDpEvent(sigma)), T)``:
nothing here computes a privacy bound by hand. The workers use it to keep a
DP series within its budget; ``pysmpc.fl.dp`` uses it to calibrate sigma.
"""

from __future__ import annotations

__all__ = ["dp_epsilon", "dp_event", "dp_accounting_module", "MISSING_DP_ACCOUNTING"]

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
