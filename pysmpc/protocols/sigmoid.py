"""Secure logistic sigmoid 1 / (1 + e^-x) of shared fixed-point values."""

from __future__ import annotations

import numpy as np

from pysmpc.kernels.bits import n_words, pack_bits, unpack_bits
from pysmpc.parties.party import Party
from pysmpc.protocols import exp as exp_protocol
from pysmpc.protocols import reciprocal as reciprocal_protocol
from pysmpc.protocols.compare import cost_msb, msb
from pysmpc.protocols.cost import Cost
from pysmpc.protocols.exp import exp_in_range, exp_limits
from pysmpc.protocols.reciprocal import reciprocal
from pysmpc.protocols.select import cost_select, select
from pysmpc.sharing.shares import AShare, BShare, concat_shares

__all__ = ["sigmoid", "cost", "ABS_ERROR"]

# Measured max |sigmoid(x) - 1/(1 + e^-x)| for F = 16 is 2.0 units in the
# last place (20,001 points of [-40, 40]); the stated bound is 4 units.
ABS_ERROR = 2.0**-14


def sigmoid(party: Party, x: AShare, frac_bits: int = 16, tag: str = "sigmoid") -> AShare:
    """Return [1 / (1 + e^-x)] for any encodable x, without opening x.

    Through |x|, so that e^-|x| <= 1 and 1 + e^-|x| lies in [1, 2]:
    1. [x < 0], [x > C], [x < -C] for C = -low = (F + 1) ln 2 by one batched
       comparison of (x, C - x, x + C) (3 rounds).
    2. a = min(|x|, C) = x - (2x [x < 0] + (x - C)[x > C] + (-x - C)[x < -C]):
       one select of the three stacked rows (1 round). Beyond C,
       1 - sigmoid(|x|) < 2^-(F+1): clamping changes nothing visible.
    3. e = exp_in_range(-a), -a in [low, 0] (18 rounds).
    4. r = reciprocal(1 + e) on [1, 2], one octave: no comparison (9 rounds).
       r = sigmoid(a) in [1/2, 1].
    5. sigmoid(x) = r + [x < 0] (1 - 2r): select (1 round).

    Error (F = 16, measured on a grid of [-40, 40]): at most 2^-14 for
    every encodable x (exp's error shrinks through 1/(1+e)^2 <= 1, the
    reciprocal's is one unit, and the clamp's below half a unit). There is
    no input outside the range.
    Cost: 32 rounds; 420.3 bytes per element per computing party (n a
    multiple of 64); P2 sends 506.6 bytes per element to P1.
    Ref: sigmoid as the reciprocal of 1 + e^-|x| on the sign-folded input,
    as CrypTen's sigmoid (Knott et al., NeurIPS 2021); exp and reciprocal
    as protocols.exp and protocols.reciprocal.
    """
    flat = x.reshape(-1)
    n = flat.size
    low, _ = exp_limits(frac_bits)
    clamp = round(-low * (1 << frac_bits))
    # Rows: x, C - x, x + C; their sign bits are [x < 0], [x > C], [x < -C].
    signs = msb(party, concat_shares([flat, (-flat).add_public(clamp), flat.add_public(clamp)]), tag=tag + ":cmp")
    folds = select(party, concat_shares([flat * 2, flat.add_public(-clamp), (-flat).add_public(-clamp)]), signs,
                   tag=tag + ":abs")
    magnitude = flat - folds[:n] - folds[n : 2 * n] - folds[2 * n :]
    e = exp_in_range(party, -magnitude, frac_bits, upper=0.0, tag=tag + ":exp")
    # 1 + e is in [1, 2] up to one unit above 2 (e(0) may round up to
    # 1 + 2^-F): inside the reciprocal's slack around its octave.
    r = reciprocal(party, e.add_public(1 << frac_bits), frac_bits, lo=1.0, hi=2.0, tag=tag + ":recip")
    negative = _bit_range(signs, 0, n)
    flip = select(party, (r * -2).add_public(1 << frac_bits), negative, tag=tag + ":sign")
    return (r + flip).reshape(x.shape)


def _bit_range(bits: BShare, start: int, stop: int) -> BShare:
    """Bits start..stop-1 of a packed XOR sharing, repacked from 0 (local: XOR shares are bitwise)."""
    if bits.words is None:
        return BShare(None, stop - start, bits.party, (n_words(stop - start),))
    return BShare(pack_bits(unpack_bits(bits.words, bits.n)[start:stop]), stop - start, bits.party)


def cost(shape, frac_bits: int = 16) -> Cost:
    n = int(np.prod(shape))
    return (cost_msb(3 * n) + cost_select(3 * n, 3 * n) + exp_protocol.cost_in_range(shape)
            + reciprocal_protocol.cost(shape, frac_bits, lo=1.0, hi=2.0) + cost_select(n, n))
