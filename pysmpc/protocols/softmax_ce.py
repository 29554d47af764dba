"""Gradient of the softmax cross-entropy loss on shared logits and one-hot labels."""

from __future__ import annotations

from pysmpc.parties.party import Party
from pysmpc.protocols import softmax as softmax_protocol
from pysmpc.protocols.cost import Cost
from pysmpc.sharing.shares import AShare

__all__ = ["softmax_cross_entropy_grad", "cost", "ABS_ERROR"]

# Per element of the gradient: softmax's bound (protocols.softmax.ABS_ERROR);
# subtracting the exact one-hot labels adds nothing.
ABS_ERROR = softmax_protocol.ABS_ERROR


def softmax_cross_entropy_grad(party: Party, logits: AShare, onehot: AShare, frac_bits: int = 16,
                               tag: str = "softmax_ce") -> tuple[AShare, AShare]:
    """Return ([softmax(logits) - onehot], [softmax(logits)]): d loss_n / d logits_n per example.

    The loss is loss_n = logsumexp(logits_n) - logits_n[label_n]; its
    gradient needs no logarithm:
    1. p = softmax(logits) (protocols.softmax: max tournament, exp of
       x - max, reciprocal of the row sum; 54 rounds for 10 classes).
    2. p - onehot: local.

    Both inputs at F fractional bits; so is the result.
    Error: |result - exact| <= ABS_ERROR = 2^-13 per element (F = 16), the
    softmax's bound.
    Cost: that of protocols.softmax for the logits' shape.
    Ref: CrypTen (Knott et al., NeurIPS 2021) cross-entropy backward.
    """
    if logits.shape != onehot.shape or len(logits.shape) != 2:
        raise ValueError(f"softmax_cross_entropy_grad: logits {logits.shape} and one-hot labels {onehot.shape} "
                         "must both be (batch, classes)")
    p = softmax_protocol.softmax(party, logits, frac_bits, tag=tag)
    return p - onehot, p


def cost(shape, frac_bits: int = 16) -> Cost:
    return softmax_protocol.cost(shape, frac_bits)
