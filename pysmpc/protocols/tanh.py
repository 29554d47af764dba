"""Secure hyperbolic tangent of shared fixed-point values, through the sigmoid."""

from __future__ import annotations

from pysmpc.parties.party import Party
from pysmpc.protocols import sigmoid as sigmoid_protocol
from pysmpc.protocols.cost import Cost
from pysmpc.protocols.sigmoid import sigmoid
from pysmpc.sharing.shares import AShare

__all__ = ["tanh", "cost", "ABS_ERROR"]

# Twice the sigmoid's bound: tanh(x) = 2 sigmoid(2x) - 1 doubles its error.
ABS_ERROR = 2 * sigmoid_protocol.ABS_ERROR


def tanh(party: Party, x: AShare, frac_bits: int = 16, tag: str = "tanh") -> AShare:
    """Return [tanh(x)] = 2 sigmoid(2x) - 1 for any encodable x, without opening x.

    1. 2x: local (exact; |2x| < 2^32 at scale 2^F stays far inside the ring).
    2. sigmoid(2x) (32 rounds, protocols.sigmoid).
    3. 2 s - 1: local.

    Error (F = 16): at most 2^-13 for every encodable x (twice the
    sigmoid's); tanh(x) = +-1 to within that beyond |x| = (F + 1) ln 2 / 2.
    Cost: that of sigmoid: 32 rounds; 420.3 bytes per element per computing
    party (n a multiple of 64); P2 sends 506.6 bytes per element to P1.
    Ref: CrypTen's tanh through the sigmoid (Knott et al., NeurIPS 2021).
    """
    return (sigmoid(party, x * 2, frac_bits, tag=tag) * 2).add_public(-(1 << frac_bits))


def cost(shape, frac_bits: int = 16) -> Cost:
    return sigmoid_protocol.cost(shape, frac_bits)
