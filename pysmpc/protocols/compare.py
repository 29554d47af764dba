"""Secure comparison: the sign bit of a shared value, without opening it."""

from __future__ import annotations

from functools import lru_cache
from itertools import combinations

import numpy as np

from pysmpc.kernels.bits import n_words, pack_bitplanes
from pysmpc.kernels.carries import bilinear_xor, group_monomials, low_bit_index, tree_combine, tree_gather
from pysmpc.parties.party import DEALER, P0, P1, Party
from pysmpc.protocols.cost import WORD, Cost
from pysmpc.sharing.shares import AShare, BShare

__all__ = ["msb", "msb_and_open", "less_than", "greater_equal", "cost_msb", "MSB_ROUNDS"]

_ALL_ONES = np.uint64(0xFFFFFFFFFFFFFFFF)
_LOW_BITS = 63  # bits 0..62 feed the carry into bit 63
_GROUP = 4  # positions per first-level group, and children per tree node
_GROUPS = -(-_LOW_BITS // _GROUP)  # first-level groups: 15 of 4 positions, one of 3
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
    if not party.computes:
        g, p = _group_carries(party, None, nw, tag, [])
        opened = []
    else:
        planes = pack_bitplanes(np.ascontiguousarray(x.value).reshape(-1), 0, 64)
        (g, p), opened = _group_carries(party, planes[:_LOW_BITS], nw, tag, to_open)
    for need_p in (True, False):
        g, p = _tree_level(party, g, p, nw, need_p, tag)
    if not party.computes:
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


def _group_layout():
    """[(first position, group size)...] for the 63 low bits: 15 groups of 4, one of 3."""
    starts = list(range(0, _LOW_BITS, _GROUP))
    return [(s, min(_GROUP, _LOW_BITS - s)) for s in starts]


def _group_carries(party: Party, own_planes, nw: int, tag: str, to_open: list):
    """Step 1 (one round, plus `to_open`): XOR shares of each group's G and P, shape (16, nw)."""
    sent, monomials, masks, w_shares = [], {}, {}, {}
    for k, starts in _group_batches():
        shape = ((1 << k) - 1, len(starts), nw)
        u = party.dealer.private(P0, shape)
        v = party.dealer.private(P1, shape)
        form = _form_arguments(k)
        w = None
        if party.index == DEALER:
            w = np.empty((2, len(starts), nw), np.uint64)
            bilinear_xor(u, v, form.pairs, form.pair_count, None, form.no_index, form.no_count, form.zero, None, w)
        w_shares[k] = party.dealer.give_bits(w, (2, len(starts), nw), tag="dealer:" + tag)
        if party.computes:
            masks[k] = u if party.index == P0 else v
            monomials[k] = np.empty(shape, np.uint64)
            masked = np.empty(shape, np.uint64)
            group_monomials(own_planes, starts, form.low_index, masks[k], monomials[k], masked)
            sent.append(masked)
    if not party.computes:
        return (None, None)
    theirs = party.channel.exchange(party.peer, sent + list(to_open), tag=tag)
    opened = [mine + other for mine, other in zip(to_open, theirs[len(sent):])]
    # Each batch's forms land in their groups' slice of one (G, P) array,
    # so no concatenation follows.
    carries = np.empty((2, _GROUPS, nw), np.uint64)
    first = 0
    for (k, starts), received in zip(_group_batches(), theirs):
        form = _form_arguments(k)
        out = carries[:, first : first + len(starts)]
        first += len(starts)
        if party.index == P0:
            # a_S b_T = a_S e_T ^ d_S v_T ^ u_S v_T: P0 adds a_S e_T, the
            # a_S-only terms and the public constant M[0, 0].
            bilinear_xor(monomials[k], received, form.pairs, form.pair_count, monomials[k], form.a_index,
                         form.a_count, form.constant, w_shares[k], out)
        else:
            # P1 adds d_S v_T (d_S = a_S ^ u_S from P0) and the b_T-only terms.
            bilinear_xor(received, masks[k], form.pairs, form.pair_count, monomials[k], form.b_index,
                         form.b_count, form.zero, w_shares[k], out)
    return (carries[0], carries[1]), opened


@lru_cache(maxsize=None)
def _group_batches():
    """[(k, first positions as int64)] with k descending: the 15 groups of 4, then the group of 3."""
    batches = {}
    for start, k in _group_layout():
        batches.setdefault(k, []).append(start)
    return tuple((k, np.array(starts, np.int64)) for k, starts in sorted(batches.items(), reverse=True))


class _FormArguments:
    """The two bilinear forms (G, P) of a k-position group as bilinear_xor arguments."""

    def __init__(self, k: int):
        forms = _bilinear_forms(k)
        self.low_index = low_bit_index(1 << k)
        self.pairs, self.pair_count = _padded([np.argwhere(m[1:, 1:]) for m in forms], 2)
        self.a_index, self.a_count = _padded([np.flatnonzero(m[1:, 0]) for m in forms])  # a_S b_{} terms
        self.b_index, self.b_count = _padded([np.flatnonzero(m[0, 1:]) for m in forms])  # a_{} b_T terms
        self.no_index, self.no_count = _padded([np.zeros(0, np.int64)] * 2)
        self.constant = np.array([_ALL_ONES if m[0, 0] else 0 for m in forms], np.uint64)
        self.zero = np.zeros(2, np.uint64)


@lru_cache(maxsize=None)
def _form_arguments(k: int) -> _FormArguments:
    return _FormArguments(k)


def _padded(rows: list, width: int | None = None):
    """Ragged index lists as one zero-padded int64 array and their lengths."""
    longest = max(1, max(len(r) for r in rows))
    shape = (len(rows), longest) + (() if width is None else (width,))
    out = np.zeros(shape, np.int64)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out, np.array([len(r) for r in rows], np.int64)


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
    tree = _tree_arguments(need_p)
    nv = len(tree.variables)
    shape = (nodes, nw)
    u = party.dealer.rand_bits((nv,) + shape)
    dealt_value = None
    if party.index == DEALER:
        index = {var: i for i, var in enumerate(tree.variables)}
        dealt_value = np.stack([_and_all([u[index[var]] for var in subset]) for subset in tree.products])
    dealt = party.dealer.give_bits(dealt_value, (len(tree.products),) + shape, tag="dealer:" + tag)
    if not party.computes:
        return None, None
    mine = np.empty((nv,) + shape, np.uint64)
    tree_gather(g, p, tree.var_is_p, tree.var_child, _GROUP, u, mine)
    theirs = party.channel.exchange(party.peer, mine, tag=tag)
    out = np.empty((2,) + shape, np.uint64)
    tree_combine(mine, theirs, u, dealt, g, _GROUP, tree.low_index, tree.needed, tree.terms, party.index == P0, out)
    return out[0], (out[1] if need_p else None)


class _TreeArguments:
    """One fan-in-4 combine as tree_gather / tree_combine arguments.

    Each monomial prod_j (d_j ^ u_j) is XOR over T subset of it of
    D[mono minus T] AND U_T, with U_{} = 1 (P0 only: term mask -1); U of
    one variable is its mask u, of several the dealt product.
    """

    def __init__(self, need_p: bool):
        self.variables, self.products, monomials = _tree_plan(need_p)
        nv = len(self.variables)
        index = {var: i for i, var in enumerate(self.variables)}
        self.var_is_p = np.array([kind == "P" for kind, _ in self.variables])
        self.var_child = np.array([child for _, child in self.variables], np.int64)
        self.low_index = low_bit_index(1 << nv)
        terms = []
        for mono in monomials:
            slot = 1 if mono == _P_MONOMIAL else 0
            full = sum(1 << index[var] for var in mono)
            terms.append((slot, full, -1))
            for r in range(1, len(mono) + 1):
                for subset in combinations(sorted(mono), r):
                    rest = full & ~sum(1 << index[var] for var in subset)
                    mask = index[subset[0]] if r == 1 else nv + self.products.index(subset)
                    terms.append((slot, rest, mask))
        self.terms = np.array(terms, np.int64)
        # The variable subsets whose AND of d the terms use; every subset of a
        # monomial is used, so the set is closed under dropping a bit.
        self.needed = np.array(sorted({rest for _, rest, _ in terms} - {0}), np.int64)


@lru_cache(maxsize=None)
def _tree_arguments(need_p: bool) -> _TreeArguments:
    return _TreeArguments(need_p)


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
