"""Plaintext training for a Graph: per-layer forward/backward over arrays.

Every layer kind has a ``forward`` that returns its output and a cache, and
a ``backward`` that maps the gradient of the output to the gradient of the
input and of the layer's weights. The functions take and return plain
arrays and use a short list of operations (matrix products, window
gathers and scatter-adds, elementwise products and masks, sums over axes,
reshapes), the operations a shared backend has too; nothing here keeps
state or knows about a framework. ``numpy`` does the work in float32 or
float64, whatever dtype the inputs have.

Conventions:

* Inputs are NHWC with a batch axis; weights are given per layer as a dict
  {"kernel": ..., "bias": ...} (or {} for layers without weights), in the
  layout ``Graph`` uses (HWIO conv kernels, (in, out) dense kernels).
* The loss is per example: ``softmax_cross_entropy`` returns loss_n and
  d loss_n / d logits_n. ``backward`` returns, with ``per_example=True``,
  each weight's gradient of every loss_n (a leading batch axis); otherwise
  their sum over the batch (divide by the batch size for the mean loss).
  Per-example gradients are what DP-SGD clips.
* Pools use 'valid' windows; positions no window covers get gradient 0.
  Max pooling routes the gradient to the first maximum of a window in
  row-major order (as PyTorch does).

Cost: the per-example weight gradient of a conv layer is one batched
matrix product cols_n^T @ dY_n per example (the same flops as the summed
gradient, more memory).
"""

from __future__ import annotations

import numpy as np

from pysmpc.graph.graph import Graph, Layer, conv_padding

__all__ = [
    "backward",
    "forward",
    "get_weights",
    "init_weights",
    "loss_and_grads",
    "seed_cnn",
    "set_weights",
    "softmax_cross_entropy",
]


# -- windows -------------------------------------------------------------------
def _windows(x: np.ndarray, kh: int, kw: int, sh: int, sw: int) -> np.ndarray:
    """Return a view (N, OH, OW, C, kh, kw) of the 'valid' windows of x."""
    view = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(1, 2))
    return view[:, ::sh, ::sw]


def _scatter_windows(dwin: np.ndarray, in_hw: tuple, stride: tuple) -> np.ndarray:
    """Add window gradients (N, OH, OW, kh, kw, C) back onto an (N, H, W, C) zero array.

    The adjoint of ``_windows``: each input position gets the sum over the
    windows that cover it (one strided slice-add per window offset).
    """
    n, oh, ow, kh, kw, c = dwin.shape
    sh, sw = stride
    dx = np.zeros((n, in_hw[0], in_hw[1], c), dtype=dwin.dtype)
    for i in range(kh):
        for j in range(kw):
            dx[:, i : i + sh * (oh - 1) + 1 : sh, j : j + sw * (ow - 1) + 1 : sw, :] += dwin[:, :, :, i, j, :]
    return dx


# -- conv2d --------------------------------------------------------------------
def conv2d_forward(x, kernel, bias, stride=(1, 1), pads=(0, 0, 0, 0)):
    """Return (y, cache): y = im2col(pad(x)) @ kernel + bias, NHWC in, HWIO kernel."""
    top, bottom, left, right = pads
    xp = np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0))) if any(pads) else x
    kh, kw, cin, cout = kernel.shape
    win = _windows(xp, kh, kw, *stride)
    n, oh, ow = win.shape[:3]
    cols = np.ascontiguousarray(win.transpose(0, 1, 2, 4, 5, 3)).reshape(n, oh * ow, kh * kw * cin)
    y = (cols.reshape(-1, kh * kw * cin) @ kernel.reshape(-1, cout) + bias).reshape(n, oh, ow, cout)
    return y, (cols, x.shape, xp.shape, tuple(stride), tuple(pads))


def conv2d_backward(cache, dy, kernel, per_example=False, need_dx=True):
    """Return (dx, {"kernel": dK, "bias": db}) for conv2d_forward's output gradient dy."""
    cols, x_shape, xp_shape, stride, pads = cache
    kh, kw, cin, cout = kernel.shape
    n, oh, ow, _ = dy.shape
    dy2 = dy.reshape(n, oh * ow, cout)
    if per_example:
        dk = np.matmul(cols.transpose(0, 2, 1), dy2).reshape(n, kh, kw, cin, cout)
        db = dy2.sum(axis=1)
    else:
        dk = (cols.reshape(-1, cols.shape[2]).T @ dy2.reshape(-1, cout)).reshape(kh, kw, cin, cout)
        db = dy2.sum(axis=(0, 1))
    dx = None
    if need_dx:
        dcols = (dy2.reshape(-1, cout) @ kernel.reshape(-1, cout).T).reshape(n, oh, ow, kh, kw, cin)
        dxp = _scatter_windows(dcols, xp_shape[1:3], stride)
        top, bottom, left, right = pads
        dx = dxp[:, top : xp_shape[1] - bottom, left : xp_shape[2] - right, :]
    return dx, {"kernel": dk, "bias": db}


# -- pooling -------------------------------------------------------------------
def avg_pool2d_forward(x, pool, stride):
    """Return (y, cache): the mean of each 'valid' pool window."""
    y = _windows(x, *pool, *stride).mean(axis=(4, 5))
    return y, (x.shape, tuple(pool), tuple(stride))


def avg_pool2d_backward(cache, dy):
    """Return dx: each window position gets dy / (ph * pw)."""
    x_shape, (ph, pw), stride = cache
    n, oh, ow, c = dy.shape
    share = (dy / (ph * pw)).astype(dy.dtype, copy=False)
    dwin = np.broadcast_to(share[:, :, :, None, None, :], (n, oh, ow, ph, pw, c))
    return _scatter_windows(dwin, x_shape[1:3], stride)


def max_pool2d_forward(x, pool, stride):
    """Return (y, cache): the max of each 'valid' pool window."""
    y = _windows(x, *pool, *stride).max(axis=(4, 5))
    return y, (x, y, tuple(pool), tuple(stride))


def max_pool2d_backward(cache, dy):
    """Return dx: each window's gradient goes to its first maximum (row-major)."""
    x, y, (ph, pw), (sh, sw) = cache
    n, oh, ow, c = dy.shape
    dx = np.zeros_like(x, dtype=dy.dtype)
    taken = np.zeros(y.shape, dtype=bool)
    for i in range(ph):
        for j in range(pw):
            rows = slice(i, i + sh * (oh - 1) + 1, sh)
            cols = slice(j, j + sw * (ow - 1) + 1, sw)
            hit = (x[:, rows, cols, :] == y) & ~taken
            taken |= hit
            dx[:, rows, cols, :] += dy * hit
    return dx


# -- relu, flatten, dense ------------------------------------------------------------
def relu_forward(x):
    return np.maximum(x, 0), x > 0


def relu_backward(mask, dy):
    return dy * mask


def dense_forward(x, kernel, bias):
    return x @ kernel + bias, x


def dense_backward(x, dy, kernel, per_example=False, need_dx=True):
    """Return (dx, {"kernel": dK, "bias": db}) for y = x @ kernel + bias."""
    if per_example:
        grads = {"kernel": x[:, :, None] * dy[:, None, :], "bias": dy}
    else:
        grads = {"kernel": x.T @ dy, "bias": dy.sum(axis=0)}
    return (dy @ kernel.T if need_dx else None), grads


# -- loss --------------------------------------------------------------------------
def softmax_cross_entropy(logits, labels):
    """Return (loss_n, d loss_n / d logits_n) for integer labels, per example.

    loss_n = logsumexp(logits_n) - logits_n[label_n]; the gradient is
    softmax(logits_n) - onehot(label_n).
    """
    logits = np.asarray(logits)
    labels = np.asarray(labels, dtype=np.int64)
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    total = exp.sum(axis=1, keepdims=True)
    rows = np.arange(len(labels))
    loss = np.log(total[:, 0]) - shifted[rows, labels]
    dlogits = exp / total
    dlogits[rows, labels] -= 1
    return loss, dlogits


# -- whole graph ---------------------------------------------------------------------
def forward(graph: Graph, x, weights=None):
    """Run the graph on a batch; return (output, caches) for ``backward``.

    ``weights`` (a list with one dict per layer, as ``get_weights``) defaults
    to the graph's own float64 weights.
    """
    weights = get_weights(graph) if weights is None else weights
    caches = []
    shapes = graph.shapes()
    for layer, w, in_shape in zip(graph.layers, weights, shapes):
        kind = layer.kind
        if kind == "conv2d":
            x, cache = conv2d_forward(x, w["kernel"], w["bias"], layer.params["stride"],
                                      conv_padding(layer, in_shape))
        elif kind == "dense":
            x, cache = dense_forward(x, w["kernel"], w["bias"])
        elif kind == "relu":
            x, cache = relu_forward(x)
        elif kind == "flatten":
            cache = x.shape
            x = x.reshape(x.shape[0], -1)
        elif kind == "avg_pool2d":
            x, cache = avg_pool2d_forward(x, layer.params["pool"], layer.params["stride"])
        else:
            x, cache = max_pool2d_forward(x, layer.params["pool"], layer.params["stride"])
        caches.append(cache)
    return x, caches


def backward(graph: Graph, caches, dout, weights=None, per_example=False, need_dx=False):
    """Backpropagate ``dout`` (gradient of the graph's output); return the weight gradients.

    Returns a list with one dict per layer (empty for layers without
    weights), each gradient with a leading batch axis if ``per_example``.
    With ``need_dx`` returns (grads, dx), dx the gradient of the input.
    """
    weights = get_weights(graph) if weights is None else weights
    grads = [None] * len(graph.layers)
    d = dout
    first_weighted = next((i for i, layer in enumerate(graph.layers) if layer.weights), len(graph.layers))
    for i in range(len(graph.layers) - 1, -1, -1):
        layer, cache, w = graph.layers[i], caches[i], weights[i]
        kind = layer.kind
        # Below the first weighted layer no gradient is needed unless asked for.
        want_dx = need_dx or i > first_weighted
        if kind == "conv2d":
            d, grads[i] = conv2d_backward(cache, d, w["kernel"], per_example, want_dx)
        elif kind == "dense":
            d, grads[i] = dense_backward(cache, d, w["kernel"], per_example, want_dx)
        else:
            grads[i] = {}
            if not want_dx:
                d = None
            elif kind == "relu":
                d = relu_backward(cache, d)
            elif kind == "flatten":
                d = d.reshape(cache)
            elif kind == "avg_pool2d":
                d = avg_pool2d_backward(cache, d)
            else:
                d = max_pool2d_backward(cache, d)
        if d is None and not need_dx and i <= first_weighted:
            # Nothing below needs a gradient.
            for k in range(i):
                grads[k] = {}
            break
    return (grads, d) if need_dx else grads


def loss_and_grads(graph: Graph, x, labels, weights=None, per_example=False):
    """Return (loss_n, grads) of the softmax cross-entropy of the graph's logits.

    grads as ``backward``: per example, or summed over the batch.
    """
    weights = get_weights(graph) if weights is None else weights
    logits, caches = forward(graph, x, weights)
    loss, dlogits = softmax_cross_entropy(logits, labels)
    return loss, backward(graph, caches, dlogits.astype(logits.dtype, copy=False), weights, per_example)


# -- weights -------------------------------------------------------------------------
def get_weights(graph: Graph, dtype=np.float64) -> list:
    """Return copies of the graph's weights: one dict per layer, in ``dtype``."""
    return [{k: np.array(v, dtype=dtype) for k, v in layer.weights.items()} for layer in graph.layers]


def set_weights(graph: Graph, weights) -> None:
    """Store weights (one dict per layer) into the graph as float64."""
    for layer, w in zip(graph.layers, weights):
        for k in layer.weights:
            if np.shape(w[k]) != layer.weights[k].shape:
                raise ValueError(f"layer {layer.name!r}: {k} has shape {np.shape(w[k])}, "
                                 f"expected {layer.weights[k].shape}")
            layer.weights[k] = np.array(w[k], dtype=np.float64, order="C")


def init_weights(graph: Graph, rng: np.random.Generator, dtype=np.float32) -> list:
    """Return He-normal kernels and zero biases for the graph's layers (model initialisation, not secret)."""
    out = []
    for layer in graph.layers:
        if not layer.weights:
            out.append({})
            continue
        kernel = layer.weights["kernel"]
        fan_in = int(np.prod(kernel.shape[:-1]))
        out.append({"kernel": (rng.standard_normal(kernel.shape) * np.sqrt(2.0 / fan_in)).astype(dtype),
                    "bias": np.zeros(layer.weights["bias"].shape, dtype=dtype)})
    return out


def seed_cnn(input_shape=(28, 28, 1), classes: int = 10) -> Graph:
    """Return the seed MNIST CNN with zero weights.

    conv 16 3x3 -> avg pool 2 -> relu -> conv 32 3x3 -> avg pool 2 -> relu
    -> conv 64 3x3 -> avg pool 2 -> relu -> flatten -> dense ``classes``
    (the architecture of the shipped model, pysmpc/data/mnist_cnn.h5).
    """
    layers, cin, shape = [], input_shape[2], tuple(input_shape)
    for k, cout in enumerate((16, 32, 64), start=1):
        layers += [
            Layer("conv2d", f"conv{k}", {}, {"kernel": np.zeros((3, 3, cin, cout)), "bias": np.zeros(cout)}),
            Layer("avg_pool2d", f"pool{k}", {"pool": 2}),
            Layer("relu", f"relu{k}"),
        ]
        cin = cout
    layers.append(Layer("flatten", "flatten"))
    features = int(np.prod(Graph(shape, layers).output_shape()))
    layers.append(Layer("dense", "logits", {}, {"kernel": np.zeros((features, classes)), "bias": np.zeros(classes)}))
    return Graph(shape, layers, source="pysmpc.graph.backward.seed_cnn")
