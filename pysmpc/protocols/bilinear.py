"""Beaver products of changing shared operands, each operand opened (masked) once.

Training multiplies tensors that change every step (weights, activations,
gradients) and each of them enters several products: an activation x in
y = conv(x, W) and in dW = conv_grad(x, dY), a weight W in y and in dX, an
output gradient dY in dW and in dX. Opening x - a afresh for each product
would pay for x twice. Here each shared tensor is masked once per step with
a fresh uniform mask a kept by P2 (`mask_and_open`, one round for any number
of tensors); every product of two masked tensors then needs only a fresh
[c] = product(a, b) from P2 (`product`, no round).

Security: every opening is x - a for a fresh uniform a used for that one
opening, so P0's and P1's views are uniform and independent of the data,
exactly as with a fresh triple per product (SecureML sec. 4.2 reuses the
masked matrices across forward and backward passes the same way). Each
[c] is a fresh sharing (P0's share from its stream, P1's a correction that
looks uniform to it).
"""

from __future__ import annotations

import numpy as np

from pysmpc.parties.party import Party
from pysmpc.protocols.cost import WORD, Cost
from pysmpc.protocols.open import open_arith
from pysmpc.sharing.shares import AShare

__all__ = ["Masked", "mask_and_open", "product", "forget", "cost_mask", "cost_product"]


class Masked:
    """A shared tensor opened once as x - a: this party's share of x, its share of a, and x - a.

    `key` names the mask P2 keeps for products (`product`) until `forget`.
    On P2 (and while preprocessing) share, mask and opened are None.
    """

    __slots__ = ("key", "share", "mask", "opened")

    def __init__(self, key, share: AShare, mask, opened):
        self.key, self.share, self.mask, self.opened = key, share, mask, opened

    @property
    def shape(self) -> tuple:
        return self.share.shape


def mask_and_open(party: Party, tensors: list[AShare], keys: list, tag: str = "mask") -> list[Masked]:
    """Open x - a for each shared x with a fresh uniform mask [a] kept by P2 under its key.

    1. Take [a] per tensor from the dealer (drawn from the PRG streams: no
       traffic; P2 keeps a under the key).
    2. Open x - a for all tensors together (1 round).

    Cost: 1 round; 8 bytes per element per computing party; no dealer bytes.
    Ref: Beaver, CRYPTO 1991; masked operands reused across products as in
    SecureML (Mohassel & Zhang, S&P 2017) sec. 4.2.
    """
    if len(tensors) != len(keys):
        raise ValueError(f"mask_and_open: {len(tensors)} tensors but {len(keys)} keys")
    masks = [party.dealer.weight_mask(key, x.shape) for x, key in zip(tensors, keys)]
    if not party.computes:
        return [Masked(key, x, None, None) for x, key in zip(tensors, keys)]
    opened = open_arith(party, [x.value - a for x, a in zip(tensors, masks)], tag=tag)
    return [Masked(key, x, a, e) for x, key, a, e in zip(tensors, keys, masks, opened)]


def product(party: Party, x: Masked, y: Masked, fn, out_shape, tag: str = "product", stack_axes=None) -> AShare:
    """[fn(x, y)] for a map fn bilinear in its two arguments, from their openings: no round.

    With d = x - a and e = y - b open and [c] = fn(a, b) from P2 (offline):
    fn(x, y) = fn(d, e) + fn(d, b) + fn(a, e) + fn(a, b), so each party
    computes fn(d, [y]) + fn([a], e) + [c]; the sum over the two parties
    is fn(d, y) + fn(a, e) + c = fn(x, y) (fn(d, e) comes with fn(d, y)).

    stack_axes (ax, ay): fn sums over axis ax of its first argument paired
    with axis ay of its second (a contraction, a batch sum), so the two
    local products are one, fn(d | [a], [y] | e) stacked along those axes:
    one pass of the kernel instead of two, the same result.

    No truncation: the result has the two operands' fractional bits added.
    Cost: no round, nothing sent online; P2 sends 8 bytes per output element
    to P1 and computes fn once.
    Ref: Beaver, CRYPTO 1991.
    """
    c = party.dealer.masks_product(x.key, y.key, out_shape, fn, tag="dealer:" + tag)
    if not party.computes:
        return AShare(None, party.index, out_shape)
    if stack_axes is None:
        z = fn(x.opened, y.share.value)
        z += fn(x.mask, y.opened)
    else:
        ax, ay = stack_axes
        z = fn(np.concatenate([x.opened, x.mask], axis=ax), np.concatenate([y.share.value, y.opened], axis=ay))
    z += c
    if z.shape != tuple(out_shape):
        raise ValueError(f"product {tag!r}: fn gives shape {z.shape}, expected {tuple(out_shape)}")
    return AShare(z, party.index)


def forget(party: Party, masked: list[Masked]) -> None:
    """Let P2 drop the masks of tensors no later product uses (no traffic)."""
    party.dealer.forget_masks([m.key for m in masked])


def cost_mask(shapes) -> Cost:
    n = sum(int(np.prod(s)) for s in shapes)
    return Cost(rounds=1, bytes_sent=WORD * n, dealer_bytes=0)


def cost_product(out_shape) -> Cost:
    return Cost(rounds=0, bytes_sent=0, dealer_bytes=WORD * int(np.prod(out_shape)))
