"""A party: its index, its channel and the PRG seeds it shares with the others."""

from __future__ import annotations

from pysmpc.parties.channel import Channel
from pysmpc.sharing.prg import PRG, new_seed

__all__ = ["Party", "P0", "P1", "DEALER", "CLIENT", "PARTY_NAMES", "exchange_seeds"]

P0, P1, DEALER = 0, 1, 2
# The endpoint of whoever drives the cluster: it provides inputs (as shares)
# and receives outputs; it takes no part in the protocols.
CLIENT = 3
PARTY_NAMES = {P0: "P0", P1: "P1", DEALER: "P2 (dealer)", CLIENT: "client"}


class Party:
    """One of the three parties, as seen from its own process or thread.

    P0 and P1 hold shares and compute; P2 is the dealer of correlated
    randomness (docs/PROTOCOL.md). `seeds[j]` is the 16-byte seed this party
    shares with party j; the PRGs for dealer material are derived from it.
    """

    def __init__(self, index: int, channel: Channel, seeds: dict[int, bytes]):
        if index not in (P0, P1, DEALER):
            raise ValueError(f"party index must be 0, 1 or 2, got {index}")
        self.index = index
        self.channel = channel
        self._seeds = dict(seeds)
        self.dealer_prgs: dict[int, PRG] = {}
        if index == DEALER:
            self.dealer_prgs = {p: PRG(seeds[p]).derive(b"dealer") for p in (P0, P1)}
        else:
            self.dealer_prgs = {DEALER: PRG(seeds[DEALER]).derive(b"dealer")}
        # State a protocol keeps across calls, e.g. opened weight masks.
        self.store: dict = {}
        self._dealer = None
        # True while P0/P1 take their dealer material ahead of a query
        # (Dealer.recording): they then follow the protocols as P2 does,
        # dealer calls only, no online computation.
        self.preprocessing = False

    @property
    def dealer(self):
        """This party's end of the dealer (P2) that deals correlated randomness."""
        if self._dealer is None:
            from pysmpc.parties.dealer import Dealer

            self._dealer = Dealer(self)
        return self._dealer

    @property
    def is_dealer(self) -> bool:
        return self.index == DEALER

    @property
    def computes(self) -> bool:
        """Whether this party runs the online part of a protocol now (P0/P1, not preprocessing)."""
        return self.index != DEALER and not self.preprocessing

    @property
    def peer(self) -> int:
        """The other computing party (P0 <-> P1)."""
        if self.index == DEALER:
            raise ValueError("the dealer has no computing peer")
        return 1 - self.index

    @property
    def name(self) -> str:
        return PARTY_NAMES[self.index]

    def __repr__(self) -> str:
        return f"Party({self.name})"


def exchange_seeds(index: int, channel: Channel) -> dict[int, bytes]:
    """Agree a fresh seed with each other party: the lower index draws it.

    One message per pair, tag "setup:seed" (offline). Over TCP the channel is
    encrypted, so a seed is never visible on the wire.
    """
    seeds = {}
    for other in (P0, P1, DEALER):
        if other == index:
            continue
        if index < other:
            seed = new_seed()
            channel.send(other, seed, tag="setup:seed")
        else:
            seed = bytes(channel.recv(other, tag="setup:seed"))
        seeds[other] = seed
    return seeds
