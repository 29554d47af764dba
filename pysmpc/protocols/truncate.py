"""Fixed-point truncation: divide a shared value by 2^F, rounding down."""

from __future__ import annotations

import numpy as np

from pysmpc.kernels.finish import truncate_finish as finish_kernel
from pysmpc.parties.party import Party
from pysmpc.protocols.cost import WORD, Cost
from pysmpc.protocols.open import open_arith
from pysmpc.sharing.shares import AShare

__all__ = ["truncate", "truncate_begin", "truncate_finish", "PendingTruncation", "cost", "MAX_ABS_LOG2"]

_U64 = np.uint64
# The protocol is exact (up to the last unit) for |x| < 2^62.
MAX_ABS_LOG2 = 62
_OFFSET = 1 << MAX_ABS_LOG2


def truncate(party: Party, x: AShare, frac_bits: int, tag: str = "trunc") -> AShare:
    """Return [floor(x / 2^F)] or one more, for any |x| < 2^62.

    1. Take [r], [r >> F] and [r >> 63] from the dealer, r uniform mod 2^64
       (offline).
    2. Shift into the positive range, y = x + 2^62 (so 0 <= y < 2^63), and
       open c = y + r (1 round). c is uniform: it reveals nothing.
    3. y = c - r + 2^64 * w, where the wrap w = [c < r] is, because y < 2^63,
       exactly r_63 AND NOT c_63: linear in [r_63] given public c. Hence
       (c >> F) - [r >> F] + 2^(64-F) (1 - c_63) [r_63] = (y >> F) + borrow,
       where borrow = [c mod 2^F < r mod 2^F] is 0 or 1: local.
    4. Subtract 2^(62-F).

    Error: the result is floor(x / 2^F) + borrow, borrow in {0, 1}, so it is
    within one unit in the last place of x / 2^F, with probability 1: no
    large error can happen (SecureML's local truncation is off by about
    2^64 with probability ~2^(l+1-64) for l-bit values), provided |x| < 2^62.
    Cost: 1 round; 8 bytes per element per computing party online;
    P2 sends 16 bytes per element to P1.
    Ref: the wrap-bit correction of Escudero et al., "Improved Primitives for
    MPC over Mixed Arithmetic-Binary Circuits", CRYPTO 2020, sec. 5,
    specialised to a dealer that knows r.
    """
    pending = truncate_begin(party, x, frac_bits, tag)
    if not party.computes:
        return truncate_finish(party, pending, None)
    (c_open,) = open_arith(party, [pending.masked], tag=tag)
    return truncate_finish(party, pending, c_open)


class PendingTruncation:
    """Dealer material and the masked value of a truncation whose opening is under way."""

    __slots__ = ("frac_bits", "shape", "masked", "r_hi", "r_msb")

    def __init__(self, frac_bits, shape, masked, r_hi, r_msb):
        self.frac_bits, self.shape, self.masked, self.r_hi, self.r_msb = frac_bits, shape, masked, r_hi, r_msb


def truncate_begin(party: Party, x: AShare, frac_bits: int, tag: str = "trunc") -> PendingTruncation:
    """Steps 1-2 of `truncate` up to the opening: returns what to open (`masked`).

    Lets another protocol open c = y + r in one of its own rounds
    (relu.relu_truncated merges it into the comparison's first round).
    """
    if not 0 < frac_bits < MAX_ABS_LOG2:
        raise ValueError(f"frac_bits must be in 1..{MAX_ABS_LOG2 - 1}, got {frac_bits}")
    r, r_hi, r_msb = party.dealer.trunc_pair(x.shape, frac_bits, tag="dealer:" + tag)
    if not party.computes:
        return PendingTruncation(frac_bits, x.shape, None, None, None)
    masked = x.value + r
    if party.index == 0:  # the public shift is added once, by party 0 (as AShare.add_public)
        masked += _U64(_OFFSET)
    return PendingTruncation(frac_bits, x.shape, masked, r_hi, r_msb)


def truncate_finish(party: Party, pending: PendingTruncation, c_open) -> AShare:
    """Steps 3-4 of `truncate` from the opened c = y + r: local."""
    if not party.computes:
        return AShare(None, party.index, pending.shape)
    z = np.empty(pending.shape, np.uint64)
    finish_kernel(np.ascontiguousarray(c_open), pending.r_msb, pending.r_hi, pending.frac_bits, party.index == 0,
                  _U64(_OFFSET >> pending.frac_bits), z)
    return AShare(z, party.index)


def cost(shape) -> Cost:
    n = int(np.prod(shape))
    return Cost(rounds=1, bytes_sent=WORD * n, dealer_bytes=2 * WORD * n)
