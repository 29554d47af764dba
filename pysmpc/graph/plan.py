"""The secure executor's plan of a graph: its steps, where each truncation is paid, and what it costs.

`make_plan` turns a Graph into plain dicts (what travels to the workers);
`compile_plan` decides once, from the plan alone, which layer pays each
owed truncation (graph.secure's docstring gives the rules); `plan_cost`
adds the protocols' cost formulas along those decisions, and counts a
round that branches share (parties.lockstep) once. graph.secure runs the
same decisions, and the tests compare its channels with these costs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pysmpc.graph.graph import conv_padding, pool_padding
from pysmpc.protocols import clip as clip_protocol
from pysmpc.protocols import mul as mul_protocol
from pysmpc.protocols import pool as pool_protocol
from pysmpc.protocols import sigmoid as sigmoid_protocol
from pysmpc.protocols import softmax as softmax_protocol
from pysmpc.protocols import tanh as tanh_protocol
from pysmpc.protocols.conv2d import cost_depthwise_fixed
from pysmpc.protocols.conv2d import cost_fixed as conv_cost_fixed
from pysmpc.protocols.cost import Cost
from pysmpc.protocols.matmul import cost_fixed as matmul_cost_fixed
from pysmpc.protocols.relu import cost as relu_cost
from pysmpc.protocols.relu import cost_truncated as relu_cost_truncated
from pysmpc.protocols.relu_fss import FORMAT_BITS, bounded_domain_bits
from pysmpc.protocols.relu_fss import cost as relu_fss_cost
from pysmpc.protocols.truncate import cost as truncate_cost

__all__ = ["make_plan", "compile_plan", "plan_cost", "input_maskable", "pipeline_parts", "PIPELINE_MIN_ROWS",
           "PIPELINE_MAX_PARTS", "PLAN_KINDS", "PRODUCTS", "RELU_PROTOCOLS"]

# Over a network, run_plan runs a batch in parts that take turns computing while another's messages
# cross the link (pipeline_parts). Measured on the seed CNN at batch 256 over the simulated WAN
# (bench/network.py): 2 parts 1.73 s, 4 parts 1.45-1.50 s, 8 parts 1.44-1.51 s, and 8 parts made
# unshaped loopback slower; a part below 32 rows mostly adds per-layer overhead.
PIPELINE_MIN_ROWS = 32
PIPELINE_MAX_PARTS = 4

PLAN_KINDS = ("conv2d", "depthwise_conv2d", "dense", "batch_norm", "avg_pool2d", "max_pool2d", "global_avg_pool",
              "global_max_pool", "relu", "clip", "sigmoid", "tanh", "softmax", "add", "concat", "zero_pad",
              "flatten", "reshape", "transpose")
# How a relu layer runs (its plan step's "protocol"; absent: the first):
# "bitplane" compares on XOR-shared bit planes (protocols.relu, 4 rounds,
# any |x| < 2^63); "fss" opens one masked value and evaluates DCF keys
# (protocols.relu_fss, 1 round, the fixed-point format's range, more
# dealer material). docs/PROTOCOL.md states the trade.
RELU_PROTOCOLS = ("bitplane", "fss")
# Layers whose weights are shared (kernel/scale and bias/shift) and opened once.
PRODUCTS = ("conv2d", "depthwise_conv2d", "dense", "batch_norm")
# Layers that need their input at scale F (a truncation owed before them is paid first).
_SETTLES = PRODUCTS + ("max_pool2d", "global_max_pool", "clip", "sigmoid", "tanh", "softmax")
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


def make_plan(graph, share_weight=None, relu_protocol: str = "bitplane", relu_bounds: dict | None = None) -> list[dict]:
    """The graph as the secure executor's plan: plain dicts (what travels to the workers).

    relu_protocol: one of RELU_PROTOCOLS, recorded in each relu step
    (only when it is not the default, so default plans are unchanged).
    relu_bounds: {relu layer name: B} promises |input| < 2^B (real units)
    to an "fss" relu, whose DCF then spans B + F levels instead of the
    format's 31 (fss_domain_bits); check_relu_bounds says what is allowed.

    `share_weight(array) -> tensor id` shares each kernel and bias (a batch
    norm's scale and shift); without it the plan names no tensors and
    serves for cost estimates only. Each step names its inputs and its
    output shape; paddings are explicit.
    """
    check_relu_protocol(relu_protocol)
    relu_bounds = check_relu_bounds(graph, relu_bounds, relu_protocol)
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
        elif layer.kind == "relu" and relu_protocol != RELU_PROTOCOLS[0]:
            step.update(protocol=relu_protocol)
            if layer.name in relu_bounds:
                step.update(bound_bits=relu_bounds[layer.name])
        plan.append(step)
    return plan


def check_relu_bounds(graph, relu_bounds: dict | None, relu_protocol: str) -> dict:
    """relu_bounds as {relu layer name: int B}, 0 <= B <= FORMAT_BITS; a clear error for anything else.

    A B at or above the format's integer bits (31 - F) changes nothing:
    the format bounds the domain already.
    """
    if not relu_bounds:
        return {}
    if relu_protocol != "fss":
        raise ValueError(f"relu_bounds only apply to relu_protocol='fss' (the bit-plane relu takes any value "
                         f"below 2^63), got relu_protocol={relu_protocol!r}")
    relus = {layer.name for layer in graph.layers if layer.kind == "relu"}
    checked = {}
    for name, bits in relu_bounds.items():
        if name not in relus:
            raise ValueError(f"relu_bounds names {name!r}, which is not a relu layer of the model; "
                             f"its relu layers: {sorted(relus)}")
        checked[name] = check_bound_bits(bits, f"relu_bounds[{name!r}]")
    return checked


def check_bound_bits(bits, what: str) -> int:
    """A relu bound B as an int in 0..FORMAT_BITS (inputs below 2^B), or ValueError naming `what`."""
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 0 <= bits <= FORMAT_BITS:
        raise ValueError(f"{what} must be an integer B in 0..{FORMAT_BITS} (inputs below 2^B), got {bits!r}")
    return int(bits)


def fss_domain_bits(step: dict, bits: int, frac_bits: int) -> int | None:
    """The DCF domain of an "fss" relu step reading a value that owes `bits`: None for the format's whole range."""
    bound = step.get("bound_bits")
    return None if bound is None else bounded_domain_bits(bound, frac_bits, bits)


def check_relu_protocol(name) -> str:
    if name not in RELU_PROTOCOLS:
        raise ValueError(f"relu protocol must be one of {RELU_PROTOCOLS}, got {name!r}")
    return name



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
    carried_in: int = 0  # products: a pooled window's bits the input owes, carried into the output's truncation
    folded_into: int | None = None  # avg_pool2d: the conv that computes it
    deps: list = field(default_factory=list)  # indices of the steps it reads
    inputs: list = field(default_factory=list)  # names of the tensors it reads (_inputs)


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
        s = _Step(deps=sorted({index[n] for n in ins if n in index}), inputs=ins)
        owed = pending[ins[0]]
        if kind in ("avg_pool2d", "global_avg_pool"):
            s.owed_pool = _owed_pool(step, owed)
        if kind in PRODUCTS and 0 < owed < _F:
            # Only a window's bits are owed (a global average pool of a
            # value at F): the product's output owes them with its own F,
            # paid by one truncation instead of two.
            s.carried_in = owed
        elif kind in _SETTLES or (kind in ("avg_pool2d", "global_avg_pool") and not _owed_pool(step, owed)):
            s.settle_in, owed = owed, 0
        if kind == "avg_pool2d" and _fused_with(plan, i, readers, index) is not None:
            s.folded_into = index[ins[0]]
            s.pending_out = owed  # the conv's pending already counts the window
        elif kind in PRODUCTS:
            fused = _fused_pool(plan, i, readers)
            s.fused_pool = fused
            s.pending_out = _F + owed + (0 if fused is None else (fused[0] * fused[0]).bit_length() - 1)
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
    """Whether an average pool can add its window to an owed truncation (unpadded, power-of-two window).

    A global average pool may also start owing one (owed = 0): its division
    is then paid by whichever layer settles the value next, in a round that
    layer makes anyway (a product's, a relu's, the output's truncation), or
    in a truncation of the same shape (no worse than truncating at once).
    """
    window = _window(step)
    if window & (window - 1) or any(step.get("pads", (0, 0, 0, 0))):
        return False
    return bool(owed) or step["kind"] == "global_avg_pool"


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


def input_maskable(plan: list[dict]) -> bool:
    """Whether the input's owner can mask it for the first product (run_plan's input_open).

    True when the input is read by one layer only, which (through flatten
    and reshape layers, which keep the order of the elements) is a dense
    layer or an unpadded convolution: its Beaver opening E = x - A then
    needs no round.
    """
    name = _input_name(plan)
    while True:
        readers = [i for i in range(len(plan)) if name in _inputs(plan, i)]
        if len(readers) != 1:
            return False
        step = plan[readers[0]]
        if step["kind"] in ("flatten", "reshape"):  # row-major: the mask keeps its order
            name = step["name"]
            continue
        return step["kind"] == "dense" or (step["kind"] == "conv2d" and not any(step.get("pads", (0, 0, 0, 0))))


def _first_product(plan: list[dict]) -> int:
    name = _input_name(plan)
    while True:
        i = next(i for i in range(len(plan)) if name in _inputs(plan, i))
        if plan[i]["kind"] not in ("flatten", "reshape"):
            return i
        name = plan[i]["name"]


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


def pipeline_parts(rows: int, pipelined: bool) -> list[int]:
    """The batch sizes of the parts run_plan runs a batch of `rows` in (pipelined: over a network channel).

    Up to PIPELINE_MAX_PARTS parts of at least PIPELINE_MIN_ROWS rows each:
    256 rows run as 4 parts of 64, 64 rows as 2 of 32, fewer than 64 whole.
    Not pipelined (in-process channels, where nothing takes time to cross),
    one part. A pure function of these two: the workers, the dealer and the
    client (which receives one input mask per part) agree on it without a
    word, and material prepared for a batch size fits its queries.
    """
    parts = min(PIPELINE_MAX_PARTS, rows // PIPELINE_MIN_ROWS) if pipelined else 1
    if parts < 2:
        return [rows]
    return [rows // parts + (k < rows % parts) for k in range(parts)]


def plan_cost(plan: list[dict], shapes: list[tuple], batch: int, truncate_output: bool = True,
              input_open: bool = False, frac_bits: int = 16, pipelined: bool = False) -> list[tuple[str, Cost]]:
    """Online cost of `run_plan` per layer, from the protocols' cost formulas.

    `shapes` is [input shape, each layer's output shape...] without the batch
    axis (Graph.shapes()). Follows compile_plan's decisions: the truncation
    owed by a product is paid by the layer that settles it (a relu pays it
    inside its own first round). Branches that run in lockstep share their
    rounds: each shared round is counted for the first layer in it, so the
    rounds add up to the run's, and bytes are each layer's own. pipelined:
    as run over a network channel, where a large batch runs in parts
    (pipeline_parts): the bytes and dealer bytes of all its parts, in the
    rounds of the first.
    """
    parts = [_part_cost(plan, shapes, rows, truncate_output, input_open, frac_bits)
             for rows in pipeline_parts(batch, pipelined)]
    merged = []
    for layer in zip(*parts):  # the same layer in each part
        (name, first), costs = layer[0], [c for _, c in layer]
        merged.append((name, Cost(first.rounds, sum(c.bytes_sent for c in costs), sum(c.dealer_bytes for c in costs))))
    return merged


def _part_cost(plan: list[dict], shapes: list[tuple], batch: int, truncate_output: bool, input_open: bool,
               frac_bits: int) -> list[tuple[str, Cost]]:
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
        elif kind == "relu" and step.get("protocol") == "fss":
            bits = _bits(s.relu_bits, frac_bits)
            cost = cost + relu_fss_cost(out_shape, bits, fss_domain_bits(step, bits, frac_bits))
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
