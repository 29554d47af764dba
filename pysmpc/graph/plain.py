"""Plaintext executors for a Graph: float64 reference and exact fixed-point twin.

``run_float`` is the model as the framework computes it (up to float
rounding). ``run_fixed_point`` performs the secure computation's integer
arithmetic mod 2^64 in the clear, so the gap between the two is the
quantization error, and any further gap to the secure result is protocol
error (truncation's +1 carry, at most one unit in the last place per
truncation; the nonlinearities' documented bounds).

Both walk the graph's layers in order, keep each tensor until its last
reader has run (``Graph.last_uses``), and free it then.
"""

from __future__ import annotations

import numpy as np

from pysmpc import ring
from pysmpc.graph.graph import Graph, Layer, conv_padding, pool_padding

__all__ = ["fixed_point_trace", "run_fixed_point", "run_float", "MAX_POOL_PAD_LOG2"]

_U64 = np.uint64
# Max pooling pads with -2^MAX_POOL_PAD_LOG2 (in ring units): below every
# encodable value (|x| < 2^47 at F <= 16 ... 2^61 at most), so a padded
# position never wins, and the difference to any value stays below 2^63,
# where the secure comparison is exact.
MAX_POOL_PAD_LOG2 = 61


def _batched(graph: Graph, x) -> tuple[np.ndarray, bool]:
    """Return x with a batch axis, and whether the caller passed one."""
    x = np.asarray(x)
    shape = tuple(graph.input_shape)
    if x.shape == shape:
        return x[None], False
    if x.ndim == len(shape) + 1 and x.shape[1:] == shape:
        return x, True
    raise ValueError(f"input shape {x.shape} does not match the graph input {shape} (with or without a batch axis)")


def _pad(x: np.ndarray, pads, value=0) -> np.ndarray:
    top, bottom, left, right = pads
    if not any(pads):
        return x
    return np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)), constant_values=value)


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


def pool_counts(layer: Layer, input_shape: tuple) -> np.ndarray:
    """Return (OH, OW): how many of the input's elements each window of a padded pool covers.

    An average pool divides by this count (Keras, and ONNX with
    count_include_pad 0): padding is not averaged in.
    """
    h, w = input_shape[:2]
    ones = _pad(np.ones((1, h, w, 1)), pool_padding(layer, input_shape))
    (ph, pw), (sh, sw) = layer.params["pool"], layer.params["stride"]
    return _windows(ones, ph, pw, sh, sw).sum(axis=(4, 5))[0, :, :, 0].astype(np.int64)


def _depthwise_float(x: np.ndarray, layer: Layer) -> np.ndarray:
    kernel = layer.weights["kernel"]
    kh, kw, c, m = kernel.shape
    x = _pad(x, conv_padding(layer, x.shape[1:]))
    win = _windows(x, kh, kw, *layer.params["stride"])  # (N, OH, OW, C, kh, kw)
    out = np.einsum("nijcab,abcm->nijcm", win, kernel)
    return out.reshape(out.shape[:3] + (c * m,)) + layer.weights["bias"]


def _float_layer(layer: Layer, xs: list) -> np.ndarray:
    kind, p = layer.kind, layer.params
    x = xs[0]
    if kind == "conv2d":
        kernel = layer.weights["kernel"]
        cols, (n, oh, ow) = _im2col(x, layer)
        return (cols @ kernel.reshape(-1, kernel.shape[3]) + layer.weights["bias"]).reshape(n, oh, ow, -1)
    if kind == "depthwise_conv2d":
        return _depthwise_float(x, layer)
    if kind == "dense":
        return x @ layer.weights["kernel"] + layer.weights["bias"]
    if kind == "relu":
        return np.maximum(x, 0.0)
    if kind == "clip":
        return np.clip(x, -np.inf if p["lo"] is None else p["lo"], np.inf if p["hi"] is None else p["hi"])
    if kind == "sigmoid":
        return 0.5 * (1.0 + np.tanh(0.5 * x))  # no overflow for large |x|
    if kind == "tanh":
        return np.tanh(x)
    if kind == "softmax":
        e = np.exp(x - x.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)
    if kind == "batch_norm":
        return x * layer.weights["scale"] + layer.weights["shift"]
    if kind == "add":
        return sum(xs[1:], xs[0])
    if kind in _REARRANGING:
        return _rearrange(layer, xs)
    if kind in ("global_avg_pool", "global_max_pool"):
        reduce = np.mean if kind == "global_avg_pool" else np.max
        return reduce(x, axis=(1, 2), keepdims=p["keepdims"])
    (ph, pw), (sh, sw) = p["pool"], p["stride"]
    pads = pool_padding(layer, x.shape[1:])
    if kind == "max_pool2d":
        return _windows(_pad(x, pads, -np.inf), ph, pw, sh, sw).max(axis=(4, 5))
    total = _windows(_pad(x, pads), ph, pw, sh, sw).sum(axis=(4, 5))
    return total / pool_counts(layer, x.shape[1:])[None, :, :, None]


# Layers that only move values (the same in float and in the ring).
_REARRANGING = ("concat", "zero_pad", "flatten", "reshape", "transpose")


def _rearrange(layer: Layer, xs: list) -> np.ndarray:
    """Run a layer of _REARRANGING on a batch (either executor's dtype)."""
    x, p = xs[0], layer.params
    if layer.kind == "concat":
        return np.concatenate(xs, axis=_axis(layer, x) + 1)
    if layer.kind == "zero_pad":
        return _pad(x, p["pads"])
    if layer.kind == "flatten":
        return x.reshape(x.shape[0], -1)
    if layer.kind == "reshape":
        return x.reshape((x.shape[0],) + p["shape"])
    return np.ascontiguousarray(x.transpose((0,) + tuple(a + 1 for a in p["perm"])))


def _axis(layer: Layer, x: np.ndarray) -> int:
    axis = layer.params["axis"]
    return axis + x.ndim - 1 if axis < 0 else axis


def _walk(graph: Graph, x, layer_fn, keep_all: bool = False):
    """Run layer_fn(layer, inputs) over the graph; return the output (or all tensors, in layer order)."""
    tensors = {graph.input_name: x}
    outputs = [x]
    for layer, frees in zip(graph.layers, graph.last_uses()):
        tensors[layer.name] = y = layer_fn(layer, [tensors[n] for n in layer.inputs])
        if keep_all:
            outputs.append(y)
        for name in frees:
            del tensors[name]
    return outputs if keep_all else tensors[str(graph.output)]  # validate() set it


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
    outs = [_walk(graph, xb[i : i + batch_size], _float_layer) for i in range(0, len(xb), batch_size)]
    out = np.concatenate(outs) if outs else np.zeros((0,) + graph.output_shape())
    return out if batched else out[0]


def _encode(x: np.ndarray, frac_bits: int) -> np.ndarray:
    """Encode reals as round(x * 2^F) mod 2^64 (ties to even, as FixedPoint.encode)."""
    scaled = np.rint(np.asarray(x, dtype=np.float64) * float(1 << frac_bits))
    if scaled.size and np.max(np.abs(scaled)) >= 2.0**62:
        raise OverflowError(f"value too large for {frac_bits} fractional bits: max |x| = {np.max(np.abs(x))}")
    return scaled.astype(np.int64).view(_U64)


def _decode(x_ring: np.ndarray, frac_bits: int) -> np.ndarray:
    return x_ring.view(np.int64).astype(np.float64) / float(1 << frac_bits)


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


def inverse_counts(counts: np.ndarray, frac_bits: int) -> np.ndarray:
    """round(2^F / count) per window position, as uint64: what a padded average pool multiplies by."""
    return np.array([[round((1 << frac_bits) / int(c)) for c in row] for row in counts], dtype=_U64)


def _fixed_layer(frac_bits: int):
    def encode(w):
        return _encode(w, frac_bits)

    def layer_fn(layer: Layer, xs: list) -> np.ndarray:
        kind, p = layer.kind, layer.params
        x = xs[0]
        if kind == "conv2d":
            kernel_ring = encode(layer.weights["kernel"])
            cols, (n, oh, ow) = _im2col(x, layer)
            acc = cols @ kernel_ring.reshape(-1, kernel_ring.shape[3])
            return (_shift(acc, frac_bits) + encode(layer.weights["bias"])).reshape(n, oh, ow, -1)
        if kind == "depthwise_conv2d":
            padded = _pad(x, conv_padding(layer, x.shape[1:]))
            acc = ring.depthwise_conv2d(padded, encode(layer.weights["kernel"]), layer.params["stride"])
            return _shift(acc, frac_bits) + encode(layer.weights["bias"])
        if kind == "dense":
            acc = x @ encode(layer.weights["kernel"])
            return _shift(acc, frac_bits) + encode(layer.weights["bias"])
        if kind == "batch_norm":
            return _shift(x * encode(layer.weights["scale"]), frac_bits) + encode(layer.weights["shift"])
        if kind == "relu":
            return np.where(x.view(np.int64) < 0, _U64(0), x)
        if kind == "clip":
            signed = x.view(np.int64)
            lo = None if p["lo"] is None else round(p["lo"] * (1 << frac_bits))
            hi = None if p["hi"] is None else round(p["hi"] * (1 << frac_bits))
            return np.clip(signed, lo, hi).view(_U64)
        if kind in ("sigmoid", "tanh", "softmax"):
            # The protocols approximate the function to within their stated
            # bounds (protocols.sigmoid/tanh/softmax ABS_ERROR); the twin
            # takes the exact function of the decoded value, rounded.
            return encode(_float_layer(layer, [_decode(x, frac_bits)]))
        if kind == "add":
            total = xs[0].copy()
            for other in xs[1:]:
                total += other
            return total
        if kind in _REARRANGING:
            return _rearrange(layer, xs)
        if kind == "global_max_pool":
            return x.view(np.int64).max(axis=(1, 2), keepdims=p["keepdims"]).view(_U64)
        if kind == "global_avg_pool":
            total = x.sum(axis=(1, 2), keepdims=p["keepdims"], dtype=_U64)
            multiplier, shift = _pool_divisor(x.shape[1] * x.shape[2], frac_bits)
            return _shift(total * _U64(multiplier), shift)
        (ph, pw), (sh, sw) = p["pool"], p["stride"]
        pads = pool_padding(layer, x.shape[1:])
        if kind == "max_pool2d":
            padded = _pad(x.view(np.int64), pads, -(1 << MAX_POOL_PAD_LOG2))
            return _windows(padded, ph, pw, sh, sw).max(axis=(4, 5)).view(_U64)
        # avg_pool2d
        total = _windows(_pad(x, pads), ph, pw, sh, sw).sum(axis=(4, 5), dtype=_U64)
        if any(pads):
            inverse = inverse_counts(pool_counts(layer, x.shape[1:]), frac_bits)
            return _shift(total * inverse[None, :, :, None], frac_bits)
        multiplier, shift = _pool_divisor(ph * pw, frac_bits)
        return _shift(total * _U64(multiplier), shift)

    return layer_fn


def _check_frac_bits(frac_bits: int) -> None:
    if isinstance(frac_bits, bool) or not isinstance(frac_bits, (int, np.integer)) or not 0 < frac_bits < 31:
        raise ValueError(f"frac_bits must be in 1..30 (products carry 2F bits), got {frac_bits!r}")


def fixed_point_trace(graph: Graph, x, frac_bits: int = 16) -> list:
    """Return [input_ring, layer 0 output_ring, ...]: uint64 arrays with a batch axis.

    The per-layer values of ``run_fixed_point``, to compare a secure run
    layer by layer (decode with ``ring.view(np.int64) / 2**frac_bits``).
    Every tensor is kept (no freeing), in layer order.
    """
    _check_frac_bits(frac_bits)
    xb, _ = _batched(graph, x)
    return _walk(graph, _encode(xb, frac_bits), _fixed_layer(frac_bits), keep_all=True)


def run_fixed_point(graph: Graph, x, frac_bits: int = 16, return_ring: bool = False, batch_size: int = 256):
    """Run the graph in fixed point mod 2^64, exactly as the secure backend computes it.

    Every value is an int64 read of a uint64 ring element with F = frac_bits
    fractional bits; all sums and products wrap mod 2^64.

    0. Input: x_ring = round(x * 2^F) (ties to even, ``FixedPoint.encode``).
    1. conv2d: kernel_ring = round(kernel * 2^F); pad x_ring with zeros
       (``conv_padding``); acc = im2col(x_ring) @ kernel_ring, which carries
       2F fractional bits; y = floor(acc / 2^F) (arithmetic shift);
       y += round(bias * 2^F). The bias is added after truncation, at F.
       depthwise_conv2d: the same with the per-channel product.
    2. dense: the same with acc = x_ring @ kernel_ring; batch_norm: the same
       with acc = x_ring * round(scale * 2^F), then + round(shift * 2^F).
    3. avg_pool2d, window ph x pw (given stride): s = window sum (exact,
       local on shares). Unpadded: if ph*pw = 2^k, y = floor(s / 2^k);
       otherwise y = floor(s * round(2^F / (ph*pw)) / 2^F), where round is
       Python's round. Padded: y = floor(s * round(2^F / count) / 2^F), with
       count the input elements the window covers. global_avg_pool: as an
       unpadded pool of the whole H x W.
    4. max_pool2d, global_max_pool: exact max over each window (signed
       compare); padding is -2^61, which never wins.
    5. relu: y = x if x >= 0 (signed) else 0. clip: x clipped to
       round(lo * 2^F), round(hi * 2^F).
    6. sigmoid, tanh, softmax: the exact function of the decoded value,
       rounded to F bits (the protocols are within their ABS_ERROR of it).
    7. add: sum mod 2^64; concat, zero_pad, flatten, reshape, transpose:
       moves and zeros, exact (NHWC order).

    Output: logits = int64(y) / 2^F.

    The secure truncation returns floor(.) or floor(.) + 1, and the secure
    executor may truncate a sum once where this truncates each term, so a
    secure run may differ from this by one unit per truncation, propagated
    through later layers; everything else is exact.

    Args:
        graph: a validated Graph.
        x: input of shape graph.input_shape, or with a leading batch axis.
        frac_bits: F, the fractional bits of every encoding.
        return_ring: also return the output's uint64 ring elements.
        batch_size: images per pass (bounds memory; results do not depend on it).

    Returns:
        float64 logits shaped like ``run_float``'s, or (logits, logits_ring).
    """
    _check_frac_bits(frac_bits)
    xb, batched = _batched(graph, x)
    layer_fn = _fixed_layer(frac_bits)
    outs = [_walk(graph, _encode(xb[i : i + batch_size], frac_bits), layer_fn) for i in range(0, len(xb), batch_size)]
    y_ring = np.concatenate(outs) if outs else np.zeros((0,) + graph.output_shape(), dtype=_U64)
    if not batched:
        y_ring = y_ring[0]
    logits = _decode(y_ring, frac_bits)
    return (logits, y_ring) if return_ring else logits

