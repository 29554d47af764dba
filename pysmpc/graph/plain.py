"""Plaintext executors for a Graph: float64 reference and exact fixed-point twin.

``run_float`` is the model as the framework computes it (up to float
rounding). ``run_fixed_point`` performs the secure computation's integer
arithmetic mod 2^64 in the clear, so the gap between the two is the
quantization error, and any further gap to the secure result is protocol
error (truncation's +1 carry, at most one unit in the last place per
truncation).
"""

from __future__ import annotations

import numpy as np

from pysmpc.graph.graph import Graph, Layer, conv_padding

__all__ = ["fixed_point_trace", "run_fixed_point", "run_float"]

_U64 = np.uint64


def _batched(graph: Graph, x) -> tuple[np.ndarray, bool]:
    """Return x with a batch axis, and whether the caller passed one."""
    x = np.asarray(x)
    shape = tuple(graph.input_shape)
    if x.shape == shape:
        return x[None], False
    if x.ndim == len(shape) + 1 and x.shape[1:] == shape:
        return x, True
    raise ValueError(f"input shape {x.shape} does not match the graph input {shape} (with or without a batch axis)")


def _pad(x: np.ndarray, pads) -> np.ndarray:
    top, bottom, left, right = pads
    if not any(pads):
        return x
    return np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))


def _windows(x: np.ndarray, kh: int, kw: int, sh: int, sw: int) -> np.ndarray:
    """Return a strided view (N, OH, OW, C, kh, kw) of the 'valid' windows of x."""
    view = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(1, 2))
    return view[:, ::sh, ::sw]


def _im2col(x: np.ndarray, layer: Layer) -> tuple[np.ndarray, tuple]:
    """Return patches (N*OH*OW, kh*kw*cin), in the kernel's HWI row order, and (N, OH, OW)."""
    kh, kw = layer.weights["kernel"].shape[:2]
    sh, sw = layer.params["stride"]
    x = _pad(x, conv_padding(layer, x.shape[1:]))
    win = _windows(x, kh, kw, sh, sw)  # (N, OH, OW, C, kh, kw)
    n, oh, ow = win.shape[:3]
    cols = np.ascontiguousarray(win.transpose(0, 1, 2, 4, 5, 3)).reshape(n * oh * ow, -1)
    return cols, (n, oh, ow)


def _run_float_batch(graph: Graph, x: np.ndarray) -> np.ndarray:
    for layer in graph.layers:
        kind = layer.kind
        if kind == "conv2d":
            kernel = layer.weights["kernel"]
            cols, (n, oh, ow) = _im2col(x, layer)
            x = (cols @ kernel.reshape(-1, kernel.shape[3]) + layer.weights["bias"]).reshape(n, oh, ow, -1)
        elif kind == "dense":
            x = x @ layer.weights["kernel"] + layer.weights["bias"]
        elif kind == "relu":
            x = np.maximum(x, 0.0)
        elif kind == "flatten":
            x = x.reshape(x.shape[0], -1)
        else:
            (ph, pw), (sh, sw) = layer.params["pool"], layer.params["stride"]
            win = _windows(x, ph, pw, sh, sw)
            x = win.mean(axis=(4, 5)) if kind == "avg_pool2d" else win.max(axis=(4, 5))
    return x


def run_float(graph: Graph, x, batch_size: int = 256) -> np.ndarray:
    """Run the graph in float64: the reference the framework's outputs match.

    Args:
        graph: a validated Graph.
        x: input of shape graph.input_shape, or (N,) + graph.input_shape
            (NHWC images, e.g. pixels / 255).
        batch_size: images per im2col + GEMM pass (bounds memory).

    Returns:
        float64 logits, (N,) + graph.output_shape() (no batch axis if x had none).
    """
    xb, batched = _batched(graph, x)
    xb = xb.astype(np.float64)
    outs = [_run_float_batch(graph, xb[i : i + batch_size]) for i in range(0, len(xb), batch_size)]
    out = np.concatenate(outs) if outs else np.zeros((0,) + graph.output_shape())
    return out if batched else out[0]


def _encode(x: np.ndarray, frac_bits: int) -> np.ndarray:
    """Encode reals as round(x * 2^F) mod 2^64 (ties to even, as FixedPoint.encode)."""
    scaled = np.rint(np.asarray(x, dtype=np.float64) * float(1 << frac_bits))
    if scaled.size and np.max(np.abs(scaled)) >= 2.0**62:
        raise OverflowError(f"value too large for {frac_bits} fractional bits: max |x| = {np.max(np.abs(x))}")
    return scaled.astype(np.int64).view(_U64)


def _shift(x: np.ndarray, bits: int) -> np.ndarray:
    """Return floor(x / 2^bits) for x read as signed: an arithmetic shift."""
    return (x.view(np.int64) >> np.int64(bits)).view(_U64)


def _pool_divisor(window: int, frac_bits: int) -> tuple[int, int]:
    """Return (multiplier, shift) with which the secure avg pool divides a window sum.

    A power-of-two window 2^s is a shift by s; otherwise multiply by the
    public round(2^F / window) and shift by F (protocols.pool.avg_pool2d).
    """
    if window & (window - 1) == 0:
        return 1, window.bit_length() - 1
    return round((1 << frac_bits) / window), frac_bits


def _fixed_point_layers(graph: Graph, x_ring: np.ndarray, frac_bits: int):
    """Yield each layer's uint64 output, starting from the encoded input."""
    for layer in graph.layers:
        kind = layer.kind
        if kind == "conv2d":
            kernel_ring = _encode(layer.weights["kernel"], frac_bits)
            cols, (n, oh, ow) = _im2col(x_ring, layer)
            acc = cols @ kernel_ring.reshape(-1, kernel_ring.shape[3])
            x_ring = (_shift(acc, frac_bits) + _encode(layer.weights["bias"], frac_bits)).reshape(n, oh, ow, -1)
        elif kind == "dense":
            acc = x_ring @ _encode(layer.weights["kernel"], frac_bits)
            x_ring = _shift(acc, frac_bits) + _encode(layer.weights["bias"], frac_bits)
        elif kind == "relu":
            x_ring = np.where(x_ring.view(np.int64) < 0, _U64(0), x_ring)
        elif kind == "flatten":
            x_ring = x_ring.reshape(x_ring.shape[0], -1)
        elif kind == "max_pool2d":
            (ph, pw), (sh, sw) = layer.params["pool"], layer.params["stride"]
            x_ring = _windows(x_ring.view(np.int64), ph, pw, sh, sw).max(axis=(4, 5)).view(_U64)
        else:  # avg_pool2d
            (ph, pw), (sh, sw) = layer.params["pool"], layer.params["stride"]
            total = _windows(x_ring, ph, pw, sh, sw).sum(axis=(4, 5), dtype=_U64)
            multiplier, shift = _pool_divisor(ph * pw, frac_bits)
            x_ring = _shift(total * _U64(multiplier), shift)
        yield x_ring


def fixed_point_trace(graph: Graph, x, frac_bits: int = 16) -> list:
    """Return [input_ring, layer 0 output_ring, ...]: uint64 arrays with a batch axis.

    The per-layer values of ``run_fixed_point``, to compare a secure run
    layer by layer (decode with ``ring.view(np.int64) / 2**frac_bits``).
    """
    xb, _ = _batched(graph, x)
    x_ring = _encode(xb, frac_bits)
    return [x_ring, *_fixed_point_layers(graph, x_ring, frac_bits)]


def run_fixed_point(graph: Graph, x, frac_bits: int = 16, return_ring: bool = False, batch_size: int = 256):
    """Run the graph in fixed point mod 2^64, exactly as the secure backend computes it.

    Every value is an int64 read of a uint64 ring element with F = frac_bits
    fractional bits; all sums and products wrap mod 2^64.

    0. Input: x_ring = round(x * 2^F) (ties to even, ``FixedPoint.encode``).
    1. conv2d: kernel_ring = round(kernel * 2^F); pad x_ring with zeros
       (``conv_padding``); acc = im2col(x_ring) @ kernel_ring, which carries
       2F fractional bits; y = floor(acc / 2^F) (arithmetic shift);
       y += round(bias * 2^F). The bias is added after truncation, at F.
    2. dense: the same with acc = x_ring @ kernel_ring.
    3. avg_pool2d, window ph x pw ('valid', given stride): s = window sum
       (exact, local on shares). If ph*pw = 2^k: y = floor(s / 2^k).
       Otherwise y = floor(s * round(2^F / (ph*pw)) / 2^F), where round is
       Python's round.
    4. max_pool2d: exact max over each window (signed compare).
    5. relu: y = x if x >= 0 (signed) else 0.
    6. flatten: reshape, NHWC order.

    Output: logits = int64(y) / 2^F.

    The secure truncation returns floor(.) or floor(.) + 1, so a secure run
    may differ from this by one unit per truncation, propagated through later
    layers; everything else is exact.

    Args:
        graph: a validated Graph.
        x: input of shape graph.input_shape, or with a leading batch axis.
        frac_bits: F, the fractional bits of every encoding.
        return_ring: also return the output's uint64 ring elements.
        batch_size: images per pass (bounds memory; results do not depend on it).

    Returns:
        float64 logits shaped like ``run_float``'s, or (logits, logits_ring).
    """
    if not 0 < frac_bits < 31:
        raise ValueError(f"frac_bits must be in 1..30 (products carry 2F bits), got {frac_bits}")
    xb, batched = _batched(graph, x)
    outs = []
    for i in range(0, len(xb), batch_size):
        *_, last = _fixed_point_layers(graph, _encode(xb[i : i + batch_size], frac_bits), frac_bits)
        outs.append(last)
    y_ring = np.concatenate(outs) if outs else np.zeros((0,) + graph.output_shape(), dtype=_U64)
    if not batched:
        y_ring = y_ring[0]
    logits = y_ring.view(np.int64).astype(np.float64) / float(1 << frac_bits)
    return (logits, y_ring) if return_ring else logits
