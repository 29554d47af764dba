"""From XOR-shared bits back to arithmetic: bit-to-arithmetic and x * b."""

from __future__ import annotations

import numpy as np

from pysmpc.kernels.bits import n_words, unpack_bits
from pysmpc.kernels.finish import select_finish
from pysmpc.parties.party import Party
from pysmpc.protocols.cost import WORD, Cost
from pysmpc.sharing.shares import AShare, BShare

__all__ = ["select", "bit_to_arith", "cost_select", "cost_bit_to_arith"]

_ONE = np.uint64(1)
_TWO = np.uint64(2)


def select(party: Party, x: AShare, b: BShare, tag: str = "select") -> AShare:
    """Multiply shared x by an XOR-shared bit b, in one round.

    x has shape (n, ...) with n = b.n (or any shape of size n); the bit of
    element i multiplies row i.

    1. Take rho (a random bit, XOR-shared and additively shared) and [a],
       [a*rho] from the dealer (offline).
    2. Open beta = b ^ rho and e = x - a together (1 round).
    3. b = beta + rho - 2 beta rho, so x*b = beta*x + (1 - 2 beta) * x*rho,
       with [x*rho] = e*[rho] + [a*rho]: local.

    Cost: 1 round; 8*(x.size + ceil(n/64)) bytes per computing party;
    P2 sends 8*(n + x.size) bytes to P1.
    Ref: the bit-injection of ABY3 (Mohassel & Rindal, CCS 2018) sec. 5.4,
    with dealer randomness in place of the third party's OT.
    """
    n = b.n
    if n == 0 or x.size % n:
        if x.size or n:
            raise ValueError(f"select: x has {x.size} elements, not a multiple of the {n} bits")
    rows = x.reshape(n, -1) if n else x.reshape(0, 1)
    rho, rho_a, a, a_rho = party.dealer.bit_injection(n, rows.shape, tag="dealer:" + tag)
    if not party.computes:
        return AShare(None, party.index, x.shape)
    mine = [b.words ^ rho, rows.value - a]
    theirs = party.channel.exchange(party.peer, mine, tag=tag)
    z = np.empty(rows.shape, np.uint64)
    select_finish(mine[0], theirs[0], mine[1], theirs[1], rho_a, a_rho, np.ascontiguousarray(rows.value), z)
    return AShare(z.reshape(x.shape), party.index)


def bit_to_arith(party: Party, b: BShare, tag: str = "b2a") -> AShare:
    """Turn XOR-shared bits into additive shares of 0/1 (integers, not fixed-point).

    1. Take rho, XOR-shared and additively shared, from the dealer.
    2. Open beta = b ^ rho (1 round).
    3. [b] = beta + (1 - 2 beta) [rho]: local.

    Cost: 1 round; 8*ceil(n/64) bytes per computing party; P2 sends 8n.
    """
    n = b.n
    rho, rho_a = party.dealer.random_bit(n, tag="dealer:" + tag)
    if not party.computes:
        return AShare(None, party.index, (n,))
    mine = b.words ^ rho
    theirs = party.channel.exchange(party.peer, mine, tag=tag)
    beta = unpack_bits(mine ^ theirs, n)
    z = (_ONE - _TWO * beta) * rho_a
    if party.index == 0:
        z += beta
    return AShare(z, party.index)


def cost_select(n: int, x_size: int) -> Cost:
    return Cost(rounds=1, bytes_sent=WORD * (x_size + n_words(n)), dealer_bytes=WORD * (n + x_size))


def cost_bit_to_arith(n: int) -> Cost:
    return Cost(rounds=1, bytes_sent=WORD * n_words(n), dealer_bytes=WORD * n)
