"""One training step of a sequential Graph on shares: forward, softmax cross-entropy, backward, SGD.

The secure twin of `graph.backward` (same layers, same gradients), run by
each party on its own shares. It composes protocols only:

* every shared tensor that enters a product (the input, each weight, each
  layer input, each output gradient) is masked and opened once
  (`protocols.bilinear.mask_and_open`); the forward product, the weight
  gradient and the input gradient then cost no round, only a fresh [c]
  from P2 each (`protocols.bilinear.product`);
* relu keeps its comparison bit, and the backward pass multiplies by it
  (`protocols.relu_grad`);
* average pooling sums locally (after a convolution, inside its product:
  the convolution of the input's window sums) and divides by a
  truncation; its backward
  (copy to the window, divide) is folded into the next product's map, so
  the smaller pooled gradient is what is opened;
* the loss gradient is softmax(logits) - onehot (`protocols.softmax_ce`);
* SGD with momentum updates all weights in 2 rounds (`protocols.sgd`).

Fixed point: activations, weights and gradients have F fractional bits; a
product has 2F until truncated. Truncations are deferred and merged: a
conv's 2F output is summed by the pool and truncated once by F + log2(k^2)
inside the relu's comparison round. Supported layers: conv2d (stride,
padding), dense, avg_pool2d (power-of-two windows), max_pool2d ('valid'),
relu, flatten.
"""

from __future__ import annotations

import math
from functools import partial

import numpy as np

from pysmpc.graph.graph import Graph, conv_padding
from pysmpc.kernels import backprop
from pysmpc.parties.party import Party
from pysmpc.protocols import bilinear, max_pool_grad, pool, relu_grad, sgd, softmax_ce
from pysmpc.protocols.compare import msb
from pysmpc.protocols.select import select
from pysmpc.protocols.truncate import truncate
from pysmpc.sharing.shares import AShare

__all__ = ["TrainingState", "train_step", "check_trainable", "TRAINABLE_KINDS", "StepResult"]

TRAINABLE_KINDS = ("conv2d", "dense", "avg_pool2d", "max_pool2d", "relu", "flatten")
_ALL_ONES = np.uint64(0xFFFFFFFFFFFFFFFF)


def check_trainable(graph: Graph) -> None:
    """Raise ValueError naming the first layer secure training does not support."""
    if not graph.is_sequential():
        raise ValueError("secure training takes a sequential graph (each layer reads the one before)")
    for layer in graph.layers:
        if layer.kind not in TRAINABLE_KINDS:
            raise ValueError(f"layer {layer.name!r}: secure training supports {', '.join(TRAINABLE_KINDS)}, "
                             f"not {layer.kind}")
        if layer.kind == "avg_pool2d":
            ph, pw = layer.params["pool"]
            if (ph * pw) & (ph * pw - 1) or layer.params["padding"] != "valid":
                raise ValueError(f"layer {layer.name!r}: secure training averages 'valid' windows of a power-of-two "
                                 f"size (divided by a truncation), got pool {ph}x{pw} {layer.params['padding']}")
        if layer.kind == "max_pool2d" and layer.params["padding"] != "valid":
            raise ValueError(f"layer {layer.name!r}: secure training max-pools 'valid' windows only")
        if layer.kind in ("conv2d", "dense") and "kernel" not in layer.weights:
            raise ValueError(f"layer {layer.name!r}: no kernel")
    if graph.layers[-1].kind != "dense":
        raise ValueError("secure training ends with a dense layer (the logits of the softmax cross-entropy)")


class TrainingState:
    """One party's shares of the weights and momentum velocities, and its step counter.

    weights[i] maps "kernel"/"bias" to this party's AShare (F fractional
    bits), {} for layers without weights; velocities likewise (None before
    the first step).
    """

    def __init__(self, graph: Graph, weights: list[dict], frac_bits: int):
        check_trainable(graph)
        self.graph = graph
        self.weights = weights
        self.velocities: list[dict] | None = None
        self.frac_bits = frac_bits
        self.step = 0

    def params(self) -> list[tuple[int, str]]:
        return [(i, k) for i, w in enumerate(self.weights) for k in ("kernel", "bias") if k in w]


class StepResult:
    """What a step leaves on a party: this party's share of the softmax output (for optional reports)."""

    def __init__(self, probabilities: AShare):
        self.probabilities = probabilities


class _Lazy:
    """A gradient still to be copied onto pooling windows (the adjoint of a sum pool), kept small."""

    def __init__(self, grad: AShare, pool_hw, stride, in_hw):
        self.grad, self.pool_hw, self.stride, self.in_hw = grad, pool_hw, stride, in_hw

    def expand(self, value: np.ndarray) -> np.ndarray:
        return backprop.upsample_windows(value, self.pool_hw, self.stride, self.in_hw)

    def materialize(self, party: Party) -> AShare:
        n, _, _, c = self.grad.shape
        shape = (n, self.in_hw[0], self.in_hw[1], c)
        if self.grad.value is None:
            return AShare(None, party.index, shape)
        return AShare(self.expand(self.grad.value), party.index)


def train_step(party: Party, state: TrainingState, x: AShare, onehot: AShare, *, lr: float, momentum: float = 0.9,
               tag: str = "train") -> StepResult:
    """Run one SGD step on the batch (x, onehot) (shares, F fractional bits); update `state` in place.

    Cost: see docs/TRAINING.md (rounds and bytes per step, per layer);
    `cost_step` in tests is what the channels count.
    """
    graph, F = state.graph, state.frac_bits
    n = x.shape[0]
    if tuple(x.shape[1:]) != tuple(graph.input_shape) or onehot.shape[0] != n:
        raise ValueError(f"train_step: batch {x.shape} / labels {onehot.shape} do not fit the graph's input "
                         f"{graph.input_shape}")
    step = state.step
    shapes = [(n,) + tuple(s) for s in graph.shapes()]
    key = partial(_key, step)
    weighted = [i for i, layer in enumerate(graph.layers) if layer.kind in ("conv2d", "dense")]
    first_weighted = weighted[0]
    all_masked: list = []

    # Round 1: every kernel and the input, masked and opened together.
    kernels = [state.weights[i]["kernel"] for i in weighted]
    opened = bilinear.mask_and_open(party, kernels + [x], [key("w", i) for i in weighted] + [key("x", 0)],
                                    tag=f"{tag}:mask")
    all_masked += opened
    masked_w = dict(zip(weighted, opened[:-1]))
    act, act_masked, pending = x, opened[-1], 0
    fused = False  # the last product already summed the next average pool's windows

    # Forward, keeping what the backward pass needs.
    caches: list = [None] * len(graph.layers)
    for i, layer in enumerate(graph.layers):
        kind = layer.kind
        if kind in ("conv2d", "dense"):
            if pending:
                act, pending, act_masked = truncate(party, act, pending, tag=f"{tag}:trunc{i}"), 0, None
            if act_masked is None:
                (act_masked,) = bilinear.mask_and_open(party, [act], [key("x", i)], tag=f"{tag}:mask")
                all_masked.append(act_masked)
            # A convolution followed by an average pool computes the pool's sums directly (ph*pw times fewer
            # multiply-adds, and P2 deals the smaller [c]); the pool layer then only owes its division.
            fuse = _pool_after(graph, i)
            out_shape = shapes[i + 2] if fuse else shapes[i + 1]
            fn = _forward_map(layer, shapes[i], fuse, out_shape)
            # A convolution with few input channels (the first: K = 9) makes one GEMM pass of
            # both local products (stacked over channels) ~3x faster than two; deeper ones gain nothing.
            kernel_shape = state.weights[i]["kernel"].shape
            axes = (3, 2) if kind == "conv2d" and int(np.prod(kernel_shape[:3])) < 64 else None
            act = bilinear.product(party, act_masked, masked_w[i], fn, out_shape, tag=f"{tag}:fwd{i}",
                                   stack_axes=axes)
            if "bias" in state.weights[i]:
                # bias from F to the product's 2F, summed over the pool window when fused
                window = fuse.params["pool"][0] * fuse.params["pool"][1] if fuse else 1
                act = act + state.weights[i]["bias"] * ((1 << F) * window)
            fused = fuse is not None
            caches[i] = act_masked
            act_masked, pending = None, F
        elif kind == "avg_pool2d":
            ph, pw = layer.params["pool"]
            if not fused:
                act = pool.sum_pool2d(party, act, (ph, pw), layer.params["stride"])
            pending += int(math.log2(ph * pw))
        elif kind == "max_pool2d":
            # Comparisons are exact at any scale: the owed truncation stays owed.
            act, caches[i] = max_pool_grad.max_pool2d_keep(party, act, layer.params["pool"], layer.params["stride"],
                                                           tag=f"{tag}:maxpool{i}")
        elif kind == "relu":
            if pending:
                act, keep = relu_grad.relu_truncated_keep(party, act, pending, tag=f"{tag}:relu{i}")
            else:
                keep = msb(party, act, tag=f"{tag}:relu{i}:cmp") ^ _ALL_ONES
                act = select(party, act, keep, tag=f"{tag}:relu{i}:select")
            caches[i], pending = keep, 0
        elif kind == "flatten":
            caches[i] = act.shape
            act = act.reshape(n, -1)
    if pending:
        act = truncate(party, act, pending, tag=f"{tag}:logits")
    grad, probabilities = softmax_ce.softmax_cross_entropy_grad(party, act, onehot, F, tag=f"{tag}:softmax")

    # Backward. grad has `pending` extra fractional bits (F after a product's
    # input gradient, + log2(k^2) for each average pool's division).
    grads: dict = {}
    pending = 0
    for i in range(len(graph.layers) - 1, -1, -1):
        layer = graph.layers[i]
        kind = layer.kind
        if kind in ("conv2d", "dense"):
            lazy = grad if isinstance(grad, _Lazy) else None
            small = lazy.grad if lazy else grad
            if pending:
                small = truncate(party, small, pending, tag=f"{tag}:gtrunc{i}")
            (g_masked,) = bilinear.mask_and_open(party, [small], [key("g", i)], tag=f"{tag}:mask")
            all_masked.append(g_masked)
            kernel_fn, input_fn = _backward_maps(layer, shapes[i], lazy)
            w_shape = state.weights[i]["kernel"].shape
            grads[(i, "kernel")] = bilinear.product(party, caches[i], g_masked, kernel_fn, w_shape,
                                                    tag=f"{tag}:dw{i}")
            if "bias" in state.weights[i]:
                # Upsampling copies each pooled value onto ph*pw positions: the sum is ph*pw times g's.
                copies = lazy.pool_hw[0] * lazy.pool_hw[1] if lazy else 1
                grads[(i, "bias")] = small.sum(axis=tuple(range(len(small.shape) - 1))) * copies
            if i == first_weighted:
                break
            grad = bilinear.product(party, g_masked, masked_w[i], input_fn, shapes[i], tag=f"{tag}:dx{i}")
            pending = F
            continue
        if isinstance(grad, _Lazy):  # only a weighted layer's backward takes a pool's gradient unexpanded
            grad = grad.materialize(party)
        if kind == "relu":
            grad = relu_grad.relu_backward(party, grad, caches[i], tag=f"{tag}:relu{i}:grad")
        elif kind == "avg_pool2d":
            ph, pw = layer.params["pool"]
            grad = _Lazy(grad, (ph, pw), layer.params["stride"], shapes[i][1:3])
            pending += int(math.log2(ph * pw))
        elif kind == "max_pool2d":
            grad = max_pool_grad.max_pool2d_backward(party, grad, caches[i], tag=f"{tag}:maxpool{i}:grad")
        elif kind == "flatten":
            grad = grad.reshape(caches[i])
    bilinear.forget(party, all_masked)

    params = state.params()
    grad_bits = [2 * F if k == "kernel" else F for _, k in params]
    new_w, new_v = sgd.sgd_momentum(
        party, [state.weights[i][k] for i, k in params],
        None if state.velocities is None else [state.velocities[i][k] for i, k in params],
        [grads[p] for p in params], grad_bits, lr=lr, batch=n, momentum=momentum, frac_bits=F, tag=f"{tag}:sgd")
    velocities: list[dict] = [{} for _ in graph.layers]
    for (i, k), w, v in zip(params, new_w, new_v):
        state.weights[i][k] = w
        velocities[i][k] = v
    state.velocities = velocities
    state.step += 1
    return StepResult(probabilities)


def _key(step: int, what: str, i: int) -> tuple:
    return ("train", step, what, i)


def _pool_after(graph: Graph, i: int):
    """The average-pool layer right after convolution i, if any (its sums fold into the convolution)."""
    layers = graph.layers
    if layers[i].kind == "conv2d" and i + 1 < len(layers) and layers[i + 1].kind == "avg_pool2d":
        return layers[i + 1]
    return None


def _forward_map(layer, in_shape, pool_layer=None, out_shape=None):
    if layer.kind == "dense":
        return _dense_forward
    stride, pads = layer.params["stride"], conv_padding(layer, in_shape[1:])
    if pool_layer is None:
        return partial(backprop.conv2d_forward, stride=stride, pads=pads)
    return partial(backprop.conv2d_forward_pooled, stride=stride, pads=pads, pool=pool_layer.params["pool"],
                   pool_stride=pool_layer.params["stride"], pooled_hw=tuple(out_shape[1:3]))


def _dense_forward(x, w):
    from pysmpc import ring

    return ring.matmul(x, w)


def _backward_maps(layer, in_shape, lazy):
    """(kernel gradient map (x, g), input gradient map (g, w)); with `lazy`, g is a sum pool's gradient still to be
    copied onto its windows (a convolution's maps contract the pooled g directly: ph*pw times less work)."""
    if layer.kind == "dense":
        kernel_fn, input_fn = backprop.dense_weight_grad, backprop.dense_input_grad
        if lazy is None:
            return kernel_fn, input_fn
        expand = lazy.expand
        return (lambda x, g: kernel_fn(x, expand(g))), (lambda g, w: input_fn(expand(g), w))
    stride, pads = layer.params["stride"], conv_padding(layer, in_shape[1:])
    kshape = layer.weights["kernel"].shape
    if lazy is None:
        return (partial(backprop.conv2d_weight_grad, kernel_shape=kshape, stride=stride, pads=pads),
                partial(backprop.conv2d_input_grad, x_shape=in_shape, stride=stride, pads=pads))
    pool = dict(pool=lazy.pool_hw, pool_stride=lazy.stride)
    return (partial(backprop.conv2d_weight_grad_pooled, kernel_shape=kshape, stride=stride, pads=pads, **pool),
            partial(backprop.conv2d_input_grad_pooled, x_shape=in_shape, stride=stride, pads=pads, **pool))


def cost_step(graph: Graph, batch: int, frac_bits: int = 16):
    """The online cost of one `train_step` on a batch: protocols.cost.Cost (rounds, bytes each computing party
    sends, bytes P2 sends to P1), following the same decisions as train_step."""
    from pysmpc.protocols import relu as relu_protocol
    from pysmpc.protocols.cost import Cost
    from pysmpc.protocols.truncate import cost as truncate_cost

    check_trainable(graph)
    F = frac_bits
    shapes = [(batch,) + tuple(s) for s in graph.shapes()]
    weighted = [i for i, layer in enumerate(graph.layers) if layer.kind in ("conv2d", "dense")]
    total = bilinear.cost_mask([graph.layers[i].weights["kernel"].shape for i in weighted] + [shapes[0]])
    pending, masked = 0, True
    for i, layer in enumerate(graph.layers):
        kind = layer.kind
        if kind in ("conv2d", "dense"):
            if pending:
                total, pending, masked = total + truncate_cost(shapes[i]), 0, False
            if not masked:
                total = total + bilinear.cost_mask([shapes[i]])
            total = total + bilinear.cost_product(shapes[i + 2] if _pool_after(graph, i) else shapes[i + 1])
            masked, pending = False, F
        elif kind == "avg_pool2d":
            ph, pw = layer.params["pool"]
            pending += int(math.log2(ph * pw))
        elif kind == "max_pool2d":
            total = total + max_pool_grad.cost_forward(shapes[i + 1], layer.params["pool"])
        elif kind == "relu":
            total = total + (relu_grad.cost_forward(shapes[i + 1]) if pending else relu_protocol.cost(shapes[i + 1]))
            pending = 0
    if pending:
        total = total + truncate_cost(shapes[-1])
    total = total + softmax_ce.cost(shapes[-1], F)
    pending, lazy_shape = 0, None
    for i in range(len(graph.layers) - 1, -1, -1):
        layer = graph.layers[i]
        kind = layer.kind
        if kind in ("conv2d", "dense"):
            small = lazy_shape or shapes[i + 1]
            if pending:
                total = total + truncate_cost(small)
            total = total + bilinear.cost_mask([small]) + bilinear.cost_product(layer.weights["kernel"].shape)
            if i == weighted[0]:
                break
            total = total + bilinear.cost_product(shapes[i])
            pending, lazy_shape = F, None
        elif kind == "relu":
            lazy_shape = None
            total = total + relu_grad.cost_backward(shapes[i + 1])
        elif kind == "avg_pool2d":
            lazy_shape = shapes[i + 1]
            ph, pw = layer.params["pool"]
            pending += int(math.log2(ph * pw))
        elif kind == "max_pool2d":
            lazy_shape = None
            total = total + max_pool_grad.cost_backward(shapes[i + 1], layer.params["pool"])
        elif kind == "flatten":
            lazy_shape = None
    sizes = [int(np.prod(layer.weights[k].shape)) for layer in graph.layers for k in ("kernel", "bias")
             if k in layer.weights]
    return total + sgd.cost(sizes) + Cost(0, 0, 0)
