"""Run a sequential graph on shares: each party calls this on its own state.

The plan is the graph with its weights replaced by the ids under which the
cluster shared them (`load_plan`). The executor itself never computes on
shares: every step is a protocol call (pysmpc.protocols) or a local share
operation, and per layer it records time, bytes and rounds from the party's
channel.

Order of operations (F fractional bits; w and b shared at F):
  conv2d / dense   z = x (*) w with the weights' mask opened once, then
                   + b * 2^F (local)                                  -> 2F
                   (conv padding: zeros added locally to the shares)
  avg_pool2d k x k right after it: window sum (local), and the division by
                   k*k joins the owed truncation (k*k a power of two)
  relu             relu of the truncated value, the truncation's opening
                   riding in the comparison's first round (4 rounds)  -> F
  max pool, another product: truncate first (1 round)               -> F
  flatten          a local reshape (an owed truncation carries over)
  output           truncated to F, or (truncate_output=False) left at
                   its scale for the receiver to divide in the clear.
So each conv + avg-pool + relu block of the MNIST CNN costs 1 + 4 rounds,
and the bias added at 2F stays exact through pooling and truncation.
"""

from __future__ import annotations

import time

import numpy as np

from pysmpc.parties.party import Party
from pysmpc.protocols.conv2d import conv2d_fixed
from pysmpc.protocols.conv2d import cost_fixed as conv_cost_fixed
from pysmpc.protocols.cost import Cost
from pysmpc.protocols.matmul import cost_fixed as matmul_cost_fixed
from pysmpc.protocols.matmul import matmul_fixed, share_fixed_operand
from pysmpc.protocols.pool import avg_pool2d, max_pool2d, sum_pool2d
from pysmpc.protocols.relu import cost as relu_cost
from pysmpc.protocols.relu import cost_truncated as relu_cost_truncated
from pysmpc.protocols.relu import relu, relu_truncated
from pysmpc.protocols.truncate import cost as truncate_cost
from pysmpc.protocols.truncate import truncate
from pysmpc.sharing.shares import AShare

__all__ = ["load_plan", "run_plan", "plan_cost", "input_maskable", "PLAN_KINDS"]

PLAN_KINDS = ("conv2d", "dense", "avg_pool2d", "max_pool2d", "relu", "flatten")


def load_plan(party: Party, model_key, plan: list[dict], tensors: dict) -> None:
    """Open each layer's weight mask once (1 round per weight) and keep the plan.

    `tensors` maps tensor ids named in the plan to this party's shares.
    """
    for layer in plan:
        if layer["kind"] not in PLAN_KINDS:
            raise ValueError(f"layer {layer.get('name')!r}: unsupported kind {layer['kind']!r}; supported: {PLAN_KINDS}")
    for i, layer in enumerate(plan):
        if layer["kind"] in ("conv2d", "dense"):
            key = (model_key, layer["name"])
            share_fixed_operand(party, tensors[layer["kernel"]], key=key, product_tag=f"weights:{layer['name']}")
            fused = _fused_pool(plan, i)
            if fused is not None:
                _fuse_stored_weights(party, key, fused[0])
    party.store[("plan", model_key)] = plan


def _fused_pool(plan: list[dict], i: int):
    """(k, stride) if conv i (stride 1) is followed by a k x k average pool with k*k a power of two.

    Pooling is linear, so the pair is one convolution with the (kh+k-1) x
    (kw+k-1) kernel sum_{a,b<k} w shifted by (a, b), at the pool's stride: it
    computes only the outputs the pool keeps (the window sums; the division
    by k*k joins the owed truncation).
    """
    layer = plan[i]
    if layer["kind"] != "conv2d" or tuple(layer["stride"]) != (1, 1) or i + 1 >= len(plan):
        return None
    pool = plan[i + 1]
    if pool["kind"] != "avg_pool2d":
        return None
    k, stride = _square(pool["pool"], pool["name"]), _square(pool["stride"], pool["name"])
    if (k * k) & (k * k - 1):
        return None
    return k, stride


def _fuse_kernel(w: np.ndarray, k: int) -> np.ndarray:
    """HWIO kernel of conv-then-k x k-window-sum: linear, so it applies to shares and masks alike."""
    kh, kw = w.shape[:2]
    out = np.zeros((kh + k - 1, kw + k - 1) + w.shape[2:], np.uint64)
    for a in range(k):
        for b in range(k):
            out[a : a + kh, b : b + kw] += w
    return out


def _fuse_stored_weights(party: Party, key, k: int) -> None:
    """Replace the opened mask F and this party's [B] (+ F on P0) by their fused kernels (local)."""
    f_open, b_term, w_shape = party.store[("fixed", key)]
    fused_shape = (w_shape[0] + k - 1, w_shape[1] + k - 1) + tuple(w_shape[2:])
    if party.is_dealer:
        party.store[("dealer_mask", key)] = _fuse_kernel(party.store[("dealer_mask", key)], k)
        party.store[("fixed", key)] = (None, None, fused_shape)
    else:
        party.store[("fixed", key)] = (_fuse_kernel(f_open, k), _fuse_kernel(b_term, k), fused_shape)


def input_maskable(plan: list[dict]) -> bool:
    """Whether the input's owner can mask it for the first product (run_plan's input_open).

    True when the first layer other than flatten is a dense layer or an
    unpadded convolution: its Beaver opening E = x - A then needs no round.
    """
    for layer in plan:
        if layer["kind"] == "flatten":
            continue
        return layer["kind"] == "dense" or (layer["kind"] == "conv2d" and not any(layer.get("pads", (0, 0, 0, 0))))
    return False


def run_plan(party: Party, model_key, x: AShare, frac_bits: int, tensors: dict,
             profile: list | None = None, truncate_output: bool = True,
             input_open: bool = False) -> tuple[AShare, int]:
    """Run the plan on input shares x (F fractional bits).

    input_open: x.value is E = x - A on both P0 and P1, masked by the
    input's owner with the A that P2 reveals to it for the first product
    (input_maskable); that product then opens nothing (one round fewer).

    Returns (output shares, their fractional bits): F, or with
    truncate_output=False the higher scale the last layer left (its
    truncation saved: the receiver divides in the clear). `profile`, if
    given, receives one dict per layer: name, kind, seconds, bytes sent and
    rounds online on this party.
    """
    plan = party.store[("plan", model_key)]
    if input_open and not input_maskable(plan):
        raise ValueError("this model's first layer cannot take a masked input (needs dense or an unpadded conv2d)")
    pending = 0  # bits of truncation owed since the last product

    def settle(x):
        nonlocal pending
        if pending:
            x, pending = truncate(party, x, pending, tag="trunc"), 0
        return x

    def record(name, kind, start_time, start):
        if profile is not None:
            end = party.channel.totals(online=True)
            profile.append(dict(name=name, kind=kind, seconds=time.perf_counter() - start_time,
                                bytes_sent=end.bytes_sent - start.bytes_sent, rounds=end.rounds - start.rounds))

    skip = False
    for i, layer in enumerate(plan):
        start_time, start = time.perf_counter(), party.channel.totals(online=True)
        kind, name = layer["kind"], layer["name"]
        if skip:  # an average pool already folded into the convolution before it
            skip = False
        elif kind in ("conv2d", "dense"):
            x = settle(x)
            window = 1
            if kind == "conv2d":
                pads = layer.get("pads", (0, 0, 0, 0))
                if any(pads):
                    x = x.pad_spatial(*pads)
                fused = _fused_pool(plan, i)
                stride = tuple(layer["stride"]) if fused is None else (fused[1], fused[1])
                x = conv2d_fixed(party, x, (model_key, name), stride, "valid", tag=f"conv2d:{name}",
                                 input_open=input_open)
                if fused is not None:
                    window, skip = fused[0] * fused[0], True
            else:
                x = matmul_fixed(party, x, (model_key, name), tag=f"dense:{name}", input_open=input_open)
            input_open = False
            if layer.get("bias") is not None:
                # At the product's scale 2F (times the pooled window), so the
                # later truncation keeps it exact.
                x = x + tensors[layer["bias"]] * np.uint64(window << frac_bits)
            pending = frac_bits + window.bit_length() - 1
        elif kind == "avg_pool2d":
            k, stride = _square(layer["pool"], name), _square(layer["stride"], name)
            window = k * k
            if pending and window & (window - 1) == 0:
                x = sum_pool2d(party, x, k, stride)
                pending += window.bit_length() - 1
            else:
                x = avg_pool2d(party, settle(x), k, frac_bits, stride, tag=f"avgpool:{name}")
        elif kind == "max_pool2d":
            x = max_pool2d(party, settle(x), _square(layer["pool"], name), _square(layer["stride"], name),
                           tag=f"maxpool:{name}")
        elif kind == "relu":
            if pending:
                x, pending = relu_truncated(party, x, pending, tag=f"relu:{name}"), 0
            else:
                x = relu(party, x, tag=f"relu:{name}")
        elif kind == "flatten":
            x = x.reshape(x.shape[0], -1)
        record(name, kind, start_time, start)
    if truncate_output:
        start_time, start = time.perf_counter(), party.channel.totals(online=True)
        x = settle(x)
        record("output", "truncate", start_time, start)
    return x, frac_bits + pending


def _square(pair, name) -> int:
    a, b = (pair, pair) if isinstance(pair, int) else tuple(pair)
    if a != b:
        raise ValueError(f"layer {name!r}: only square pooling windows and strides are supported, got {pair}")
    return int(a)


def plan_cost(plan: list[dict], shapes: list[tuple], batch: int, truncate_output: bool = True,
              input_open: bool = False) -> list[tuple[str, Cost]]:
    """Online cost of `run_plan` per layer, from the protocols' cost formulas.

    `shapes` is [input shape, each layer's output shape...] without the batch
    axis (Graph.shapes()). Mirrors run_plan's order of operations: the
    truncation owed by a product is paid by the layer that settles it (a
    relu pays it inside its own first round).
    """
    costs = []
    pending = None  # shape at which the owed truncation would run
    skip = False
    for i, (layer, in_shape, out_shape) in enumerate(zip(plan, shapes, shapes[1:])):
        kind = layer["kind"]
        x_shape, y_shape = (batch, *in_shape), (batch, *out_shape)
        cost = Cost(0, 0, 0)
        if skip:  # folded into the convolution before it
            skip = False
            pending = y_shape
            costs.append((layer["name"], cost))
            continue
        settle = kind in ("conv2d", "dense", "max_pool2d")
        if kind == "avg_pool2d":
            window = _square(layer["pool"], layer["name"]) ** 2
            if pending is not None and window & (window - 1) == 0:
                pending = y_shape
            else:
                settle = True
        if settle and pending is not None:
            cost, pending = cost + truncate_cost(pending), None
        if kind == "conv2d":
            top, bottom, left, right = layer.get("pads", (0, 0, 0, 0))
            padded = (batch, in_shape[0] + top + bottom, in_shape[1] + left + right, in_shape[2])
            kernel = _kernel_shape(padded, y_shape, layer["stride"])
            fused = _fused_pool(plan, i)
            if fused is None:
                cost = cost + conv_cost_fixed(padded, kernel, tuple(layer["stride"]), input_open=input_open)
            else:
                k, stride = fused
                kernel = (kernel[0] + k - 1, kernel[1] + k - 1, kernel[2], kernel[3])
                cost = cost + conv_cost_fixed(padded, kernel, (stride, stride), input_open=input_open)
                skip = True
            pending = y_shape
            input_open = False
        elif kind == "dense":
            cost = cost + matmul_cost_fixed(x_shape, (in_shape[0], out_shape[0]), input_open=input_open)
            pending = y_shape
            input_open = False
        elif kind == "avg_pool2d" and settle:
            cost = cost + truncate_cost(y_shape)
        elif kind == "relu":
            cost = cost + (relu_cost_truncated(y_shape) if pending is not None else relu_cost(y_shape))
            pending = None
        elif kind == "flatten" and pending is not None:
            pending = y_shape
        elif kind == "max_pool2d":
            k = _square(layer["pool"], layer["name"])
            out_size = int(np.prod(y_shape))
            candidates = k * k
            while candidates > 1:
                cost = cost + relu_cost((candidates // 2 * out_size,))
                candidates = (candidates + 1) // 2
        costs.append((layer["name"], cost))
    if truncate_output:
        costs.append(("output", truncate_cost(pending) if pending is not None else Cost(0, 0, 0)))
    return costs


def _kernel_shape(padded, y_shape, stride) -> tuple:
    # conv_cost_fixed needs (kh, kw, cin, cout); recover kh, kw from the shapes.
    sh, sw = stride
    kh = padded[1] - (y_shape[1] - 1) * sh
    kw = padded[2] - (y_shape[2] - 1) * sw
    return (kh, kw, padded[3], y_shape[3])
