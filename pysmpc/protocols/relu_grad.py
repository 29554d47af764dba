"""ReLU for training: the forward keeps its comparison bit, the backward reuses it."""

from __future__ import annotations

import numpy as np

from pysmpc.parties.party import Party
from pysmpc.protocols.compare import cost_msb, msb_and_open
from pysmpc.protocols.cost import Cost
from pysmpc.protocols.select import cost_select, select
from pysmpc.protocols.truncate import cost as truncate_cost
from pysmpc.protocols.truncate import truncate_begin, truncate_finish
from pysmpc.sharing.shares import AShare, BShare

__all__ = ["relu_truncated_keep", "relu_backward", "cost_forward", "cost_backward"]

_ALL_ONES = np.uint64(0xFFFFFFFFFFFFFFFF)


def relu_truncated_keep(party: Party, x: AShare, bits: int, tag: str = "relu") -> tuple[AShare, BShare]:
    """Return ([relu(x / 2^bits)], [x >= 0]): relu_truncated that also keeps the XOR-shared bit.

    1. Begin truncating x (c = x + 2^62 + r to be opened).
    2. s = msb(x), opening c in its first round (3 rounds).
    3. keep = 1 ^ s; finish the truncation t (local) and select t * keep
       (1 round).

    The bit keep is the derivative of relu at x (0 at x < 0, 1 at x >= 0):
    the backward pass multiplies by it (`relu_backward`) with no new
    comparison. Error: the truncation's (stochastic rounding, unbiased,
    below one unit in the last place).
    Cost: 4 rounds; as relu.relu_truncated.
    Ref: SecureNN (Wagh et al., PETS 2019): the ReLU derivative bit reused.
    """
    pending = truncate_begin(party, x, bits, tag=tag + ":trunc")
    to_open = [] if not party.computes else [pending.masked]
    sign, opened = msb_and_open(party, x, to_open, tag=tag + ":cmp")
    keep = sign ^ _ALL_ONES
    truncated = truncate_finish(party, pending, opened[0] if opened else None)
    return select(party, truncated, keep, tag=tag + ":select"), keep


def relu_backward(party: Party, dy: AShare, keep: BShare, tag: str = "relu:grad") -> AShare:
    """Return [dy * keep]: the gradient through a relu whose bit `keep` the forward kept.

    Exact (select multiplies by a 0/1 bit, any fixed-point scale).
    Cost: 1 round; protocols.select.cost_select.
    """
    if dy.size != keep.n:
        raise ValueError(f"relu_backward: gradient of shape {dy.shape} for {keep.n} kept bits")
    return select(party, dy, keep, tag=tag)


def cost_forward(shape) -> Cost:
    n = int(np.prod(shape))
    trunc = truncate_cost(shape)
    return cost_msb(n, extra_open_elements=n) + Cost(0, 0, trunc.dealer_bytes) + cost_select(n, n)


def cost_backward(shape) -> Cost:
    n = int(np.prod(shape))
    return cost_select(n, n)
