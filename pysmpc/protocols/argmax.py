"""Secure argmax: a one-hot share of the position of the largest value."""

from __future__ import annotations

import numpy as np

from pysmpc.parties.party import Party
from pysmpc.protocols.compare import greater_equal
from pysmpc.protocols.select import select
from pysmpc.sharing.shares import AShare, concat_shares

__all__ = ["argmax"]


def argmax(party: Party, x: AShare, tag: str = "argmax") -> AShare:
    """Return shares of one_hot(argmax(x, axis=1)) for x of shape (N, C).

    The result holds integers 0/1 (not fixed-point); revealing it reveals
    the winning position and nothing else. Ties go to the lower index.

    1. Start with C candidates (value column, public one-hot row).
    2. Each level pairs candidates a, b: [a >= b] by comparison (3 rounds),
       then one select of the stacked (a - b, onehot_a - onehot_b) keeps the
       winner (1 round).

    Cost: 4 * ceil(log2(C)) rounds.
    """
    if len(x.shape) != 2:
        raise ValueError(f"argmax takes (N, C) logits, got shape {x.shape}")
    n, c = x.shape
    zero = AShare(np.zeros((n, c), np.uint64) if x.value is not None else None, party.index, (n, c))
    candidates = []
    for j in range(c):
        onehot = np.zeros((n, c), np.uint64)
        onehot[:, j] = 1
        candidates.append((x[:, j : j + 1], zero.add_public(onehot)))
    level = 0
    while len(candidates) > 1:
        pairs = len(candidates) // 2
        va = concat_shares([candidates[2 * i][0] for i in range(pairs)], axis=0)
        vb = concat_shares([candidates[2 * i + 1][0] for i in range(pairs)], axis=0)
        ia = concat_shares([candidates[2 * i][1] for i in range(pairs)], axis=0)
        ib = concat_shares([candidates[2 * i + 1][1] for i in range(pairs)], axis=0)
        a_wins = greater_equal(party, va, vb, tag=f"{tag}:{level}:cmp")
        chosen = select(party, concat_shares([va - vb, ia - ib], axis=1), a_wins, tag=f"{tag}:{level}:select")
        value = vb + chosen[:, 0:1]
        index = ib + chosen[:, 1:]
        merged = [(value[i * n : (i + 1) * n], index[i * n : (i + 1) * n]) for i in range(pairs)]
        if len(candidates) % 2:
            merged.append(candidates[-1])
        candidates = merged
        level += 1
    return candidates[0][1]
