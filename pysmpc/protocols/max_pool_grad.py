"""Max pooling for training: the forward keeps its tournament's comparison bits, the backward routes by them."""

from __future__ import annotations

import numpy as np

from pysmpc.parties.party import Party
from pysmpc.protocols.compare import cost_msb, msb
from pysmpc.protocols.cost import Cost
from pysmpc.protocols.select import cost_select, select
from pysmpc.sharing.shares import AShare, stack_shares

__all__ = ["max_pool2d_keep", "max_pool2d_backward", "MaxPoolCache", "cost_forward", "cost_backward"]

_ALL_ONES = np.uint64(0xFFFFFFFFFFFFFFFF)


class MaxPoolCache:
    """What the backward pass needs: the input shape, the window geometry and each level's bits [left >= right]."""

    def __init__(self, in_shape, pool, stride, out_shape, levels):
        self.in_shape, self.pool, self.stride, self.out_shape, self.levels = in_shape, pool, stride, out_shape, levels


def max_pool2d_keep(party: Party, x: AShare, pool, stride, tag: str = "maxpool") -> tuple[AShare, MaxPoolCache]:
    """Return ([max over each 'valid' window], cache) for NHWC x, keeping the tournament's bits.

    The window's k*k positions (row-major) play a tournament: at each level
    adjacent candidates pair up, left vs right:
    1. s = [left - right >= 0] = 1 ^ msb(left - right) (3 rounds, all pairs
       of the level at once).
    2. winner = right + (left - right) * s (select, 1 round); an odd last
       candidate passes to the next level.
    A tie goes to the left, so the winner is the first maximum in row-major
    order (as PyTorch routes the gradient). Exact for differences below 2^63,
    at any fixed-point scale.
    Cost: 4 rounds per level, ceil(log2(k*k)) levels; per level a msb and a
    select of the pairs' elements.
    Ref: the max tournament of SecureNN (Wagh et al., PETS 2019).
    """
    (ph, pw), (sh, sw) = pool, stride
    n, h, w, c = x.shape
    oh, ow = (h - ph) // sh + 1, (w - pw) // sw + 1
    out_shape = (n, oh, ow, c)
    candidates = [x[:, i : i + sh * (oh - 1) + 1 : sh, j : j + sw * (ow - 1) + 1 : sw, :]
                  for i in range(ph) for j in range(pw)]
    levels = []
    level = 0
    while len(candidates) > 1:
        pairs = len(candidates) // 2
        left = stack_shares(candidates[0 : 2 * pairs : 2])
        right = stack_shares(candidates[1 : 2 * pairs : 2])
        diff = left - right
        keep_left = msb(party, diff, tag=f"{tag}:{level}:cmp") ^ _ALL_ONES
        winners = right + select(party, diff, keep_left, tag=f"{tag}:{level}:select")
        levels.append(keep_left)
        candidates = [winners[p] for p in range(pairs)] + candidates[2 * pairs :]
        level += 1
    return candidates[0], MaxPoolCache(x.shape, (ph, pw), (sh, sw), out_shape, levels)


def max_pool2d_backward(party: Party, dy: AShare, cache: MaxPoolCache, tag: str = "maxpool:grad") -> AShare:
    """Return [dx]: each window's gradient goes to its first maximum, routed down the kept tournament.

    From the top, a node's gradient g splits into g * s to its left child
    and g - g * s to its right (select, 1 round per level, all nodes of a
    level at once); the k*k leaves are added back onto their window
    positions (local; overlapping windows add). Exact, any scale.
    Cost: 1 select per level: ceil(log2(k*k)) rounds.
    """
    if tuple(dy.shape) != tuple(cache.out_shape):
        raise ValueError(f"max_pool2d_backward: gradient {dy.shape}, the pool's output is {cache.out_shape}")
    (ph, pw), (sh, sw) = cache.pool, cache.stride
    counts = [ph * pw]
    for _ in cache.levels:
        counts.append(counts[-1] // 2 + counts[-1] % 2)
    nodes = [dy]
    for depth in range(len(cache.levels) - 1, -1, -1):
        pairs = counts[depth] // 2
        g = stack_shares(nodes[:pairs])
        to_left = select(party, g, cache.levels[depth], tag=f"{tag}:{depth}")
        to_right = g - to_left
        children = []
        for p in range(pairs):
            children += [to_left[p], to_right[p]]
        nodes = children + nodes[pairs:]
    n, oh, ow, c = cache.out_shape
    if dy.value is None:
        return AShare(None, party.index, cache.in_shape)
    dx = np.zeros(cache.in_shape, np.uint64)
    for k, leaf in enumerate(nodes):
        i, j = divmod(k, pw)
        dx[:, i : i + sh * (oh - 1) + 1 : sh, j : j + sw * (ow - 1) + 1 : sw, :] += leaf.value
    return AShare(dx, party.index)


def _level_sizes(pool) -> list[int]:
    count, sizes = pool[0] * pool[1], []
    while count > 1:
        sizes.append(count // 2)
        count = count // 2 + count % 2
    return sizes


def cost_forward(out_shape, pool) -> Cost:
    size = int(np.prod(out_shape))
    total = Cost(0, 0, 0)
    for pairs in _level_sizes(pool):
        n = pairs * size
        total = total + cost_msb(n) + cost_select(n, n)
    return total


def cost_backward(out_shape, pool) -> Cost:
    size = int(np.prod(out_shape))
    total = Cost(0, 0, 0)
    for pairs in _level_sizes(pool):
        total = total + cost_select(pairs * size, pairs * size)
    return total

