"""Secure exponential of shared fixed-point values (scaling and squaring)."""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from pysmpc.parties.party import Party
from pysmpc.protocols import mul as mul_protocol
from pysmpc.protocols import truncate as truncate_protocol
from pysmpc.protocols.compare import cost_msb, msb
from pysmpc.protocols.cost import Cost
from pysmpc.protocols.mul import mul, square
from pysmpc.protocols.select import cost_select, select
from pysmpc.protocols.truncate import truncate
from pysmpc.sharing.shares import AShare, concat_shares

__all__ = ["exp", "exp_nonpositive", "exp_in_range", "exp_limits", "cost", "cost_nonpositive", "cost_in_range",
           "SQUARINGS", "RELATIVE_ERROR", "ABS_ERROR"]

# e^x = (e^(x/m))^m with m = 2^SQUARINGS; e^(x/m) from its cubic Taylor
# polynomial T3. (T3(t)/e^t)^m = 1 - m t^4/24 + ...: the relative error of
# the approximation is about x^4 / (24 m^3), 2.2e-4 at x = 10.4.
SQUARINGS = 7
# Formats whose values stay below 2^31 at scale 2^F (F + I = 31, as
# FixedPoint(16, 15)): products of two such values stay below 2^62.
_FORMAT_LOG2 = 31
# Every product is kept below 2^61 before its truncation (which is exact
# below 2^62): one bit for the approximation and truncation errors.
_PRODUCT_LOG2 = 61
# The scale of the Taylor step (the base e^(x/m)): t = x/m is exact at
# scale F + SQUARINGS, and is shifted up to this scale; e^t < 1.09 there.
_BASE_SCALE_MAX = 30
# Bound of the approximation's relative error |T3(x/m)^m / e^x - 1| over
# 0 <= x <= high for F >= 16 (high <= 10.4; tests/test_exp.py checks it).
# For x < 0 the relative error reaches 4e-4 at x = low, where e^x < 2^-17:
# there the absolute bound ABS_ERROR is what counts.
RELATIVE_ERROR = 2.5e-4
# Bound of the absolute error for F = 16 apart from RELATIVE_ERROR e^x: the
# last truncation's unit plus the rest (measured max 1.13 units on [low, 0]).
ABS_ERROR = 2.0**-15


def exp_limits(frac_bits: int = 16) -> tuple[float, float]:
    """(low, high): the input range where exp approximates e^x for F = frac_bits.

    low = -(F + 1) ln 2: below it e^x < 2^-(F+1), half a unit in the last
    place, and exp returns 0. high = ln(2^(31-F) - 2^-F): the largest value
    with I = 31 - F integer bits; above it exp returns that largest value.
    """
    _check_frac_bits(frac_bits)
    low = -(frac_bits + 1) * math.log(2.0)
    high = math.log(2.0 ** (_FORMAT_LOG2 - frac_bits) - 2.0**-frac_bits)
    return low, high


def exp(party: Party, x: AShare, frac_bits: int = 16, tag: str = "exp") -> AShare:
    """Return [e^x] for any encodable x, without opening x or its range.

    1. [x < low] and [x > high] by one batched comparison of the stacked
       (x - low, high - x) (3 rounds; low, high from exp_limits).
    2. [y] = exp_in_range(x) for upper = high (18 rounds): correct on
       [low, high], a meaningless ring value outside.
    3. Replace y where x is out of range: one select of the stacked
       (-y, MAX - y) by those two bits (1 round), added to y: 0 below low,
       MAX = 2^(31-F) - 2^-F (the largest value of the format) above high.

    Error (F = 16, measured over a grid of [-40, 40] in tests/test_exp.py):
    |exp(x) - e^x| <= 2^-15 + 2.5e-4 e^x on [low, high] = [-11.78, 10.40];
    below low the result is 0 (error < 2^-17); above high it is MAX.
    Cost: 22 rounds; 234.8 bytes per element per computing party (n a
    multiple of 64); P2 sends 281.8 bytes per element to P1.
    Ref: Knott et al., "CrypTen" (NeurIPS 2021), its exp (the limit
    (1 + x/2^n)^(2^n)), with a cubic Taylor base as in the scaling and
    squaring method (Higham, SIAM J. Matrix Anal. Appl. 26(4), 2005).
    """
    low, high = exp_limits(frac_bits)
    flat = x.reshape(-1)
    n = flat.size
    low_ring = _encode(low, frac_bits)
    high_ring = _encode(high, frac_bits)
    out_of_range = msb(party, concat_shares([flat - low_ring, (-flat).add_public(high_ring)]), tag=tag + ":cmp")
    y = exp_in_range(party, flat, frac_bits, upper=high, tag=tag)
    largest = (1 << _FORMAT_LOG2) - 1  # 2^(31-F) - 2^-F at scale 2^F
    replacement = select(party, concat_shares([-y, (-y).add_public(largest)]), out_of_range, tag=tag + ":select")
    return (y + replacement[:n] + replacement[n:]).reshape(x.shape)


def exp_nonpositive(party: Party, x: AShare, frac_bits: int = 16, tag: str = "exp") -> AShare:
    """Return [e^x] for x <= 0 (e.g. x - max(x), as softmax does).

    1. [x < low] by comparison (3 rounds).
    2. [y] = exp_in_range(x) for upper = 0 (18 rounds).
    3. y - select(y, [x < low]) (1 round): 0 below low.

    Error (F = 16): |exp(x) - e^x| <= 2^-15 for every x <= 0, 0 exactly
    below low. x > 0 is outside its range: up to x = ln 4 the last square
    stays below 2^62 and the result keeps exp's bound; beyond it is
    meaningless.
    Cost: 22 rounds; 193.4 bytes per element per computing party (n a
    multiple of 64); P2 sends 248.9 bytes per element to P1.
    Ref: as exp.
    """
    low, _ = exp_limits(frac_bits)
    below = msb(party, (x - _encode(low, frac_bits)).reshape(-1), tag=tag + ":cmp")
    y = exp_in_range(party, x, frac_bits, upper=0.0, tag=tag)
    return y - select(party, y.reshape(-1), below, tag=tag + ":select").reshape(x.shape)


def exp_in_range(party: Party, x: AShare, frac_bits: int = 16, upper: float = 0.0, tag: str = "exp") -> AShare:
    """Return [e^x] for x the caller knows to lie in [low, upper] (no comparison).

    low is exp_limits(F)[0]; upper <= exp_limits(F)[1] sets the scales:
    each intermediate value v is held at the largest scale 2^S with
    v^2 2^(2S) < 2^61 for every x <= upper.

    1. t = x / 2^7 is x's own share read at scale 2^(F+7): exact, local.
       Shift it to the base scale 2^S0 (S0 = 30 for upper = 0).
    2. [t^2] by square (1 round), truncated to [t^2 / 2] (1 round).
    3. [t^3 / 6] = [t^2 / 2] * [t] / 3: mul of (t^2/2 times round(2^k/3)) and
       t (1 round), truncated by S0 + k (1 round).
    4. [v0] = 1 + t + t^2/2 + t^3/6, an approximation of e^(x/2^7): local.
    5. Square 7 times, each a square and a truncation (14 rounds), from
       scale S_k to S_(k+1); the last truncation lands on scale 2^F.

    Error (F = 16): 2.5e-4 e^x relative (the cubic remainder raised to the
    128th power) plus 2^-15 absolute (the last truncation is within one unit
    in the last place; the earlier ones, at 22 or more fractional bits, add
    less than 2^-18). Outside [low, upper]: below low the result stays
    within the bound of 0 down to x = -200; below that it is meaningless (the
    cubic base turns negative at x = -204, and its 128th power is large
    below x = -322). Above upper a square passes 2^61: meaningless soon after.
    Cost: 18 rounds; 152 bytes per element per computing party; P2 sends
    216 bytes per element to P1.
    Ref: as exp.
    """
    plan = _plan(frac_bits, float(upper))
    shift_up = plan.base_scale - (frac_bits + SQUARINGS)
    t = x * (1 << shift_up)
    half_t_squared = truncate(party, square(party, t, tag=tag + ":t2"), plan.base_scale + 1, tag=tag + ":t2")
    cube_term = truncate(party, mul(party, half_t_squared * plan.third, t, tag=tag + ":t3"),
                         plan.base_scale + plan.third_bits, tag=tag + ":t3")
    v = (t + half_t_squared + cube_term).add_public(1 << plan.base_scale)
    for k, (scale, next_scale) in enumerate(zip(plan.scales, plan.scales[1:])):
        v = truncate(party, square(party, v, tag=f"{tag}:{k}"), 2 * scale - next_scale, tag=f"{tag}:{k}")
    return v


# -- scales -------------------------------------------------------------------------------
class _Plan:
    """The scales of one exp_in_range: base_scale S0, scales [S0, S1, ..., S7 = F], 1/3 as third / 2^third_bits."""

    def __init__(self, base_scale: int, scales: list[int], third_bits: int):
        self.base_scale = base_scale
        self.scales = scales
        self.third_bits = third_bits
        self.third = round((1 << third_bits) / 3)


def _check_frac_bits(frac_bits: int) -> None:
    if isinstance(frac_bits, bool) or not isinstance(frac_bits, (int, np.integer)):
        raise TypeError(f"frac_bits must be an int, got {frac_bits!r}")
    # t = x / 2^7 must be exact at the base scale (S0 >= F + 7, S0 <= 29 for
    # the widest upper), and the output needs F >= 1.
    if not 1 <= frac_bits <= 22:
        raise ValueError(f"exp supports frac_bits in 1..22 (t = x/2^{SQUARINGS} exact below 2^30), got {frac_bits}")


@lru_cache(maxsize=None)
def _plan(frac_bits: int, upper: float) -> _Plan:
    low, high = exp_limits(frac_bits)
    if not upper <= high + 1e-12:
        raise ValueError(f"exp_in_range: upper={upper} is above {high:.4f}, where e^x leaves the format "
                         f"(F={frac_bits}, I={_FORMAT_LOG2 - frac_bits})")
    if upper < low:
        raise ValueError(f"exp_in_range: upper={upper} is below low={low:.4f}")
    m = 1 << SQUARINGS
    # v_k = e^(x 2^k / m) at most, for x <= upper (the Taylor polynomial is
    # below e^t for every t); S_k is the largest scale with v_k^2 2^(2 S_k) <= 2^60.
    growth = max(upper, 0.0) / m / math.log(2.0)  # log2 of the bound of v_0
    scales = [min(_BASE_SCALE_MAX, math.floor(_PRODUCT_LOG2 / 2 - 0.5 - growth * 2**k)) for k in range(SQUARINGS)]
    scales.append(frac_bits)
    base_scale = scales[0]
    if base_scale < frac_bits + SQUARINGS or min(scales[:-1]) < frac_bits:
        raise ValueError(f"exp_in_range: no scales for frac_bits={frac_bits}, upper={upper}")
    # The cubic term: (t^2/2) * round(2^k/3) * t at scale 2 S0 + k must stay
    # below 2^61 for |t| <= T.
    t_max = max(-low, upper) / m
    third_bits = math.floor(_PRODUCT_LOG2 - 2 * base_scale - math.log2(t_max**3 / 6)) - 1
    if third_bits < 12:
        raise ValueError(f"exp_in_range: no room for the cubic term at frac_bits={frac_bits}")
    return _Plan(base_scale, scales, min(third_bits, 24))


def _encode(value: float, frac_bits: int) -> int:
    return round(value * (1 << frac_bits)) % (1 << 64)


# -- cost ---------------------------------------------------------------------------------
def cost_in_range(shape) -> Cost:
    n = int(np.prod(shape))
    step = mul_protocol.cost_square((n,)) + truncate_protocol.cost((n,))
    base = step + mul_protocol.cost((n,), (n,)) + truncate_protocol.cost((n,))
    total = base
    for _ in range(SQUARINGS):
        total = total + step
    return total


def cost(shape) -> Cost:
    n = int(np.prod(shape))
    return cost_msb(2 * n) + cost_in_range(shape) + cost_select(2 * n, 2 * n)


def cost_nonpositive(shape) -> Cost:
    n = int(np.prod(shape))
    return cost_in_range(shape) + cost_msb(n) + cost_select(n, n)
