"""Open shared values to both computing parties, or reveal them to a receiver."""

from __future__ import annotations

import numpy as np

from pysmpc.parties.party import Party
from pysmpc.protocols.cost import WORD, Cost

__all__ = ["open_arith", "open_bits", "reveal_to", "cost_open"]


def open_arith(party: Party, shares: list[np.ndarray], tag: str) -> list[np.ndarray]:
    """Open several additive sharings in one exchange.

    1. Send my shares to the peer, receive its shares (1 round).
    2. x_open = x_0 + x_1: local.

    Call only with values that are uniformly masked (x - a, x + r): what is
    opened is seen by both computing parties.

    Cost: 1 round; 8 bytes per element per computing party.
    """
    theirs = party.channel.exchange(party.peer, list(shares), tag=tag)
    return [np.add(mine, other) for mine, other in zip(shares, theirs)]


def open_bits(party: Party, words: list[np.ndarray], tag: str) -> list[np.ndarray]:
    """Open several XOR sharings of packed bits in one exchange (1 round)."""
    theirs = party.channel.exchange(party.peer, list(words), tag=tag)
    return [np.bitwise_xor(mine, other) for mine, other in zip(words, theirs)]


def reveal_to(party: Party, share: np.ndarray | None, receiver: int, tag: str) -> None:
    """Send this party's share to `receiver`, who alone reconstructs.

    Cost: no round for the computing parties; 8 bytes per element each.
    """
    if party.computes:
        party.channel.send(receiver, share, tag=tag)


def cost_open(elements: int) -> Cost:
    return Cost(rounds=1, bytes_sent=WORD * elements)
