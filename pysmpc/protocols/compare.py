"""Secure comparison: the sign bit of a shared value, without opening it."""

from __future__ import annotations

import numpy as np

from pysmpc.kernels.bits import n_words, pack_bitplanes
from pysmpc.kernels.bits import and_finish
from pysmpc.parties.party import P0, Party
from pysmpc.protocols.cost import WORD, Cost
from pysmpc.sharing.shares import AShare, BShare

__all__ = ["msb", "less_than", "greater_equal", "cost_msb", "MSB_ROUNDS"]

_ALL_ONES = np.uint64(0xFFFFFFFFFFFFFFFF)
_LOW_BITS = 63  # bits 0..62 feed the carry into bit 63
# 1 round for the private AND, then ceil(log2(63)) = 6 tree levels.
MSB_ROUNDS = 7


def msb(party: Party, x: AShare, tag: str = "cmp") -> BShare:
    """Return XOR shares of the top bit of x (x < 0 as int64), packed.

    x = x_0 + x_1 mod 2^64, so msb(x) = msb(x_0) ^ msb(x_1) ^ carry, where
    the carry into bit 63 comes from adding the low 63 bits of x_0 (held by
    P0 alone) and x_1 (held by P1 alone). Bits are bit-planes: plane i packs
    bit i of 64 elements per word.

    1. Generate g_i = a_i & b_i with the dealer's private-AND material: P0
       sends a ^ u, P1 sends b ^ v (1 round). Propagate p_i = a_i ^ b_i is
       XOR-shared for free (P0 holds a, P1 holds b).
    2. Reduce the 63 (g, p) planes pairwise up a binary tree:
       (G, P) = (G_hi ^ P_hi & G_lo, P_hi & P_lo); the two ANDs share the
       left operand P_hi, so a level opens 3 planes per pair (6 rounds; the
       last level needs G only: 2 planes).
    3. msb = a_63 ^ b_63 ^ G: local.

    Nothing is opened but values masked by fresh uniform bits from the
    dealer, so each party's view is uniform.
    Cost: 7 rounds; per 64 elements each computing party sends 248 words
    (31 bytes per element); P2 sends 186 words per 64 elements to P1.
    Ref: the carry-lookahead comparison of SecureNN's successors, e.g.
    "ABY3" (Mohassel & Rindal, CCS 2018) sec. 5.3 and Kogge & Stone (1973);
    the two-party private AND is Beaver's triple specialised to inputs
    held by one party each.
    """
    n = x.size
    nw = n_words(n)
    mine, w = party.dealer.private_and((_LOW_BITS, nw), tag="dealer:" + tag)
    if party.is_dealer:
        g = p = None
    else:
        planes = pack_bitplanes(np.ascontiguousarray(x.value).reshape(-1), 0, 64)
        own, top = planes[:_LOW_BITS], planes[_LOW_BITS]
        sent = own ^ mine
        received = party.channel.exchange(party.peer, sent, tag=tag)
        if party.index == P0:
            g = w ^ (received & mine) ^ (sent & received)
        else:
            g = w ^ (received & mine)
        p = own
    planes_left = _LOW_BITS
    while planes_left > 1:
        g, p = _tree_level(party, g, p, planes_left, nw, tag)
        planes_left = (planes_left + 1) // 2
    if party.is_dealer:
        return BShare(None, n, party.index, (nw,))
    return BShare(np.ascontiguousarray(g[0] ^ top), n, party.index)


def _tree_level(party: Party, g, p, planes: int, nw: int, tag: str):
    """Combine adjacent (G, P) groups: one round."""
    pairs = planes // 2
    odd = planes % 2
    if planes == 2:
        u, v, w = party.dealer.and_single((1, nw), tag="dealer:" + tag)
        if party.is_dealer:
            return None, None
        p_hi, g_lo, g_hi = p[1:2], g[0:1], g[1:2]
        mine = [p_hi ^ u, g_lo ^ v]
        theirs = party.channel.exchange(party.peer, mine, tag=tag)
        d, e = mine[0] ^ theirs[0], mine[1] ^ theirs[1]
        return g_hi ^ and_finish(d, e, u, v, w, party.index == P0), None
    u, v1, v2, w1, w2 = party.dealer.and_pair((pairs, nw), tag="dealer:" + tag)
    if party.is_dealer:
        return None, None
    g_lo, g_hi = g[0 : 2 * pairs : 2], g[1 : 2 * pairs : 2]
    p_lo, p_hi = p[0 : 2 * pairs : 2], p[1 : 2 * pairs : 2]
    mine = [p_hi ^ u, g_lo ^ v1, p_lo ^ v2]
    theirs = party.channel.exchange(party.peer, mine, tag=tag)
    d, e1, e2 = (m ^ t for m, t in zip(mine, theirs))
    first = party.index == P0
    g_new = g_hi ^ and_finish(d, e1, u, v1, w1, first)
    p_new = and_finish(d, e2, u, v2, w2, first)
    if odd:
        g_new = np.concatenate([g_new, g[planes - 1 : planes]])
        p_new = np.concatenate([p_new, p[planes - 1 : planes]])
    return g_new, p_new


def less_than(party: Party, x: AShare, y, tag: str = "cmp") -> BShare:
    """XOR shares of [x < y] for shared x and shared or public (ring) y.

    Exact when |x - y| < 2^63 (as int64). Cost: as msb.
    """
    return msb(party, x - y, tag=tag)


def greater_equal(party: Party, x: AShare, y, tag: str = "cmp") -> BShare:
    """XOR shares of [x >= y]: NOT less_than (local)."""
    return less_than(party, x, y, tag=tag) ^ _ALL_ONES


def _tree_words_sent() -> tuple[int, int]:
    """(words each computing party sends, words P2 sends to P1) per 64 elements."""
    sent, dealt = _LOW_BITS, _LOW_BITS
    planes = _LOW_BITS
    while planes > 1:
        pairs = planes // 2
        if planes == 2:
            sent += 2
            dealt += 1
        else:
            sent += 3 * pairs
            dealt += 2 * pairs
        planes = (planes + 1) // 2
    return sent, dealt


def cost_msb(n: int) -> Cost:
    sent, dealt = _tree_words_sent()
    nw = n_words(n)
    return Cost(rounds=MSB_ROUNDS, bytes_sent=WORD * sent * nw, dealer_bytes=WORD * dealt * nw)
