"""Open shared values to both computing parties, or reveal them to a receiver."""

from __future__ import annotations

import numpy as np

from pysmpc.parties.party import Party
from pysmpc.protocols.cost import WORD, Cost

__all__ = ["open_arith", "open_low_bits", "open_bits", "reveal_to", "cost_open", "low_bits_bytes"]


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


def low_bits_bytes(nbits: int) -> int:
    """Bytes per element that open_low_bits sends for values mod 2^nbits."""
    return -(-nbits // 8)


def open_low_bits(party: Party, share: np.ndarray, nbits: int, tag: str) -> np.ndarray:
    """Open an additive sharing mod 2^nbits only, sending ceil(nbits / 8) bytes per element (1 round).

    For a value masked by r uniform mod 2^nbits (x + r), whose high bits
    the receiver does not need: the sum of the two shares' low nbits is the
    value mod 2^nbits, and the bits above are never sent. nbits = 64 is
    open_arith. Returns the opened value mod 2^nbits (uint64, flat).
    """
    if not 1 <= nbits <= 64:
        raise ValueError(f"open_low_bits: nbits must be in 1..64, got {nbits}")
    mine = np.ascontiguousarray(share, dtype="<u8").reshape(-1)
    if nbits == 64:
        return open_arith(party, [mine], tag=tag)[0]
    width = low_bits_bytes(nbits)
    packed = np.ascontiguousarray(mine.view(np.uint8).reshape(-1, 8)[:, :width])
    theirs = party.channel.exchange(party.peer, packed, tag=tag)
    theirs = np.asarray(theirs)
    if theirs.dtype != np.uint8 or theirs.shape != packed.shape:
        raise ValueError(f"{party.name}: the peer's '{tag}' opening is {theirs.dtype} {theirs.shape}, expected uint8 "
                         f"{packed.shape} (its low {nbits} bits of {len(mine)} values)")
    wide = np.zeros((len(mine), 8), np.uint8)
    wide[:, :width] = theirs
    return (mine + wide.view("<u8").reshape(-1)) & np.uint64((1 << nbits) - 1)


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
