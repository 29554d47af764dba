"""Matrix products of shared matrices (Beaver matrix triples)."""

from __future__ import annotations


from pysmpc import ring
from pysmpc.parties.party import CLIENT, Party
from pysmpc.protocols.cost import WORD, Cost
from pysmpc.protocols.open import open_arith
from pysmpc.sharing.shares import AShare

__all__ = ["matmul", "share_fixed_operand", "matmul_fixed", "cost", "cost_fixed", "cost_open_weights"]


def matmul(party: Party, x: AShare, y: AShare, tag: str = "matmul") -> AShare:
    """Multiply shared matrices (m,k) @ (k,n) with a Beaver matrix triple.

    1. Take [A], [B], [C] with C = A @ B from the dealer (offline).
    2. Open E = X - A and F = Y - B (1 round).
    3. [Z] = [C] + E @ [B] + [A] @ F (+ E @ F on party 0): local, 2 GEMMs
       per party since E @ [B] + E @ F = E @ ([B] + F).

    Cost: 1 round; 8*(m*k + k*n) bytes per computing party online;
    P2 sends 8*m*n bytes to P1 and does one GEMM.
    Ref: Beaver, CRYPTO 1991; SecureML (Mohassel & Zhang, S&P 2017), sec. 4.
    """
    _check_matmul(x.shape, y.shape)
    out_shape = (x.shape[0], y.shape[1])
    a, b, c = party.dealer.triple(x.shape, y.shape, out_shape, ring.matmul, tag="dealer:" + tag)
    if not party.computes:
        return AShare(None, party.index, out_shape)
    e_open, f_open = open_arith(party, [x.value - a, y.value - b], tag=tag)
    return AShare(_beaver_finish(party.index, e_open, f_open, a, b, c, ring.matmul), party.index)


def share_fixed_operand(party: Party, w: AShare, key, product_tag: str = "weights") -> None:
    """Open a fixed operand (model weights) masked once: F = W - B (1 round).

    The dealer remembers B; each later product with W uses a fresh [A] and
    [C] = A (x) B, so F is opened once per shared model and reused. This is
    secure because B is uniform and used to mask W only once: F alone is
    uniform, and every later opening E = X - A uses a fresh A, so no two
    openings are masked by the same randomness (docs/PROTOCOL.md).

    Cost: 1 round; 8*w.size bytes per computing party, once per model.
    """
    b = party.dealer.weight_mask(key, w.shape)
    if not party.computes:
        party.store[("fixed", key)] = (None, None, w.shape)
        return
    (f_open,) = open_arith(party, [w.value - b], tag=product_tag)
    # What each product multiplies E by: [B] + F on P0, [B] on P1 (W = F + B).
    b_term = b + f_open if party.index == 0 else b
    party.store[("fixed", key)] = (f_open, b_term, w.shape)


def matmul_fixed(party: Party, x: AShare, key, tag: str = "matmul", input_open: bool = False) -> AShare:
    """X @ W for a W shared with `share_fixed_operand(key)`: only E = X - A is opened.

    [A] @ F + [C] is folded into the material as in conv2d.conv2d_fixed;
    input_open as there (E sent by the input's owner: no round).
    Cost: 1 round; 8*m*k bytes per computing party online; P2 sends 8*m*n.
    """
    f_open, b_term, w_shape = party.store[("fixed", key)]
    _check_matmul(x.shape, w_shape)
    out_shape = (x.shape[0], w_shape[1])
    a, ac = party.dealer.fixed_triple(key, x.shape, out_shape, ring.matmul, tag="dealer:" + tag,
                                      fold=lambda a, c: c + ring.matmul(a, f_open),
                                      reveal_mask_to=CLIENT if input_open else None)
    if not party.computes:
        return AShare(None, party.index, out_shape)
    if input_open:
        e_open = x.value
    else:
        (e_open,) = open_arith(party, [x.value - a], tag=tag)
    return AShare(_fixed_finish(e_open, b_term, ac, ring.matmul), party.index)


def _beaver_finish(index, e_open, f_open, a, b, c, product):
    # [Z] = [C] + E (x) ([B] + F on party 0, [B] on party 1) + [A] (x) F
    b_term = b + f_open if index == 0 else b
    z = product(e_open, b_term)
    z += product(a, f_open)
    z += c
    return z


def _fixed_finish(e_open, b_term, ac, product):
    # [Z] = E (x) ([B] + F on party 0, [B] on party 1) + ([A] (x) F + [C]), the last folded ahead
    z = product(e_open, b_term)
    z += ac
    return z


def _check_matmul(x_shape, y_shape) -> None:
    if len(x_shape) != 2 or len(y_shape) != 2 or x_shape[1] != y_shape[0]:
        raise ValueError(f"matmul needs (m,k) @ (k,n), got {x_shape} @ {y_shape}")


def cost(x_shape, y_shape) -> Cost:
    m, k = x_shape
    n = y_shape[1]
    return Cost(rounds=1, bytes_sent=WORD * (m * k + k * n), dealer_bytes=WORD * m * n)


def cost_fixed(x_shape, w_shape, input_open: bool = False) -> Cost:
    m, k = x_shape
    if input_open:  # P2 sends A to the input's owner instead of an opening
        return Cost(rounds=0, bytes_sent=0, dealer_bytes=WORD * (m * w_shape[1] + m * k))
    return Cost(rounds=1, bytes_sent=WORD * m * k, dealer_bytes=WORD * m * w_shape[1])


def cost_open_weights(w_shape) -> Cost:
    n = 1
    for s in w_shape:
        n *= s
    return Cost(rounds=1, bytes_sent=WORD * n)
