"""Secure softmax along the last axis: exp(x - max) / sum, max by comparisons."""

from __future__ import annotations


import numpy as np

from pysmpc.parties.party import Party
from pysmpc.protocols import exp as exp_protocol
from pysmpc.protocols import mul as mul_protocol
from pysmpc.protocols import reciprocal as reciprocal_protocol
from pysmpc.protocols import relu as relu_protocol
from pysmpc.protocols import truncate as truncate_protocol
from pysmpc.protocols.cost import Cost
from pysmpc.protocols.exp import exp_nonpositive
from pysmpc.protocols.mul import mul
from pysmpc.protocols.reciprocal import reciprocal
from pysmpc.protocols.relu import maximum
from pysmpc.protocols.truncate import truncate
from pysmpc.sharing.shares import AShare, concat_shares

__all__ = ["softmax", "max_last_axis", "cost", "cost_max_last_axis", "ABS_ERROR"]

# Measured max |softmax - exact| for F = 16 is 2.7 units in the last place
# (random logits of ranges 1 to 2^14, ties, C = 1 to 33); the bound is 8.
ABS_ERROR = 2.0**-13


def softmax(party: Party, x: AShare, frac_bits: int = 16, tag: str = "softmax") -> AShare:
    """Return [softmax(x)] along the last axis (any leading axes), without opening x.

    1. m = max over the last axis: a tournament, each level one relu of all
       pairs' differences (4 rounds per level, ceil(log2 C) levels for C
       classes; protocols.relu.maximum).
    2. z = x - m <= 0, with z = 0 exactly at the maximum: local.
    3. e = exp_nonpositive(z) (22 rounds): e = 1 at the maximum, 0 for
       z below -(F + 1) ln 2.
    4. s = sum of e over the last axis, in [1, C] up to rounding: local.
    5. r = reciprocal(s) on [1/2, C + 1/2] (14 rounds; ceil(log2(C + 1/2)) + 1
       comparisons per row, not per element).
    6. e r: mul broadcast over the last axis (1 round) and truncation
       (1 round).

    Error (F = 16, measured over random logits in [-2^14, 2^14] and close
    ties): |softmax(x) - exact| <= 2^-13 for every encodable x (e is within
    one unit, the reciprocal within one unit plus 1.5e-7 relative, and the
    product within one unit more). No input is outside the range: the max
    subtraction keeps z <= 0 and exp_nonpositive covers all z <= 0.
    Cost: 4 ceil(log2 C) + 38 rounds (54 for C = 10). For C = 10 each
    computing party sends 277.6 bytes per element (rows a multiple of 64),
    P2 sends 331.6 bytes per element to P1; see `cost`.
    Ref: softmax as exp(x - max) / sum as CrypTen's (Knott et al., NeurIPS
    2021); max by a tournament of comparisons as SecureNN's maxpool (Wagh
    et al., PETS 2019).
    """
    if len(x.shape) == 0:
        raise ValueError("softmax needs an axis: got a 0-d share")
    classes = x.shape[-1]
    if classes == 0:
        raise ValueError(f"softmax over an empty last axis: shape {x.shape}")
    rows = x.reshape(-1, classes)
    shifted = rows - max_last_axis(party, rows, tag=tag + ":max")
    e = exp_nonpositive(party, shifted, frac_bits, tag=tag + ":exp")
    lo, hi = _denominator_range(classes)
    r = reciprocal(party, e.sum(axis=1, keepdims=True), frac_bits, lo=lo, hi=hi, tag=tag + ":recip")
    out = truncate(party, mul(party, e, r, tag=tag + ":scale"), frac_bits, tag=tag + ":scale")
    return out.reshape(x.shape)


def max_last_axis(party: Party, x: AShare, tag: str = "max") -> AShare:
    """Return [max of each row] with shape (N, 1), for x of shape (N, C).

    Each level halves the columns: max(x[:, :h], x[:, h:2h]) by one relu
    of all pairs (4 rounds), an odd last column passes to the next level.
    Error: none (exact for differences below 2^63).
    Cost: 4 ceil(log2 C) rounds; a relu of N (C - 1) elements in all.
    Ref: the tournament of SecureNN (Wagh et al., PETS 2019) maxpool.
    """
    level = 0
    while x.shape[1] > 1:
        half = x.shape[1] // 2
        best = maximum(party, x[:, :half], x[:, half : 2 * half], tag=f"{tag}:{level}")
        x = concat_shares([best, x[:, 2 * half :]], axis=1) if x.shape[1] % 2 else best
        level += 1
    return x


def _denominator_range(classes: int) -> tuple[float, float]:
    # The sum is 1 (the maximum's term) plus C - 1 terms in [0, 1], each
    # within a unit of rounding: [1/2, C + 1/2] holds it with room to spare.
    return 0.5, classes + 0.5


def cost_max_last_axis(rows: int, classes: int) -> Cost:
    total = Cost(0, 0, 0)
    while classes > 1:
        half = classes // 2
        total = total + relu_protocol.cost((rows, half))
        classes = half + classes % 2
    return total


def cost(shape, frac_bits: int = 16) -> Cost:
    classes = shape[-1]
    rows = int(np.prod(shape[:-1]))
    n = rows * classes
    lo, hi = _denominator_range(classes)
    return (cost_max_last_axis(rows, classes) + exp_protocol.cost_nonpositive((n,))
            + reciprocal_protocol.cost((rows,), frac_bits, lo, hi)
            + mul_protocol.cost((rows, classes), (rows, 1)) + truncate_protocol.cost((rows, classes)))
