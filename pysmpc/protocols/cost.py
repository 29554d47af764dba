"""Communication cost of a protocol, as data that tests compare with the channel."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Cost", "WORD"]

WORD = 8  # bytes per ring element or per packed word of 64 bits


@dataclass(frozen=True)
class Cost:
    """Online cost for each computing party (P0 and P1 alike).

    rounds: exchanges a party waits on. bytes_sent: bytes each computing
    party sends (it receives as many). dealer_bytes: bytes P2 sends
    (offline): to P1, and for DCF keys (protocols.relu_fss) to P0 as well.
    P2 receives nothing.
    """

    rounds: int
    bytes_sent: int
    dealer_bytes: int = 0

    def __add__(self, other: "Cost") -> "Cost":
        return Cost(self.rounds + other.rounds, self.bytes_sent + other.bytes_sent,
                    self.dealer_bytes + other.dealer_bytes)

    def parallel(self, other: "Cost") -> "Cost":
        """Cost of two protocols whose rounds are merged (same exchanges)."""
        return Cost(max(self.rounds, other.rounds), self.bytes_sent + other.bytes_sent,
                    self.dealer_bytes + other.dealer_bytes)
