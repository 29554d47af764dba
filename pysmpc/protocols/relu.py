"""ReLU and max on shared values, built on secure comparison."""

from __future__ import annotations

import numpy as np

from pysmpc.parties.party import Party
from pysmpc.protocols.compare import cost_msb, msb, msb_and_open
from pysmpc.protocols.cost import Cost
from pysmpc.protocols.select import cost_select, select
from pysmpc.protocols.truncate import cost as truncate_cost
from pysmpc.protocols.truncate import truncate_begin, truncate_finish
from pysmpc.sharing.shares import AShare

__all__ = ["relu", "relu_truncated", "maximum", "cost", "cost_truncated"]

_ALL_ONES = np.uint64(0xFFFFFFFFFFFFFFFF)


def relu(party: Party, x: AShare, tag: str = "relu") -> AShare:
    """Return [max(x, 0)] without opening x or its sign.

    1. [s] = msb(x), XOR-shared (3 rounds, protocols.compare).
    2. [x * (1 ^ s)] with select (1 round).

    Exact (no fixed-point error) for |x| < 2^63.
    Cost: 4 rounds; about 41 bytes per element per computing party.
    """
    keep = msb(party, x, tag=tag + ":cmp") ^ _ALL_ONES
    return select(party, x, keep, tag=tag + ":select")


def relu_truncated(party: Party, x: AShare, bits: int, tag: str = "relu") -> AShare:
    """Return [relu(x / 2^bits)] (truncated as protocols.truncate), in 4 rounds, not 5.

    1. Begin truncating x: c = x + 2^62 + r is to be opened.
    2. msb(x), opening c in its first round (3 rounds).
    3. Finish the truncation t from c (local), and select t * (1 ^ msb(x))
       (1 round). The sign of x decides: t >= 0 when x >= 0, and t is
       dropped when x < 0, so this is relu of the truncated value.

    Error: that of the truncation (at most one unit in the last place).
    Cost: 4 rounds; msb + 8 bytes (truncation) + select per element.
    """
    pending = truncate_begin(party, x, bits, tag=tag + ":trunc")
    to_open = [] if not party.computes else [pending.masked]
    sign, opened = msb_and_open(party, x, to_open, tag=tag + ":cmp")
    truncated = truncate_finish(party, pending, opened[0] if opened else None)
    return select(party, truncated, sign ^ _ALL_ONES, tag=tag + ":select")


def maximum(party: Party, x: AShare, y: AShare, tag: str = "max") -> AShare:
    """Elementwise max of two shared arrays: y + relu(x - y). Cost: as relu."""
    return y + relu(party, x - y, tag=tag)


def cost(shape) -> Cost:
    n = int(np.prod(shape))
    return cost_msb(n) + cost_select(n, n)


def cost_truncated(shape) -> Cost:
    n = int(np.prod(shape))
    trunc = truncate_cost(shape)
    return cost_msb(n, extra_open_elements=n) + Cost(0, 0, trunc.dealer_bytes) + cost_select(n, n)
