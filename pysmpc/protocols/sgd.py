"""SGD with momentum on shared weights, with a public learning rate."""

from __future__ import annotations

import numpy as np

from pysmpc.parties.party import Party
from pysmpc.protocols.cost import Cost
from pysmpc.protocols.truncate import MAX_ABS_LOG2, truncate
from pysmpc.protocols.truncate import cost as truncate_cost
from pysmpc.sharing.shares import AShare, concat_shares

__all__ = ["sgd_momentum", "cost", "STEP_BITS"]

# Fractional bits of the public step lr / batch: 0.05 / 128 is 6554 units,
# encoded to 0.008% (the step of a single weight is then still stochastic-
# rounding-exact on average).
STEP_BITS = 24


def sgd_momentum(party: Party, weights: list[AShare], velocities: list[AShare] | None, grads: list[AShare],
                 grad_bits: list[int], lr: float, batch: int, momentum: float, frac_bits: int = 16,
                 tag: str = "sgd") -> tuple[list[AShare], list[AShare]]:
    """Return (new weights, new velocities) for v <- momentum v + g, w <- w - (lr / batch) v.

    grads are sums over the batch with grad_bits[i] fractional bits each
    (a Beaver product of two F-bit tensors has 2F); weights and velocities
    have F = frac_bits. velocities None means zeros (the first step). All
    tensors are updated together, flattened into one vector:
    1. S = max(2F, grad_bits): u = round(momentum 2^F) v 2^(S-2F) +
       g 2^(S - grad_bits), local; v' = trunc(u, S - F) (1 round).
    2. w' = w - trunc(round(lr / batch 2^K) v', K), K = STEP_BITS (1 round).

    Error: both truncations round stochastically (protocols.truncate:
    floor plus a borrow that is 1 with probability the dropped fraction),
    so each is unbiased with |error| < 2^-F; momentum and lr / batch are
    public and encoded to within 2^-(F+1) and 2^-(K+1).
    Range: |u| < 2^62 and |v' lr / batch| < 2^(62-F-K); real gradients
    summed over a batch stay below 2^(62-S) (2^30 for S = 32).
    Cost: 2 rounds; 16 bytes per weight per computing party; P2 sends 32.
    Ref: SGD with momentum (Polyak 1964; Sutskever et al., ICML 2013);
    fixed-point training as in SecureML (S&P 2017) sec. 4.1.
    """
    if len(weights) != len(grads) or len(grads) != len(grad_bits):
        raise ValueError(f"sgd_momentum: {len(weights)} weights, {len(grads)} gradients, {len(grad_bits)} scales")
    if not (lr > 0 and batch > 0 and 0 <= momentum < 1):
        raise ValueError(f"sgd_momentum: need lr > 0, batch > 0, 0 <= momentum < 1; got {lr}, {batch}, {momentum}")
    for w, g, b in zip(weights, grads, grad_bits):
        if w.shape != g.shape:
            raise ValueError(f"sgd_momentum: weight {w.shape} and gradient {g.shape} differ")
        if not frac_bits <= b < MAX_ABS_LOG2:
            raise ValueError(f"sgd_momentum: gradient fractional bits {b} outside [{frac_bits}, {MAX_ABS_LOG2})")
    shapes = [w.shape for w in weights]
    sizes = [int(np.prod(s)) for s in shapes]
    scale = max([2 * frac_bits] + list(grad_bits))
    parts = [g.reshape(-1) * (1 << (scale - b)) for g, b in zip(grads, grad_bits)]
    u = concat_shares(parts)
    mu = int(round(momentum * (1 << frac_bits)))
    if velocities is not None and mu:
        v = concat_shares([v.reshape(-1) for v in velocities])
        u = u + v * (mu << (scale - 2 * frac_bits))
    v_new = truncate(party, u, scale - frac_bits, tag=tag + ":velocity")
    step = int(round(lr / batch * (1 << STEP_BITS)))
    if step == 0:
        raise ValueError(f"sgd_momentum: lr / batch = {lr / batch:g} is below 2^-{STEP_BITS}")
    delta = truncate(party, v_new * step, STEP_BITS, tag=tag + ":step")
    w_new = concat_shares([w.reshape(-1) for w in weights]) - delta
    return _split(w_new, shapes, sizes), _split(v_new, shapes, sizes)


def _split(flat: AShare, shapes, sizes) -> list[AShare]:
    out, start = [], 0
    for shape, size in zip(shapes, sizes):
        out.append(flat[start : start + size].reshape(shape))
        start += size
    return out


def cost(sizes) -> Cost:
    n = int(sum(sizes))
    return truncate_cost((n,)) + truncate_cost((n,))
