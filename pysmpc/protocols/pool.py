"""Pooling on shared NHWC tensors: sum, average (linear) and max (comparisons)."""

from __future__ import annotations

import numpy as np

from pysmpc.kernels.pool import sum_pool2d as _sum_pool_kernel
from pysmpc.parties.party import Party
from pysmpc.protocols.cost import Cost
from pysmpc.protocols.relu import cost as relu_cost
from pysmpc.protocols.relu import relu
from pysmpc.protocols.softmax import cost_max_last_axis, max_last_axis
from pysmpc.protocols.truncate import cost as truncate_cost
from pysmpc.protocols.truncate import truncate
from pysmpc.sharing.shares import AShare, concat_shares

__all__ = ["sum_pool2d", "avg_pool2d", "avg_pool2d_padded", "max_pool2d", "global_sum_pool", "global_avg_pool",
           "global_max_pool", "pool_output_shape", "window_counts", "cost_avg_pool2d_padded", "cost_max_pool2d",
           "cost_global_avg_pool", "cost_global_max_pool", "MAX_POOL_PAD_LOG2"]

# Max pooling pads with -2^61 (a ring value, whatever F): below every
# encodable value, so a padded position never wins a window that holds an
# input element, and its difference to any value stays below 2^63, where
# the comparison is exact.
MAX_POOL_PAD_LOG2 = 61


def _pair(k) -> tuple[int, int]:
    return (int(k), int(k)) if isinstance(k, (int, np.integer)) else (int(k[0]), int(k[1]))


def pool_output_shape(x_shape, k, stride=None) -> tuple:
    """NHWC output shape of 'valid' windows k (an int or (kh, kw)) at `stride` (default k)."""
    kh, kw = _pair(k)
    sh, sw = (kh, kw) if stride is None else _pair(stride)
    if len(x_shape) != 4:
        raise ValueError(f"pooling takes NHWC tensors, got shape {x_shape}")
    n, h, w, c = x_shape
    if h < kh or w < kw:
        raise ValueError(f"pool window {kh}x{kw} is larger than the input {h}x{w}")
    return (n, (h - kh) // sh + 1, (w - kw) // sw + 1, c)


def _slices(x: AShare, k, stride, out_shape) -> list[AShare]:
    """The kh*kw window positions of x as strided slices, each shaped like the output (local)."""
    (kh, kw), (sh, sw) = _pair(k), _pair(stride)
    oh, ow = out_shape[1], out_shape[2]
    return [x[:, i : i + sh * (oh - 1) + 1 : sh, j : j + sw * (ow - 1) + 1 : sw, :]
            for i in range(kh) for j in range(kw)]


def sum_pool2d(party: Party, x: AShare, k, stride=None) -> AShare:
    """Sum over k x k (or kh x kw) windows ('valid'): linear, so local on each share. Cost: none."""
    kh, kw = _pair(k)
    stride = (kh, kw) if stride is None else stride
    out_shape = pool_output_shape(x.shape, (kh, kw), stride)
    if x.value is None:
        return AShare(None, party.index, out_shape)
    sh, sw = _pair(stride)
    if kh == kw and sh == sw:
        return AShare(_sum_pool_kernel(x.value, kh, sh), party.index)
    total = None
    for part in _slices(x, (kh, kw), (sh, sw), out_shape):
        total = part.value.copy() if total is None else total + part.value
    return AShare(total, party.index)


def avg_pool2d(party: Party, x: AShare, k, frac_bits: int, stride=None, tag: str = "avgpool") -> AShare:
    """Average over k x k (or kh x kw) windows ('valid') of a fixed-point tensor with F = frac_bits.

    1. Sum the window locally.
    2. Divide: when the window size is a power of two, truncate by its log2
       (1 round); otherwise multiply by the public encoding of 1/window and
       truncate by F (1 round).

    Error: at most one unit in the last place from truncation, plus (window
    not a power of two) the encoding error of 1/window, below 2^-(F+1) relative.
    Cost: 1 round; 8 bytes per output element per computing party.
    """
    total = sum_pool2d(party, x, k, stride)
    kh, kw = _pair(k)
    window = kh * kw
    if window == 1:
        return total
    if window & (window - 1) == 0:
        return truncate(party, total, window.bit_length() - 1, tag=tag)
    inv = np.uint64(round((1 << frac_bits) / window))
    return truncate(party, total * inv, frac_bits, tag=tag)


def window_counts(in_hw, k, stride, pads) -> np.ndarray:
    """(OH, OW): how many input elements each window of the zero-padded input covers."""
    (kh, kw), (sh, sw) = _pair(k), _pair(stride)
    top, bottom, left, right = pads
    ones = np.pad(np.ones(tuple(in_hw), np.int64), ((top, bottom), (left, right)))
    view = np.lib.stride_tricks.sliding_window_view(ones, (kh, kw))[::sh, ::sw]
    return view.sum(axis=(2, 3))


def inverse_counts(counts: np.ndarray, frac_bits: int) -> np.ndarray:
    """round(2^F / count) per window position (uint64): the public factors of a padded average."""
    return np.array([[round((1 << frac_bits) / int(c)) for c in row] for row in counts], dtype=np.uint64)


def avg_pool2d_padded(party: Party, x: AShare, k, stride, pads, frac_bits: int, tag: str = "avgpool") -> AShare:
    """Average over windows of x zero-padded by pads (top, bottom, left, right), dividing by what each covers.

    The padding is not averaged in (Keras, and ONNX's count_include_pad=0):
    a border window of c input elements divides by c.
    1. Pad with zeros (a sharing of zero) and sum each window: local.
    2. Multiply by the public round(2^F / c) per window position: local.
    3. Truncate by F (1 round).

    Error: one unit in the last place, plus the encoding error of 1/c
    (below 2^-(F+1) relative).
    Cost: 1 round; 8 bytes per output element per computing party.
    """
    total = sum_pool2d(party, x.pad_spatial(*pads), k, stride)
    counts = window_counts(x.shape[1:3], k, stride, pads)
    return truncate(party, total * inverse_counts(counts, frac_bits)[None, :, :, None], frac_bits, tag=tag)


def cost_avg_pool2d_padded(out_shape) -> Cost:
    return truncate_cost(out_shape)


def max_pool2d(party: Party, x: AShare, k, stride=None, tag: str = "maxpool", pads=None) -> AShare:
    """Max over k x k (or kh x kw) windows by a tournament of comparisons.

    pads (top, bottom, left, right): pad with -2^61 first (P0 adds the
    public value on the padded positions: local), which never wins.
    1. Gather the window positions as kh*kw strided slices (local).
    2. Each level pairs the candidates and keeps b + relu(a - b); all pairs
       of a level share one relu call (4 rounds per level).

    Cost: 4 * ceil(log2(kh*kw)) rounds; a relu of (kh*kw - 1) * out.size
    elements in all.
    """
    kh, kw = _pair(k)
    stride = (kh, kw) if stride is None else stride
    if pads is not None and any(pads):
        x = x.pad_spatial(*pads).add_public(_pad_mask(x.shape, pads))
    out_shape = pool_output_shape(x.shape, (kh, kw), stride)
    candidates = _slices(x, (kh, kw), stride, out_shape)
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


def _pad_mask(shape, pads) -> np.ndarray:
    """-2^61 on the padded border of a (1, H', W', 1) mask, 0 inside (as ring values)."""
    _, h, w, _ = shape
    top, bottom, left, right = pads
    mask = np.full((1, h + top + bottom, w + left + right, 1), (1 << 64) - (1 << MAX_POOL_PAD_LOG2), np.uint64)
    mask[:, top : top + h, left : left + w, :] = 0
    return mask


def cost_max_pool2d(out_shape, k) -> Cost:
    kh, kw = _pair(k)
    out_size = int(np.prod(out_shape))
    cost = Cost(0, 0, 0)
    candidates = kh * kw
    while candidates > 1:
        cost = cost + relu_cost((candidates // 2 * out_size,))
        candidates = (candidates + 1) // 2
    return cost


def global_sum_pool(party: Party, x: AShare, keepdims: bool = False) -> AShare:
    """Sum over H and W of NHWC x: (N, C), or (N, 1, 1, C) with keepdims. Local. Cost: none."""
    return x.sum(axis=(1, 2), keepdims=keepdims)


def global_avg_pool(party: Party, x: AShare, frac_bits: int, keepdims: bool = False,
                    tag: str = "globalavg") -> AShare:
    """Average over H and W of NHWC x, as avg_pool2d with one H x W window.

    Cost: 1 round; 8 bytes per output element per computing party (none for H*W = 1).
    """
    total = global_sum_pool(party, x, keepdims)
    window = x.shape[1] * x.shape[2]
    if window == 1:
        return total
    if window & (window - 1) == 0:
        return truncate(party, total, window.bit_length() - 1, tag=tag)
    return truncate(party, total * np.uint64(round((1 << frac_bits) / window)), frac_bits, tag=tag)


def cost_global_avg_pool(x_shape, keepdims: bool = False) -> Cost:
    n, h, w, c = x_shape
    return Cost(0, 0, 0) if h * w == 1 else truncate_cost((n, c))


def global_max_pool(party: Party, x: AShare, keepdims: bool = False, tag: str = "globalmax") -> AShare:
    """Max over H and W of NHWC x by a tournament (softmax.max_last_axis on the (N*C, H*W) rows).

    Cost: 4 ceil(log2(H*W)) rounds; a relu of N*C*(H*W - 1) elements in all.
    """
    n, h, w, c = x.shape
    rows = x.reshape(n, h * w, c).transpose(0, 2, 1).reshape(n * c, h * w)
    best = max_last_axis(party, rows, tag=tag)
    return best.reshape((n, 1, 1, c) if keepdims else (n, c))


def cost_global_max_pool(x_shape) -> Cost:
    n, h, w, c = x_shape
    return cost_max_last_axis(n * c, h * w)
