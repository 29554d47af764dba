"""Pooling on shared NHWC tensors: sum, average (linear) and max (comparisons)."""

from __future__ import annotations

import numpy as np

from pysmpc.kernels.pool import sum_pool2d as _sum_pool_kernel
from pysmpc.parties.party import Party
from pysmpc.protocols.relu import relu
from pysmpc.protocols.truncate import truncate
from pysmpc.sharing.shares import AShare, concat_shares

__all__ = ["sum_pool2d", "avg_pool2d", "max_pool2d", "pool_output_shape"]


def pool_output_shape(x_shape, k: int, stride: int | None = None) -> tuple:
    stride = k if stride is None else stride
    if len(x_shape) != 4:
        raise ValueError(f"pooling takes NHWC tensors, got shape {x_shape}")
    n, h, w, c = x_shape
    if h < k or w < k:
        raise ValueError(f"pool window {k}x{k} is larger than the input {h}x{w}")
    return (n, (h - k) // stride + 1, (w - k) // stride + 1, c)


def sum_pool2d(party: Party, x: AShare, k: int, stride: int | None = None) -> AShare:
    """Sum over k x k windows ('valid'): linear, so local on each share. Cost: none."""
    out_shape = pool_output_shape(x.shape, k, stride)
    if x.value is None:
        return AShare(None, party.index, out_shape)
    return AShare(_sum_pool_kernel(x.value, k, stride), party.index)


def avg_pool2d(party: Party, x: AShare, k: int, frac_bits: int, stride: int | None = None,
               tag: str = "avgpool") -> AShare:
    """Average over k x k windows of a fixed-point tensor with F = frac_bits.

    1. Sum the window locally.
    2. Divide: when k*k is a power of two, truncate by log2(k*k) bits (1
       round); otherwise multiply by the public encoding of 1/k^2 and
       truncate by F (1 round).

    Error: at most one unit in the last place from truncation, plus (k*k not
    a power of two) the encoding error of 1/k^2, below 2^-(F+1) relative.
    Cost: 1 round; 8 bytes per output element per computing party.
    """
    total = sum_pool2d(party, x, k, stride)
    window = k * k
    if window == 1:
        return total
    if window & (window - 1) == 0:
        return truncate(party, total, window.bit_length() - 1, tag=tag)
    inv = np.uint64(round((1 << frac_bits) / window))
    return truncate(party, total * inv, frac_bits, tag=tag)


def max_pool2d(party: Party, x: AShare, k: int, stride: int | None = None, tag: str = "maxpool") -> AShare:
    """Max over k x k windows ('valid') by a tournament of comparisons.

    1. Gather the k*k window positions as k*k strided slices (local).
    2. Each level pairs the candidates and keeps b + relu(a - b); all pairs
       of a level share one relu call (4 rounds per level).

    Cost: 4 * ceil(log2(k*k)) rounds; a relu of (k*k - 1) * out.size elements
    in all.
    """
    stride = k if stride is None else stride
    out_shape = pool_output_shape(x.shape, k, stride)
    oh, ow = out_shape[1], out_shape[2]
    candidates = [
        x[:, i : i + stride * (oh - 1) + 1 : stride, j : j + stride * (ow - 1) + 1 : stride, :]
        for i in range(k)
        for j in range(k)
    ]
    level = 0
    while len(candidates) > 1:
        pairs = len(candidates) // 2
        a = concat_shares(candidates[0 : 2 * pairs : 2], axis=0)
        b = concat_shares(candidates[1 : 2 * pairs : 2], axis=0)
        best = b + relu(party, a - b, tag=f"{tag}:{level}")
        batch = out_shape[0]
        merged = [best[i * batch : (i + 1) * batch] for i in range(pairs)]
        if len(candidates) % 2:
            merged.append(candidates[-1])
        candidates = merged
        level += 1
    return candidates[0]
