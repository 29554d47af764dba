"""Secure reciprocal 1/x of shared positive fixed-point values (Goldschmidt's iteration)."""

from __future__ import annotations

import math

import numpy as np

from pysmpc.parties.party import Party
from pysmpc.protocols import mul as mul_protocol
from pysmpc.protocols import truncate as truncate_protocol
from pysmpc.protocols.compare import cost_msb, msb
from pysmpc.protocols.cost import Cost
from pysmpc.protocols.mul import mul, square
from pysmpc.protocols.select import bit_to_arith, cost_bit_to_arith
from pysmpc.protocols.truncate import truncate
from pysmpc.sharing.shares import AShare, concat_shares, stack_shares

__all__ = ["reciprocal", "reciprocal_range", "cost", "ITERATIONS", "CONVERGENCE", "RELATIVE_ERROR", "ABS_ERROR"]

# Goldschmidt iterations after the start y0 = 5/4 on a in [1/2, 1): the
# relative error of a*y0 is |e0| <= 3/8, after k iterations e0^(2^k).
ITERATIONS = 4
CONVERGENCE = (3 / 8) ** (2**ITERATIONS)  # 1.5e-7: the relative error left by the iteration
# The stated bound |reciprocal(x) - 1/x| <= ABS_ERROR + RELATIVE_ERROR / x on
# [lo, hi] for F = 16: CONVERGENCE plus D's rounding (under 2^-24) in the
# relative part, the last truncation's unit and N's rounding in the absolute.
RELATIVE_ERROR = 2.0**-21
ABS_ERROR = 2.0**-15
# y0 = 5/4 = _START / 2^_START_BITS: a dyadic start keeps N0 = y0 s and
# D0 = x y0 s exactly consistent (Goldschmidt does not correct that error).
_START, _START_BITS = 5, 2
# Outputs (and 1/lo) stay below 2^31 at scale 2^F, as FixedPoint(16, 15).
_FORMAT_LOG2 = 31
_PRODUCT_LOG2 = 61  # products stay below 2^61 before truncation (exact below 2^62)
# D = x y0 s Prod F converges to 1; held at 2^26 its rounding adds under
# 2^-24 relative over the iterations.
_D_SCALE = 26
# a = x s may lie in [0.39, 1.11] (slack around the octave [1/2, 1)) and
# still converge (to 1e-6 relative at the ends); bounds below use these.
_A_MIN, _A_MAX = 0.39, 1.11


def reciprocal_range(frac_bits: int = 16) -> tuple[float, float]:
    """(lo, hi), the default input range: 2^-(31-F) (1/lo is the format's largest value) to 2^(31-F)."""
    _check_frac_bits(frac_bits)
    return 2.0 ** (frac_bits - _FORMAT_LOG2), 2.0 ** (_FORMAT_LOG2 - frac_bits)


def reciprocal(party: Party, x: AShare, frac_bits: int = 16, lo: float | None = None, hi: float | None = None,
               tag: str = "recip") -> AShare:
    """Return [1/x] for x in [lo, hi] (public, 0 < lo < hi), without opening x.

    Range normalisation: with octaves [2^j, 2^(j+1)), j0 = floor(log2 lo)
    and j1 = ceil(log2 hi) - 1, s = 2^-(p+1) for the octave p of x puts
    a = x s in [1/2, 1).

    1. c_j = [x >= 2^j] for j = j0+1 .. j1 by one batched comparison
       (3 rounds), and as 0/1 additive shares by bit_to_arith (1 round).
       s = 2^-(j0+1) - sum_j c_j 2^-(j+1) is then linear in [c_j]: local.
       With j0 = j1 (lo, hi in one octave) s is public: no round.
    2. D0 = x y0 s, y0 = 5/4 (so |1 - D0| <= 3/8): mul (1 round) and
       truncation (1 round); with s public, a truncation only (1 round).
       N0 = y0 s: local.
    3. Goldschmidt: F = 2 - D; N <- N F, D <- D F, 4 times, in one mul and
       one truncation of the stacked (N, D) each (2 rounds each; the
       first is a square when N0 is public; the last updates N only).
       N/D stays 1/x while D -> 1, so N -> 1/x: N = (1 - e0^16) / x.

    Error (F = 16, measured in tests/test_reciprocal.py):
    |reciprocal(x) - 1/x| <= 2^-15 + 2^-21 / x over [lo, hi] (relative
    1.5e-7 from 4 iterations; the rest rounding). Outside [lo, hi]: for x
    in [0.78 2^j0, 2.22 2^j1] (a in [0.39, 1.11]) the iteration still
    converges to about 1e-6 relative; below that the result falls short of
    1/x and stays below 20 2^-(j0+1) (x = 0 gives that value); well above
    2.22 2^j1, and for x < 0, the iteration diverges: meaningless.
    Cost (default range, F = 16: 29 comparisons): 14 rounds; 1135.9 bytes
    per element per computing party (n a multiple of 64); P2 sends 913.4
    bytes per element to P1. lo, hi in one octave (as [1, 2]): 9 rounds,
    136 bytes, P2 176 bytes. See `cost`.
    Ref: range normalisation and Goldschmidt's division as in Catrina &
    Saxena, "Secure Computation with Fixed-Point Numbers" (FC 2010); the
    iteration is Goldschmidt's (MIT M.Sc. thesis, 1964): its two products
    per step are independent, so they share one round, where Newton-Raphson
    (CrypTen, Knott et al., NeurIPS 2021) needs two.
    """
    plan = _Plan(frac_bits, lo, hi)
    flat = x.reshape(-1)
    n = flat.size
    if plan.thresholds:
        # [x >= 2^j] = [2^j - 1ulp - x < 0]: the sign bit of an exact difference.
        below = concat_shares([(-flat).add_public(_encode(2.0**j, frac_bits) - 1) for j in plan.thresholds])
        bits = bit_to_arith(party, msb(party, below, tag=tag + ":cmp"), tag=tag + ":b2a")
        c = bits.reshape(len(plan.thresholds), n)
        # y0 s at scale K for D0 and at scale S_N for N0; both exact (dyadic).
        start_s = _scaled_s(c, plan.thresholds, plan.j0, plan.k_d0 - _START_BITS) * _START
        n0 = _scaled_s(c, plan.thresholds, plan.j0, plan.n_scale - _START_BITS) * _START
        d0 = truncate(party, mul(party, flat, start_s, tag=tag + ":d0"), frac_bits + plan.k_d0 - _D_SCALE,
                      tag=tag + ":d0")
    else:
        start_s_public = _START << (plan.k_d0 - _START_BITS - (plan.j0 + 1))
        d0 = truncate(party, flat * start_s_public, frac_bits + plan.k_d0 - _D_SCALE, tag=tag + ":d0")
        n0 = _START << (plan.n_scale - _START_BITS - (plan.j0 + 1))  # public N0 = y0 s at scale S_N
    # numerator: a share, or a public int while it is y0 s with s public.
    numerator, denominator = n0, d0
    for i in range(ITERATIONS):
        factor = (-denominator).add_public(2 << _D_SCALE)
        last = i == ITERATIONS - 1
        # N at S_N times F at S_D lands at S_N + S_D; truncating by S_D
        # returns N to S_N and D (at 2 S_D) to S_D; the last lands on F.
        shift = plan.n_scale + _D_SCALE - frac_bits if last else _D_SCALE
        if isinstance(numerator, int):
            # N0 is public: N0 F is local, D0 F = 2 D0 - D0^2 needs a square only.
            products = stack_shares([factor * numerator,
                                     denominator * (2 << _D_SCALE) - square(party, denominator, tag=f"{tag}:{i}")])
        elif last:
            products = mul(party, numerator, factor, tag=f"{tag}:{i}")
        else:
            products = mul(party, stack_shares([numerator, denominator]), factor, tag=f"{tag}:{i}")
        products = truncate(party, products, shift, tag=f"{tag}:{i}")
        if last:
            numerator = products
        else:
            numerator, denominator = products[0], products[1]
    return numerator.reshape(x.shape)


def _scaled_s(c: AShare, thresholds: list[int], j0: int, scale: int) -> AShare:
    """[s] at scale 2^scale from the 0/1 shares c_j: 2^-(j0+1) - sum_j c_j 2^-(j+1) (local)."""
    total = c[0] * (-(1 << (scale - thresholds[0] - 1)))
    for row, j in enumerate(thresholds[1:], start=1):
        total = total - c[row] * (1 << (scale - j - 1))
    return total.add_public(1 << (scale - j0 - 1))


class _Plan:
    """Octaves and scales of one reciprocal call; raises ValueError for a range it cannot serve."""

    def __init__(self, frac_bits: int, lo: float | None, hi: float | None):
        default_lo, default_hi = reciprocal_range(frac_bits)
        lo = default_lo if lo is None else float(lo)
        hi = default_hi if hi is None else float(hi)
        if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo < hi):
            raise ValueError(f"reciprocal needs 0 < lo < hi (finite), got lo={lo}, hi={hi}")
        if lo < default_lo * (1 - 1e-12) or hi > default_hi * (1 + 1e-12):
            raise ValueError(f"reciprocal: [lo, hi] = [{lo}, {hi}] leaves [{default_lo}, {default_hi}], where x "
                             f"and 1/x fit the format (F={frac_bits}, I={_FORMAT_LOG2 - frac_bits})")
        self.lo, self.hi = lo, hi
        self.j0 = math.floor(math.log2(lo))
        self.j1 = max(self.j0, math.ceil(math.log2(hi)) - 1)
        self.thresholds = list(range(self.j0 + 1, self.j1 + 1))
        # N <= s / a with s <= 2^-(j0+1) and a >= _A_MIN; F <= 2 - _A_MIN y0.
        n_max_log2 = -(self.j0 + 1) - math.log2(_A_MIN)
        f_max_log2 = math.log2(2 - _A_MIN * _START / (1 << _START_BITS))
        self.n_scale = min(30, math.floor(_PRODUCT_LOG2 - _D_SCALE - n_max_log2 - f_max_log2))
        # y0 s must be exact at S_N: 2^(S_N - j - 1 - START_BITS) integral for j <= j1.
        if self.n_scale < max(frac_bits + 1, self.j1 + 1 + _START_BITS):
            # N must hold 1/lo below 2^61 next to F, and y0 2^-(j1+1) (the
            # top octave's start) exactly: too many octaves for one scale.
            raise ValueError(f"reciprocal: [lo, hi] = [{lo}, {hi}] spans too many octaves for frac_bits={frac_bits} "
                             f"(N would need a scale of at least {max(frac_bits + 1, self.j1 + 1 + _START_BITS)} "
                             f"bits and at most {self.n_scale}): pass a narrower lo, hi")
        # D0 = x (y0 s) at scale F + K below 2^61 for a <= _A_MAX.
        self.k_d0 = math.floor(_PRODUCT_LOG2 - frac_bits - math.log2(_A_MAX * _START / (1 << _START_BITS)))
        if self.k_d0 < self.j1 + 1 + _START_BITS or frac_bits + self.k_d0 <= _D_SCALE:
            raise ValueError(f"reciprocal: hi={hi} is too large for frac_bits={frac_bits}")


def _check_frac_bits(frac_bits: int) -> None:
    if isinstance(frac_bits, bool) or not isinstance(frac_bits, (int, np.integer)):
        raise TypeError(f"frac_bits must be an int, got {frac_bits!r}")
    if not 1 <= frac_bits <= 29:
        raise ValueError(f"reciprocal supports frac_bits in 1..29, got {frac_bits}")


def _encode(value: float, frac_bits: int) -> int:
    return round(value * (1 << frac_bits)) % (1 << 64)


def cost(shape, frac_bits: int = 16, lo: float | None = None, hi: float | None = None) -> Cost:
    plan = _Plan(frac_bits, lo, hi)
    n = int(np.prod(shape))
    j = len(plan.thresholds)
    total = Cost(0, 0, 0)
    if j:
        total = cost_msb(j * n) + cost_bit_to_arith(j * n) + mul_protocol.cost((n,), (n,))
    total = total + truncate_protocol.cost((n,))
    for i in range(ITERATIONS):
        rows = 1 if i == ITERATIONS - 1 else 2
        if i == 0 and not j:
            step = mul_protocol.cost_square((n,))
        else:
            step = mul_protocol.cost((rows, n), (n,))
        total = total + step + truncate_protocol.cost((rows, n))
    return total
