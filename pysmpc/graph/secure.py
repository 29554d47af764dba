"""Run a model graph on shares: each party calls this on its own state.

The plan is the graph with its weights replaced by the ids under which the
cluster shared them (`make_plan`, `load_plan`): one dict per layer, in the
graph's order, each naming the tensors it reads ("inputs") and its output
shape. The executor itself never computes on shares: every step is a
protocol call (pysmpc.protocols) or a local share operation, and per layer
it records time, bytes and rounds.

Scales. A product leaves its output at 2F fractional bits; its truncation
is owed ("pending") and paid where it is cheapest (`compile_plan` decides
once, for the run and for the cost plan alike):
  conv2d / dense / depthwise / batch_norm
                   z = x (*) w with the weights' mask opened once, then
                   + b * 2^F (local)                                  -> 2F
                   (padding: zeros added locally to the shares)
  avg_pool2d k x k right after a stride-1 conv that only it reads: folded
                   into the convolution; else, on a value still owing its
                   truncation, window sum (local) and the division by k*k
                   joins the owed truncation (k*k a power of two)
  relu             relu of the truncated value, the truncation's opening
                   riding in the comparison's first round (4 rounds)  -> F
  add, concat      the operands are brought to the highest owed scale by
                   local multiplications by 2^d, exact: the sum owes one
                   truncation, not one per operand
  flatten, reshape, transpose, zero_pad
                   local; an owed truncation carries over (it commutes)
  max pools, nonlinearities, another product: truncate first (1 round) -> F
  a value read by several layers is truncated once, by the layer making it
  output           truncated to F, or (truncate_output=False) left at
                   its scale for the receiver to divide in the clear.
So each conv + avg-pool + relu block of the MNIST CNN costs 1 + 4 rounds,
and the bias added at 2F stays exact through pooling and truncation.

Branches. Layers that do not depend on each other (the branches of an
inception block, a residual block's shortcut and body) run in lockstep
(parties.lockstep): their exchanges travel in the same rounds, so a group
of branches costs the rounds of its longest branch. The dealer's material
is taken first, layer by layer in graph order (the order P2 deals in),
then the layers run online together. A graph with nothing to overlap runs
layer by layer, exactly as a sequential model always has.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from pysmpc.parties.lockstep import run_in_lockstep
from pysmpc.parties.party import Party
from pysmpc.protocols import clip as clip_protocol
from pysmpc.protocols import mul as mul_protocol
from pysmpc.protocols import pool as pool_protocol
from pysmpc.protocols import sigmoid as sigmoid_protocol
from pysmpc.protocols import softmax as softmax_protocol
from pysmpc.protocols import tanh as tanh_protocol
from pysmpc.protocols.conv2d import conv2d_fixed, depthwise_conv2d_fixed
from pysmpc.protocols.conv2d import cost_depthwise_fixed
from pysmpc.protocols.conv2d import cost_fixed as conv_cost_fixed
from pysmpc.protocols.cost import Cost
from pysmpc.protocols.matmul import cost_fixed as matmul_cost_fixed
from pysmpc.protocols.matmul import matmul_fixed, share_fixed_operand
from pysmpc.protocols.relu import cost as relu_cost
from pysmpc.protocols.relu import cost_truncated as relu_cost_truncated
from pysmpc.protocols.relu import relu, relu_truncated
from pysmpc.protocols.truncate import cost as truncate_cost
from pysmpc.protocols.truncate import truncate
from pysmpc.sharing.shares import AShare, concat_shares

__all__ = ["make_plan", "load_plan", "run_plan", "plan_cost", "compile_plan", "input_maskable", "PLAN_KINDS", "PRODUCTS",
           "NONLINEAR"]

PLAN_KINDS = ("conv2d", "depthwise_conv2d", "dense", "batch_norm", "avg_pool2d", "max_pool2d", "global_avg_pool",
              "global_max_pool", "relu", "clip", "sigmoid", "tanh", "softmax", "add", "concat", "zero_pad",
              "flatten", "reshape", "transpose")
# Layers whose weights are shared (kernel/scale and bias/shift) and opened once.
PRODUCTS = ("conv2d", "depthwise_conv2d", "dense", "batch_norm")
# Layers that need their input at scale F (a truncation owed before them is paid first).
_SETTLES = PRODUCTS + ("max_pool2d", "global_max_pool", "clip", "sigmoid", "tanh", "softmax")
NONLINEAR = ("relu", "clip", "sigmoid", "tanh", "softmax", "max_pool2d", "global_max_pool")
# Layers that move shares without arithmetic: an owed truncation carries over.
_MOVES = ("flatten", "reshape", "transpose", "zero_pad")


def _inputs(plan: list[dict], i: int) -> list[str]:
    """The tensors step i reads ("inputs"; a plan without them is sequential)."""
    step = plan[i]
    if "inputs" in step:
        return list(step["inputs"])
    return [plan[i - 1]["name"]] if i else ["input"]


def _input_name(plan: list[dict]) -> str:
    produced = {step["name"] for step in plan}
    external = {name for i in range(len(plan)) for name in _inputs(plan, i) if name not in produced}
    if len(external) != 1:
        raise ValueError(f"the plan must read exactly one input tensor, it reads {sorted(external)}")
    return external.pop()


def make_plan(graph, share_weight=None) -> list[dict]:
    """The graph as the secure executor's plan: plain dicts (what travels to the workers).

    `share_weight(array) -> tensor id` shares each kernel and bias (a batch
    norm's scale and shift); without it the plan names no tensors and
    serves for cost estimates only. Each step names its inputs and its
    output shape; paddings are explicit.
    """
    from pysmpc.graph.graph import conv_padding, pool_padding

    plan = []
    shapes = graph.tensor_shapes()
    for layer in graph.layers:
        in_shape = shapes[layer.inputs[0]]
        step = {"kind": layer.kind, "name": layer.name, "inputs": list(layer.inputs),
                "shape": list(shapes[layer.name])}
        p = layer.params
        if layer.kind in PRODUCTS and share_weight is not None:
            kernel, bias = ("scale", "shift") if layer.kind == "batch_norm" else ("kernel", "bias")
            step.update(kernel=share_weight(layer.weights[kernel]), bias=share_weight(layer.weights[bias]))
        if layer.kind in ("conv2d", "depthwise_conv2d"):
            step.update(stride=list(p["stride"]), pads=list(conv_padding(layer, in_shape)))
        elif layer.kind in ("avg_pool2d", "max_pool2d"):
            step.update(pool=list(p["pool"]), stride=list(p["stride"]), pads=list(pool_padding(layer, in_shape)))
        elif layer.kind in ("global_avg_pool", "global_max_pool"):
            step.update(keepdims=p["keepdims"], window=int(in_shape[0] * in_shape[1]))
        elif layer.kind == "clip":
            step.update(lo=p["lo"], hi=p["hi"])
        elif layer.kind == "concat":
            step.update(axis=p["axis"] % len(in_shape))
        elif layer.kind == "zero_pad":
            step.update(pads=list(p["pads"]))
        elif layer.kind == "reshape":
            step.update(shape=list(shapes[layer.name]))
        elif layer.kind == "transpose":
            step.update(perm=list(p["perm"]))
        plan.append(step)
    return plan


def load_plan(party: Party, model_key, plan: list[dict], tensors: dict) -> None:
    """Open each weight's mask once (1 round per weight) and keep the plan.

    `tensors` maps tensor ids named in the plan to this party's shares.
    """
    names = set()
    for i, step in enumerate(plan):
        if step["kind"] not in PLAN_KINDS:
            raise ValueError(f"layer {step.get('name')!r}: unsupported kind {step['kind']!r}; supported: {PLAN_KINDS}")
        names.add(step["name"])
    _input_name(plan)
    compiled = compile_plan(plan)
    for i, step in enumerate(plan):
        if step["kind"] in PRODUCTS:
            key = (model_key, step["name"])
            share_fixed_operand(party, tensors[step["kernel"]], key=key, product_tag=f"weights:{step['name']}")
            if compiled.steps[i].fused_pool is not None:
                _fuse_stored_weights(party, key, compiled.steps[i].fused_pool[0])
    party.store[("plan", model_key)] = plan


@dataclass
class _Step:
    """What compile_plan decided for one layer."""

    settle_in: int = 0  # bits of the input's owed truncation to pay before the layer
    relu_bits: int = 0  # relu: bits it truncates in its first round (relu_truncated)
    align: list = field(default_factory=list)  # add/concat: per input, bits to shift up (local)
    pending_out: int = 0  # bits of truncation the output owes after the layer
    settle_out: int = 0  # bits truncated at the end of the layer (its output has several readers)
    fused_pool: tuple | None = None  # conv2d: (k, stride) of the average pool folded into it
    owed_pool: bool = False  # average pools: the window sum joins the owed truncation (no round)
    folded_into: int | None = None  # avg_pool2d: the conv that computes it
    deps: list = field(default_factory=list)  # indices of the steps it reads


@dataclass
class _Compiled:
    steps: list
    input_name: str
    output_pending: int  # bits the output owes after its layer


def compile_plan(plan: list[dict]) -> _Compiled:
    """Decide once where each truncation is paid (see the module docstring), for run_plan and plan_cost.

    The decisions depend on the plan only, not on F: owed bits are counted
    symbolically (_F per product, plus a pooled window's bits) and turned
    into bits by _bits(owed, F) where they are paid.
    """
    input_name = _input_name(plan)
    index = {step["name"]: i for i, step in enumerate(plan)}
    readers: dict = {input_name: []}
    for i in range(len(plan)):
        for name in _inputs(plan, i):
            readers.setdefault(name, []).append(i)
    pending = {input_name: 0}
    steps = []
    for i, step in enumerate(plan):
        kind, name = step["kind"], step["name"]
        ins = _inputs(plan, i)
        s = _Step(deps=sorted({index[n] for n in ins if n in index}))
        owed = pending[ins[0]]
        if kind in ("avg_pool2d", "global_avg_pool"):
            s.owed_pool = _owed_pool(step, owed)
        if kind in _SETTLES or (kind in ("avg_pool2d", "global_avg_pool") and not _owed_pool(step, owed)):
            s.settle_in, owed = owed, 0
        if kind == "avg_pool2d" and _fused_with(plan, i, readers, index) is not None:
            s.folded_into = index[ins[0]]
            s.pending_out = owed  # the conv's pending already counts the window
        elif kind in PRODUCTS:
            fused = _fused_pool(plan, i, readers)
            s.fused_pool = fused
            s.pending_out = _F + (0 if fused is None else (fused[0] * fused[0]).bit_length() - 1)
        elif kind in ("avg_pool2d", "global_avg_pool"):
            # Owed: the window sum joins the truncation. Otherwise the pool
            # protocol truncates at once (as it always has).
            s.pending_out = owed + (_window(step).bit_length() - 1 if s.owed_pool else 0)
        elif kind == "relu":
            s.relu_bits = owed
        elif kind in ("add", "concat"):
            owes = [pending[n] for n in ins]
            s.align = [max(owes) - o for o in owes]
            s.pending_out = max(owes)
        elif kind in _MOVES:
            s.pending_out = owed
        if s.pending_out and len(readers.get(name, [])) > 1:
            s.settle_out, s.pending_out = s.pending_out, 0
        pending[name] = s.pending_out
        steps.append(s)
    return _Compiled(steps, input_name, pending[plan[-1]["name"]])


# Owed bits are symbolic in F: _F stands for "F bits" and is resolved by _bits().
_F = 1 << 20


def _bits(owed: int, frac_bits: int) -> int:
    """Turn owed bits counted with _F for each product into bits at F = frac_bits."""
    units, extra = divmod(owed, _F)
    return units * frac_bits + extra


def _window(step: dict) -> int:
    if step["kind"] == "global_avg_pool":
        return int(step["window"])
    kh, kw = step["pool"]
    return int(kh) * int(kw)


def _owed_pool(step: dict, owed: int) -> bool:
    """Whether an average pool can add its window to an owed truncation (unpadded, power-of-two window)."""
    window = _window(step)
    return bool(owed) and window & (window - 1) == 0 and not any(step.get("pads", (0, 0, 0, 0)))


def _fused_pool(plan: list[dict], i: int, readers: dict):
    """(k, stride) if conv i (stride 1, unpadded or not) is read only by a k x k average pool, k*k a power of two.

    Pooling is linear, so the pair is one convolution with the (kh+k-1) x
    (kw+k-1) kernel sum_{a,b<k} w shifted by (a, b), at the pool's stride: it
    computes only the outputs the pool keeps (the window sums; the division
    by k*k joins the owed truncation).
    """
    step = plan[i]
    if step["kind"] != "conv2d" or tuple(step["stride"]) != (1, 1):
        return None
    after = readers.get(step["name"], [])
    if len(after) != 1:
        return None
    pool = plan[after[0]]
    if pool["kind"] != "avg_pool2d" or any(pool.get("pads", (0, 0, 0, 0))):
        return None
    (kh, kw), (sh, sw) = pool["pool"], pool["stride"]
    if kh != kw or sh != sw or (kh * kh) & (kh * kh - 1):
        return None
    return int(kh), int(sh)


def _fused_with(plan, i, readers, index):
    """The conv that folds avg pool i into itself, or None."""
    source = _inputs(plan, i)[0]
    j = index.get(source)
    if j is None or _fused_pool(plan, j, readers) is None:
        return None
    return j


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

    True when the input is read by one layer only, which (through flatten
    layers) is a dense layer or an unpadded convolution: its Beaver opening
    E = x - A then needs no round.
    """
    name = _input_name(plan)
    while True:
        readers = [i for i in range(len(plan)) if name in _inputs(plan, i)]
        if len(readers) != 1:
            return False
        step = plan[readers[0]]
        if step["kind"] == "flatten":
            name = step["name"]
            continue
        return step["kind"] == "dense" or (step["kind"] == "conv2d" and not any(step.get("pads", (0, 0, 0, 0))))


def _first_product(plan: list[dict]) -> int:
    name = _input_name(plan)
    while True:
        i = next(i for i in range(len(plan)) if name in _inputs(plan, i))
        if plan[i]["kind"] != "flatten":
            return i
        name = plan[i]["name"]


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
    rounds online on this party (a round that branches share is counted
    once, for the first layer in it).
    """
    plan = party.store[("plan", model_key)]
    if input_open and not input_maskable(plan):
        raise ValueError("this model's first layer cannot take a masked input (needs dense or an unpadded conv2d)")
    compiled = compile_plan(plan)
    masked_step = _first_product(plan) if input_open else None
    batch = x.shape[0]
    costs = _step_costs(plan, compiled, batch, truncate_output, masked_step, frac_bits, x.shape[1:])
    rounds = [c.rounds for _, c in costs]
    deps = [s.deps for s in compiled.steps] + ([[len(plan) - 1]] if truncate_output else [])
    concurrent = _attributed_rounds(rounds, deps) != rounds

    def program(i):
        def run(p: Party, values: dict) -> None:
            if i == len(plan):  # the output's truncation
                values["output"] = _settle(p, values[plan[-1]["name"]], _bits(compiled.output_pending, frac_bits))
                return
            _run_step(p, model_key, plan, compiled, i, values, tensors, frac_bits, i == masked_step)
        return run

    programs = [program(i) for i in range(len(deps))]
    names = [(step["name"], step["kind"]) for step in plan] + ([("output", "truncate")] if truncate_output else [])
    values = _Values(plan, compiled.input_name, x)
    if not concurrent or not party.computes:
        for i, run in enumerate(programs):
            start_time, start = time.perf_counter(), party.channel.totals(online=True)
            run(party, values)
            if profile is not None:
                end = party.channel.totals(online=True)
                profile.append(dict(name=names[i][0], kind=names[i][1], seconds=time.perf_counter() - start_time,
                                    bytes_sent=end.bytes_sent - start.bytes_sent, rounds=end.rounds - start.rounds))
    else:
        # 1. The dealer's material, layer by layer in graph order, each
        #    layer's kept in a bundle of its own (dealer calls only: the
        #    values are the dealer's view, shapes without shares).
        shadow = _Values(plan, compiled.input_name, AShare(None, x.party, x.shape))
        bundles = []
        for run in programs:
            with party.dealer.capturing() as bundle:
                run(party, shadow)
            bundles.append(bundle)
        del shadow
        # 2. The layers online, in lockstep: branches share their rounds.
        stats = run_in_lockstep(party, [lambda p, run=run: run(p, values) for run in programs], deps, bundles)
        if profile is not None:
            for (name, kind), s in zip(names, stats):
                profile.append(dict(name=name, kind=kind, seconds=s.seconds, bytes_sent=s.bytes_sent, rounds=s.rounds))
    out_name = "output" if truncate_output else plan[-1]["name"]
    out_bits = frac_bits if truncate_output else frac_bits + _bits(compiled.output_pending, frac_bits)
    return values[out_name], out_bits


class _Values(dict):
    """Tensor name -> this party's shares; each is dropped once its last reader has taken it (liveness).

    Readers take their inputs when they start, so this holds in lockstep
    too, whatever order the branches start in.
    """

    def __init__(self, plan: list[dict], input_name: str, x: AShare):
        super().__init__({input_name: x})
        self.readers_left: dict = {}
        for i in range(len(plan)):
            for name in _inputs(plan, i):
                self.readers_left[name] = self.readers_left.get(name, 0) + 1

    def take(self, names: list[str]) -> list[AShare]:
        out = [self[name] for name in names]
        for name in names:
            self.readers_left[name] -= 1
            if not self.readers_left[name]:
                del self[name]
        return out


def _settle(party: Party, x: AShare, bits: int, tag: str = "trunc") -> AShare:
    return truncate(party, x, bits, tag=tag) if bits else x


def _run_step(party: Party, model_key, plan, compiled: _Compiled, i: int, values: dict, tensors: dict,
              frac_bits: int, input_open: bool) -> None:
    """Run step i on `values` (tensor name -> this party's shares), storing its output there."""
    step, s = plan[i], compiled.steps[i]
    kind, name = step["kind"], step["name"]
    ins = values.take(_inputs(plan, i))
    x = _settle(party, ins[0], _bits(s.settle_in, frac_bits))
    if kind in PRODUCTS:
        key = (model_key, name)
        window = 1
        if kind == "conv2d":
            pads = step.get("pads", (0, 0, 0, 0))
            if any(pads):
                x = x.pad_spatial(*pads)
            stride = tuple(step["stride"]) if s.fused_pool is None else (s.fused_pool[1],) * 2
            y = conv2d_fixed(party, x, key, stride, "valid", tag=f"conv2d:{name}", input_open=input_open)
            if s.fused_pool is not None:
                window = s.fused_pool[0] ** 2
        elif kind == "depthwise_conv2d":
            pads = step.get("pads", (0, 0, 0, 0))
            if any(pads):
                x = x.pad_spatial(*pads)
            y = depthwise_conv2d_fixed(party, x, key, tuple(step["stride"]), tag=f"depthwise:{name}")
        elif kind == "dense":
            y = matmul_fixed(party, x, key, tag=f"dense:{name}", input_open=input_open)
        else:
            y = mul_protocol.mul_fixed(party, x, key, tag=f"batchnorm:{name}")
        if step.get("bias") is not None:
            # At the product's scale 2F (times the pooled window), so the
            # later truncation keeps it exact.
            y = y + tensors[step["bias"]] * np.uint64(window << frac_bits)
    elif kind == "avg_pool2d":
        if s.folded_into is not None:
            y = x  # the convolution before it computed the pooled values
        else:
            pool, stride, pads = tuple(step["pool"]), tuple(step["stride"]), step.get("pads", (0, 0, 0, 0))
            if any(pads):
                y = pool_protocol.avg_pool2d_padded(party, x, pool, stride, pads, frac_bits, tag=f"avgpool:{name}")
            elif s.owed_pool:
                y = pool_protocol.sum_pool2d(party, x, pool, stride)
            else:
                y = pool_protocol.avg_pool2d(party, x, pool, frac_bits, stride, tag=f"avgpool:{name}")
    elif kind == "global_avg_pool":
        if s.owed_pool:
            y = pool_protocol.global_sum_pool(party, x, step["keepdims"])
        else:
            y = pool_protocol.global_avg_pool(party, x, frac_bits, step["keepdims"], tag=f"globalavg:{name}")
    elif kind == "max_pool2d":
        y = pool_protocol.max_pool2d(party, x, tuple(step["pool"]), tuple(step["stride"]), tag=f"maxpool:{name}",
                                     pads=step.get("pads"))
    elif kind == "global_max_pool":
        y = pool_protocol.global_max_pool(party, x, step["keepdims"], tag=f"globalmax:{name}")
    elif kind == "relu":
        bits = _bits(s.relu_bits, frac_bits)
        y = relu_truncated(party, x, bits, tag=f"relu:{name}") if bits else relu(party, x, tag=f"relu:{name}")
    elif kind == "clip":
        y = clip_protocol.clip(party, x, step["lo"], step["hi"], frac_bits, tag=f"clip:{name}")
    elif kind == "sigmoid":
        y = sigmoid_protocol.sigmoid(party, x, frac_bits, tag=f"sigmoid:{name}")
    elif kind == "tanh":
        y = tanh_protocol.tanh(party, x, frac_bits, tag=f"tanh:{name}")
    elif kind == "softmax":
        y = softmax_protocol.softmax(party, x, frac_bits, tag=f"softmax:{name}")
    elif kind in ("add", "concat"):
        aligned = [v * np.uint64(1 << _bits(d, frac_bits)) if d else v for v, d in zip(ins, s.align)]
        if kind == "add":
            y = aligned[0]
            for other in aligned[1:]:
                y = y + other
        else:
            axis = int(step["axis"])
            y = concat_shares(aligned, axis=axis + 1 if axis >= 0 else axis)
    elif kind == "zero_pad":
        y = x.pad_spatial(*step["pads"])
    elif kind == "flatten":
        y = x.reshape(x.shape[0], -1)
    elif kind == "reshape":
        y = x.reshape((x.shape[0],) + tuple(step["shape"]))
    elif kind == "transpose":
        y = x.transpose((0,) + tuple(a + 1 for a in step["perm"]))
    else:  # pragma: no cover - load_plan refuses other kinds
        raise ValueError(f"layer {name!r}: unsupported kind {kind!r}")
    values[name] = _settle(party, y, _bits(s.settle_out, frac_bits), tag=f"trunc:{name}")


def _attributed_rounds(rounds: list[int], deps: list[list[int]]) -> list[int]:
    """Rounds per step when steps run in lockstep: each shared round counts for the first step in it.

    Step i starts when its last dependency has finished and takes its
    rounds one after the other (parties.lockstep): finish_i = start_i +
    rounds_i. A sequential plan gets its rounds back unchanged.
    """
    finish = []
    spans = []
    for r, d in zip(rounds, deps):
        start = max((finish[j] for j in d), default=0)
        finish.append(start + r)
        spans.append((start, start + r))
    out = [0] * len(rounds)
    owner: dict = {}
    for i, (start, end) in enumerate(spans):
        for g in range(start + 1, end + 1):
            if g not in owner:
                owner[g] = i
                out[i] += 1
    return out


def plan_cost(plan: list[dict], shapes: list[tuple], batch: int, truncate_output: bool = True,
              input_open: bool = False, frac_bits: int = 16) -> list[tuple[str, Cost]]:
    """Online cost of `run_plan` per layer, from the protocols' cost formulas.

    `shapes` is [input shape, each layer's output shape...] without the batch
    axis (Graph.shapes()). Follows compile_plan's decisions: the truncation
    owed by a product is paid by the layer that settles it (a relu pays it
    inside its own first round). Branches that run in lockstep share their
    rounds: each shared round is counted for the first layer in it, so the
    rounds add up to the run's, and bytes are each layer's own.
    """
    compiled = compile_plan(plan)
    masked_step = _first_product(plan) if input_open else None
    steps = [dict(step, shape=list(shape)) for step, shape in zip(plan, shapes[1:])]
    costs = _step_costs(steps, compiled, batch, truncate_output, masked_step, frac_bits,
                        input_shape=tuple(shapes[0]))
    deps = [s.deps for s in compiled.steps] + ([[len(plan) - 1]] if truncate_output else [])
    rounds = _attributed_rounds([c.rounds for _, c in costs], deps)
    return [(name, Cost(r, c.bytes_sent, c.dealer_bytes)) for (name, c), r in zip(costs, rounds)]


def _step_costs(plan, compiled: _Compiled, batch: int, truncate_output: bool, masked_step, frac_bits: int,
                input_shape: tuple) -> list[tuple[str, Cost]]:
    """Each step's own cost (rounds as if it ran alone), plus the output's truncation.

    Each step carries its output shape ("shape", no batch axis).
    """
    shape_of = {compiled.input_name: tuple(input_shape)}
    for step in plan:
        shape_of[step["name"]] = tuple(step["shape"])
    costs = []
    for i, (step, s) in enumerate(zip(plan, compiled.steps)):
        kind = step["kind"]
        in_shape = (batch, *shape_of[_inputs(plan, i)[0]])
        out_shape = (batch, *shape_of[step["name"]])
        cost = Cost(0, 0, 0)
        if s.settle_in:
            cost = cost + truncate_cost(in_shape)
        if kind == "conv2d":
            top, bottom, left, right = step.get("pads", (0, 0, 0, 0))
            padded = (batch, in_shape[1] + top + bottom, in_shape[2] + left + right, in_shape[3])
            stride = tuple(step["stride"])
            kernel = _kernel_shape(padded, out_shape, stride)
            if s.fused_pool is not None:  # one convolution with the (kh+k-1) x (kw+k-1) kernel, at the pool's stride
                k, pool_stride = s.fused_pool
                kernel, stride = (kernel[0] + k - 1, kernel[1] + k - 1, kernel[2], kernel[3]), (pool_stride,) * 2
            cost = cost + conv_cost_fixed(padded, kernel, stride, input_open=i == masked_step)
        elif kind == "depthwise_conv2d":
            top, bottom, left, right = step.get("pads", (0, 0, 0, 0))
            padded = (batch, in_shape[1] + top + bottom, in_shape[2] + left + right, in_shape[3])
            kernel = _kernel_shape(padded, out_shape, tuple(step["stride"]))
            kernel = (kernel[0], kernel[1], in_shape[3], out_shape[3] // in_shape[3])
            cost = cost + cost_depthwise_fixed(padded, kernel, tuple(step["stride"]))
        elif kind == "dense":
            cost = cost + matmul_cost_fixed(in_shape, (in_shape[1], out_shape[1]), input_open=i == masked_step)
        elif kind == "batch_norm":
            cost = cost + mul_protocol.cost_fixed(in_shape)
        elif kind == "avg_pool2d" and s.folded_into is None:
            if any(step.get("pads", (0, 0, 0, 0))):
                cost = cost + pool_protocol.cost_avg_pool2d_padded(out_shape)
            elif not s.owed_pool and _window(step) > 1:
                cost = cost + truncate_cost(out_shape)
        elif kind == "global_avg_pool":
            if not s.owed_pool:
                cost = cost + pool_protocol.cost_global_avg_pool(in_shape)
        elif kind == "max_pool2d":
            cost = cost + pool_protocol.cost_max_pool2d(out_shape, step["pool"])
        elif kind == "global_max_pool":
            cost = cost + pool_protocol.cost_global_max_pool(in_shape)
        elif kind == "relu":
            cost = cost + (relu_cost_truncated(out_shape) if s.relu_bits else relu_cost(out_shape))
        elif kind == "clip":
            sides = (step["lo"] is not None) + (step["hi"] is not None)
            cost = cost + clip_protocol.cost(out_shape, sides)
        elif kind == "sigmoid":
            cost = cost + sigmoid_protocol.cost(out_shape, frac_bits)
        elif kind == "tanh":
            cost = cost + tanh_protocol.cost(out_shape, frac_bits)
        elif kind == "softmax":
            cost = cost + softmax_protocol.cost(out_shape, frac_bits)
        if s.settle_out:
            cost = cost + truncate_cost(out_shape)
        costs.append((step["name"], cost))
    if truncate_output:
        out = (batch, *shape_of[plan[-1]["name"]])
        costs.append(("output", truncate_cost(out) if compiled.output_pending else Cost(0, 0, 0)))
    return costs


def _kernel_shape(padded, y_shape, stride) -> tuple:
    # conv_cost_fixed needs (kh, kw, cin, cout); recover kh, kw from the shapes.
    sh, sw = stride
    kh = padded[1] - (y_shape[1] - 1) * sh
    kw = padded[2] - (y_shape[2] - 1) * sw
    return (kh, kw, padded[3], y_shape[3])
