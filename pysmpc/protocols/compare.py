"""Secure comparison: the sign bit of a shared value, without opening it."""

from __future__ import annotations

from functools import lru_cache
from itertools import combinations

import numpy as np

from pysmpc.kernels.bits import n_words, pack_bitplanes
from pysmpc.parties.party import DEALER, P0, P1, Party
from pysmpc.protocols.cost import WORD, Cost
from pysmpc.sharing.shares import AShare, BShare

__all__ = ["msb", "msb_and_open", "less_than", "greater_equal", "cost_msb", "MSB_ROUNDS"]

_ALL_ONES = np.uint64(0xFFFFFFFFFFFFFFFF)
_LOW_BITS = 63  # bits 0..62 feed the carry into bit 63
_GROUP = 4  # positions per first-level group, and children per tree node
# Round 1 yields 16 group (G, P) planes; two fan-in-4 levels reduce them to 1.
MSB_ROUNDS = 3


def msb(party: Party, x: AShare, tag: str = "cmp") -> BShare:
    """Return XOR shares of the top bit of x (x < 0 as int64), packed 64 per word.

    x = x0 + x1 mod 2^64, so msb(x) = msb(x0) ^ msb(x1) ^ carry, where the
    carry into bit 63 comes from adding the low 63 bits of x0 (held by P0
    alone, "a") and of x1 (held by P1 alone, "b"). Bits are bit planes.

    1. Groups of 4 positions: each group's generate/propagate pair (G, P) is
       a function of 4 bits of a and 4 of b, written as a bilinear form
       over their monomials, G = XOR M[S,T] a_S b_T. P0 sends its monomials
       masked, a_S ^ u_S, P1 sends b_T ^ v_T; the dealer deals XOR shares of
       XOR M[S,T] u_S v_T (1 round; 16 groups).
    2. Two levels of a fan-in-4 carry-lookahead tree:
       G = G3 ^ P3 G2 ^ P3 P2 G1 ^ P3 P2 P1 G0, P = P3 P2 P1 P0, each
       monomial in one round from opened x ^ u and the dealer's shares of
       the products of the masks (multi-input Beaver ANDs; 2 rounds).
    3. msb = a_63 ^ b_63 ^ G: local.

    Everything opened is masked by fresh uniform dealer bits.
    Cost: 3 rounds; per 64 elements each computing party sends 266 words
    (33.25 bytes per element); P2 sends 135 words per 64 elements to P1.
    Ref: carry-lookahead comparison as in ABY3 (Mohassel & Rindal, CCS 2018)
    sec. 5.3 with a fan-in-4 tree; multi-input Beaver ANDs as in
    Damgard et al., "New Primitives for Actively-Secure MPC over Rings"
    (S&P 2019) sec. 4; one-round group carries as a bilinear form of
    private-input monomials (the "one-time truth table" idea of Ishai et
    al., TCC 2013, in its compact algebraic form).
    """
    result, _ = msb_and_open(party, x, [], tag=tag)
    return result


def msb_and_open(party: Party, x: AShare, to_open: list[np.ndarray], tag: str = "cmp"):
    """msb(x), opening the additive sharings `to_open` in its first round.

    Returns (BShare of msb, [opened values]); on the dealer the list is empty.
    Merging another protocol's opening into round 1 (a truncation, say)
    saves that protocol's round.
    """
    n = x.size
    nw = n_words(n)
    if party.is_dealer:
        g, p = _group_carries(party, None, nw, tag, [])
        opened = []
    else:
        planes = pack_bitplanes(np.ascontiguousarray(x.value).reshape(-1), 0, 64)
        (g, p), opened = _group_carries(party, planes[:_LOW_BITS], nw, tag, to_open)
    for need_p in (True, False):
        g, p = _tree_level(party, g, p, nw, need_p, tag)
    if party.is_dealer:
        return BShare(None, n, party.index, (nw,)), opened
    return BShare(np.ascontiguousarray(g[0] ^ planes[_LOW_BITS]), n, party.index), opened


# -- round 1: group carries from private bits -------------------------------------------
@lru_cache(maxsize=None)
def _bilinear_forms(k: int):
    """For a k-position group: (M_G, M_P), each a (2^k, 2^k) 0/1 matrix over monomials.

    G(a, b) = XOR over S, T of M_G[S, T] a_S b_T, where a_S is the AND of
    the a-bits in S (a_0 = 1); the same for P. Found by the Moebius transform
    of the truth tables (algebraic normal form over 2k variables).
    """
    size = 1 << (2 * k)
    g_table = np.zeros(size, np.uint8)
    p_table = np.zeros(size, np.uint8)
    for m in range(size):
        a, b = m & ((1 << k) - 1), m >> k
        g_table[m] = a + b >= (1 << k)
        p_table[m] = (a ^ b) == (1 << k) - 1
    forms = []
    for table in (g_table, p_table):
        coeffs = table.copy()
        for i in range(2 * k):
            bit = 1 << i
            for m in range(size):
                if m & bit:
                    coeffs[m] ^= coeffs[m ^ bit]
        forms.append(coeffs.reshape(1 << k, 1 << k).T.copy())  # [S, T] with S the a-monomial
    return tuple(forms)


def _monomials(bits: np.ndarray, k: int) -> np.ndarray:
    """All nonempty monomials of k planes per group: (2^k - 1, groups, nw); index S-1."""
    groups, _, nw = bits.shape
    out = np.empty(((1 << k) - 1, groups, nw), np.uint64)
    for s in range(1, 1 << k):
        low = s & -s
        i = low.bit_length() - 1
        out[s - 1] = bits[:, i] if s == low else out[(s ^ low) - 1] & bits[:, i]
    return out


def _group_layout():
    """[(first position, group size)...] for the 63 low bits: 15 groups of 4, one of 3."""
    starts = list(range(0, _LOW_BITS, _GROUP))
    return [(s, min(_GROUP, _LOW_BITS - s)) for s in starts]


def _group_carries(party: Party, own_planes, nw: int, tag: str, to_open: list):
    """Step 1 (one round, plus `to_open`): XOR shares of each group's G and P, shape (16, nw)."""
    batches = {}  # k -> (first positions, monomial shape)
    for start, k in _group_layout():
        batches.setdefault(k, []).append(start)
    mine_sent, masks, w_shares, my_monomials = [], {}, {}, {}
    for k, starts in sorted(batches.items(), reverse=True):
        shape = ((1 << k) - 1, len(starts), nw)
        u = party.dealer.private(P0, shape)
        v = party.dealer.private(P1, shape)
        m_g, m_p = _bilinear_forms(k)
        if party.index == DEALER:
            w = np.stack([_cross(m, u, v) for m in (m_g, m_p)])
        else:
            w = None
        w_shares[k] = party.dealer.give_bits(w, (2, len(starts), nw), tag="dealer:" + tag)
        masks[k] = u if party.index == P0 else v
        if party.index != DEALER:
            bits = np.stack([own_planes[s : s + k] for s in starts])  # (groups, k, nw)
            my_monomials[k] = _monomials(bits, k)
            mine_sent.append(my_monomials[k] ^ masks[k])
    if party.index == DEALER:
        return (None, None)
    theirs = party.channel.exchange(party.peer, mine_sent + list(to_open), tag=tag)
    opened = [mine + other for mine, other in zip(to_open, theirs[len(mine_sent):])]
    g_parts, p_parts = [], []
    for (k, _), received in zip(sorted(batches.items(), reverse=True), theirs):
        shares = []
        for which, m in enumerate(_bilinear_forms(k)):
            share = w_shares[k][which].copy()
            if party.index == P0:
                # a_S b_T = a_S e_T ^ d_S v_T ^ u_S v_T: P0 adds a_S e_T, the
                # a_S-only terms and the public constant M[0, 0].
                e_sum = _xor_matvec(m[1:, 1:], received)
                e_sum[m[1:, 0].astype(bool)] ^= _ALL_ONES
                share ^= np.bitwise_xor.reduce(my_monomials[k] & e_sum, axis=0)
                if m[0, 0]:
                    share ^= _ALL_ONES
            else:
                # P1 adds d_S v_T (d_S = a_S ^ u_S from P0) and the b_T-only terms.
                d_sum = _xor_matvec(m[1:, 1:].T, received)
                share ^= np.bitwise_xor.reduce(d_sum & masks[k], axis=0)
                share ^= _xor_rows(my_monomials[k], m[0, 1:])
            shares.append(share)
        g_parts.append(shares[0])
        p_parts.append(shares[1])
    return (np.concatenate(g_parts), np.concatenate(p_parts)), opened


def _cross(m: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Dealer: XOR over S, T nonempty of M[S, T] u_S v_T."""
    return np.bitwise_xor.reduce(u & _xor_matvec(m[1:, 1:], v), axis=0)


def _xor_matvec(m: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """out[s] = XOR over t of m[s, t] rows[t], for a 0/1 matrix m.

    Row by row into one output buffer: a single broadcast over all of m
    would build an m.size-times larger temporary (hundreds of MB at batch
    256), and the matrices are sparse (about one entry per row).
    """
    out = np.empty((m.shape[0],) + rows.shape[1:], np.uint64)
    for s, picks in enumerate(_nonzero_rows(m.tobytes(), m.shape)):
        _xor_into(out[s], rows, picks)
    return out


@lru_cache(maxsize=None)
def _nonzero_rows(m_bytes: bytes, shape: tuple) -> tuple:
    m = np.frombuffer(m_bytes, np.uint8).reshape(shape)
    return tuple(tuple(int(t) for t in np.flatnonzero(row)) for row in m)


def _xor_into(out: np.ndarray, rows: np.ndarray, picks) -> np.ndarray:
    if not picks:
        out[...] = 0
        return out
    np.copyto(out, rows[picks[0]])
    for t in picks[1:]:
        np.bitwise_xor(out, rows[t], out=out)
    return out


def _xor_rows(rows: np.ndarray, select: np.ndarray) -> np.ndarray:
    """XOR of rows[i] where select[i] is 1 (zeros if none)."""
    return _xor_into(np.empty(rows.shape[1:], np.uint64), rows,
                     _nonzero_rows(select.astype(np.uint8).tobytes(), (1, select.shape[0]))[0])


# -- rounds 2 and 3: fan-in-4 tree with multi-input ANDs --------------------------------
# A node's children are indexed 0 (lowest) to 3. Monomials over the
# variables ("G", i) and ("P", i):
_G_MONOMIALS = (((("P", 3), ("G", 2))), (("P", 3), ("P", 2), ("G", 1)), (("P", 3), ("P", 2), ("P", 1), ("G", 0)))
_P_MONOMIAL = (("P", 3), ("P", 2), ("P", 1), ("P", 0))


@lru_cache(maxsize=None)
def _tree_plan(need_p: bool):
    """(opened variables, mask products dealt) for one fan-in-4 combine."""
    monomials = list(_G_MONOMIALS) + ([_P_MONOMIAL] if need_p else [])
    variables = sorted({v for mono in monomials for v in mono})
    products = []
    for mono in monomials:
        for r in range(2, len(mono) + 1):
            for subset in combinations(sorted(mono), r):
                if subset not in products:
                    products.append(subset)
    return tuple(variables), tuple(products), tuple(monomials)


def _tree_level(party: Party, g, p, nw: int, need_p: bool, tag: str):
    """Combine 4 adjacent (G, P) groups into one: one round."""
    groups = 16 if need_p else 4
    nodes = groups // _GROUP
    variables, products, monomials = _tree_plan(need_p)
    index = {var: i for i, var in enumerate(variables)}
    shape = (nodes, nw)
    u = party.dealer.rand_bits((len(variables),) + shape)
    dealt_value = None
    if party.index == DEALER:
        dealt_value = np.stack([_and_all([u[index[var]] for var in subset]) for subset in products])
    dealt = party.dealer.give_bits(dealt_value, (len(products),) + shape, tag="dealer:" + tag)
    if party.index == DEALER:
        return None, None
    child = {("G", i): g[i::_GROUP] for i in range(_GROUP)}
    child.update({("P", i): p[i::_GROUP] for i in range(_GROUP)})
    mine = np.stack([child[var] for var in variables]) ^ u
    theirs = party.channel.exchange(party.peer, mine, tag=tag)
    d = mine ^ theirs
    # D[X] = AND of the opened d over the variable subset X (bit i = variable i).
    table = np.empty((1 << len(variables),) + shape, np.uint64)
    table[0] = _ALL_ONES
    for x in range(1, 1 << len(variables)):
        low = x & -x
        table[x] = table[x ^ low] & d[low.bit_length() - 1]
    masks = {(var,): u[index[var]] for var in variables}
    masks.update({subset: dealt[i] for i, subset in enumerate(products)})
    first = party.index == P0

    def monomial_share(mono):
        # prod (d_j ^ u_j) = XOR over T subset of mono of D[mono \ T] AND U_T (U_{} = 1: P0 only)
        full = sum(1 << index[var] for var in mono)
        share = table[full].copy() if first else np.zeros(shape, np.uint64)
        for r in range(1, len(mono) + 1):
            for subset in combinations(sorted(mono), r):
                rest = full & ~sum(1 << index[var] for var in subset)
                share ^= table[rest] & masks[subset]
        return share

    g_new = child[("G", 3)].copy()
    for mono in monomials[:3]:
        g_new ^= monomial_share(mono)
    p_new = monomial_share(monomials[3]) if need_p else None
    return g_new, p_new


def _and_all(planes: list[np.ndarray]) -> np.ndarray:
    out = planes[0].copy()
    for plane in planes[1:]:
        out &= plane
    return out


# -- comparisons --------------------------------------------------------------------------
def less_than(party: Party, x: AShare, y, tag: str = "cmp") -> BShare:
    """XOR shares of [x < y] for shared x and shared or public (ring) y.

    Exact when |x - y| < 2^63 (as int64). Cost: as msb.
    """
    return msb(party, x - y, tag=tag)


def greater_equal(party: Party, x: AShare, y, tag: str = "cmp") -> BShare:
    """XOR shares of [x >= y]: NOT less_than (local)."""
    return less_than(party, x, y, tag=tag) ^ _ALL_ONES


def _words_per_64() -> tuple[int, int]:
    """(words each computing party sends, words P2 sends to P1) per 64 elements."""
    sent = sum((1 << k) - 1 for _, k in _group_layout())
    dealt = 2 * len(_group_layout())
    for need_p, nodes in ((True, 4), (False, 1)):
        variables, products, _ = _tree_plan(need_p)
        sent += nodes * len(variables)
        dealt += nodes * len(products)
    return sent, dealt


def cost_msb(n: int, extra_open_elements: int = 0) -> Cost:
    sent, dealt = _words_per_64()
    nw = n_words(n)
    return Cost(rounds=MSB_ROUNDS, bytes_sent=WORD * (sent * nw + extra_open_elements), dealer_bytes=WORD * dealt * nw)
