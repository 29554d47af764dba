"""Elementwise multiplication of two shared arrays (Beaver triples)."""

from __future__ import annotations

import numpy as np

from pysmpc.parties.party import Party
from pysmpc.protocols.cost import WORD, Cost
from pysmpc.protocols.open import open_arith
from pysmpc.sharing.shares import AShare

__all__ = ["mul", "mul_fixed", "square", "cost", "cost_fixed", "cost_square"]


def mul(party: Party, x: AShare, y: AShare, tag: str = "mul") -> AShare:
    """Multiply two shared arrays elementwise with a Beaver triple (broadcasting).

    1. Take [a], [b], [c] with c = a*b from the dealer (P0's part from its
       PRG seed, P1's [c]_1 sent by P2: offline).
    2. Open d = x - a and e = y - b (1 round).
    3. [z] = [c] + d*[b] + e*[a] (+ d*e on party 0): local.

    No truncation: the product of two F-bit encodings has 2F fractional bits.
    Cost: 1 round; 8*(x.size + y.size) bytes per computing party online;
    P2 sends 8 bytes per output element to P1.
    Ref: Beaver, CRYPTO 1991.
    """
    out_shape = np.broadcast_shapes(x.shape, y.shape)
    a, b, c = party.dealer.triple(x.shape, y.shape, out_shape, np.multiply, tag="dealer:" + tag)
    if not party.computes:
        return AShare(None, party.index, out_shape)
    d_open, e_open = open_arith(party, [x.value - a, y.value - b], tag=tag)
    z = c + d_open * b + a * e_open
    if party.index == 0:
        z += d_open * e_open
    return AShare(z, party.index)


def square(party: Party, x: AShare, tag: str = "square") -> AShare:
    """Square a shared array elementwise with a square pair: half the bytes of mul(x, x).

    1. Take [a] and [a^2] from the dealer (P0's parts from its PRG seed, P1's
       [a^2]_1 sent by P2: offline).
    2. Open d = x - a (1 round); d is uniform because a is.
    3. [x^2] = [a^2] + 2d[a] (+ d^2 on party 0): local, as x = d + a.

    No truncation: the square of an F-bit encoding has 2F fractional bits.
    Cost: 1 round; 8*x.size bytes per computing party online; P2 sends
    8*x.size bytes to P1.
    Ref: Beaver, CRYPTO 1991, with the triple (a, a, a^2) of one mask.
    """
    a, a_squared = party.dealer.square_pair(x.shape, tag="dealer:" + tag)
    if not party.computes:
        return AShare(None, party.index, x.shape)
    (d_open,) = open_arith(party, [x.value - a], tag=tag)
    z = a_squared + np.uint64(2) * d_open * a
    if party.index == 0:
        z += d_open * d_open
    return AShare(z, party.index)


def mul_fixed(party: Party, x: AShare, key, tag: str = "mul") -> AShare:
    """x * W elementwise (W broadcast over x) for a W shared with `matmul.share_fixed_operand(key)`.

    The fixed-operand Beaver product of matmul.matmul_fixed, elementwise:
    W's mask F = W - B was opened once when the model was shared.
    1. Take [A] (shaped like x) and [C] = A * B from the dealer (offline);
       [A] * F + [C] needs no input, so it is folded into the material.
    2. Open E = X - A (1 round).
    3. [Z] = E * ([B] + F on P0, [B] on P1) + ([A] * F + [C]): local.

    No truncation: the product of two F-bit encodings has 2F fractional bits.
    Cost: 1 round; 8*x.size bytes per computing party online; P2 sends
    8*x.size bytes to P1.
    Ref: Beaver, CRYPTO 1991; the mask opened once as in docs/PROTOCOL.md
    ("Fixed weights opened once").
    """
    f_open, b_term, w_shape = party.store[("fixed", key)]
    try:
        fits = np.broadcast_shapes(x.shape, w_shape) == tuple(x.shape)
    except ValueError:
        fits = False
    if not fits:
        raise ValueError(f"mul_fixed: the weight of shape {w_shape} does not broadcast over x of shape {x.shape}")
    a, ac = party.dealer.fixed_triple(key, x.shape, x.shape, np.multiply, tag="dealer:" + tag,
                                      fold=lambda a, c: c + a * f_open)
    if not party.computes:
        return AShare(None, party.index, x.shape)
    (e_open,) = open_arith(party, [x.value - a], tag=tag)
    z = e_open * b_term
    z += ac
    return AShare(z, party.index)


def cost_fixed(x_shape) -> Cost:
    n = int(np.prod(x_shape))
    return Cost(rounds=1, bytes_sent=WORD * n, dealer_bytes=WORD * n)


def cost(x_shape, y_shape) -> Cost:
    out = np.broadcast_shapes(x_shape, y_shape)
    return Cost(rounds=1, bytes_sent=WORD * (int(np.prod(x_shape)) + int(np.prod(y_shape))),
                dealer_bytes=WORD * int(np.prod(out)))


def cost_square(shape) -> Cost:
    n = int(np.prod(shape))
    return Cost(rounds=1, bytes_sent=WORD * n, dealer_bytes=WORD * n)
