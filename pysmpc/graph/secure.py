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
  global_avg_pool  power-of-two window: the window sum (local), its
                   division owed; a product reading it carries the owed
                   bits into its own truncation (ResNet-20: GAP + fc pay
                   one truncation, not two)
  relu             relu of the truncated value, the truncation's opening
                   riding in the comparison's first round (4 rounds)  -> F
                   (step "protocol": "fss": one masked opening and DCF
                   keys, 1 round, protocols.relu_fss)
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
then the layers run online together. Only the stretches of the graph
where two layers' rounds overlap run so (`_segments`: a residual block with
a convolution on its shortcut, an inception block); every other layer,
and a graph with nothing to overlap, runs layer by layer, exactly as a
sequential model always has.

Large batches. Over a network channel a batch of 64 rows or more runs in
up to four parts (plan.pipeline_parts), each a whole run with its own
material, pipelined (parties.lockstep.run_pipelined): a part computes
while another's messages cross the link. In process, batches run whole.
"""
from __future__ import annotations

import time
from itertools import pairwise
from typing import Callable

import numpy as np

from pysmpc.graph.plan import (PLAN_KINDS, PRODUCTS, _bits, _Compiled, _first_product, _input_name,
                               _step_costs, check_bound_bits, check_relu_protocol, compile_plan, fss_domain_bits, input_maskable, make_plan,
                               pipeline_parts, plan_cost)
from pysmpc.parties.lockstep import run_in_lockstep, run_pipelined
from pysmpc.parties.party import Party
from pysmpc.protocols import clip as clip_protocol
from pysmpc.protocols import mul as mul_protocol
from pysmpc.protocols import pool as pool_protocol
from pysmpc.protocols import sigmoid as sigmoid_protocol
from pysmpc.protocols import softmax as softmax_protocol
from pysmpc.protocols import tanh as tanh_protocol
from pysmpc.protocols.conv2d import conv2d_fixed, depthwise_conv2d_fixed
from pysmpc.protocols.matmul import matmul_fixed, share_fixed_operand
from pysmpc.protocols.relu import relu, relu_truncated
from pysmpc.protocols.relu_fss import relu_fss
from pysmpc.protocols.truncate import truncate
from pysmpc.sharing.shares import AShare, concat_shares

# make_plan, plan_cost, compile_plan and input_maskable live in graph.plan; they are
# re-exported here, where callers have always found them.
__all__ = ["make_plan", "load_plan", "run_plan", "plan_cost", "compile_plan", "input_maskable", "pipeline_parts",
           "PLAN_KINDS"]


def load_plan(party: Party, model_key, plan: list[dict], tensors: dict) -> None:
    """Open each weight's mask once (1 round per weight) and keep the plan.

    `tensors` maps tensor ids named in the plan to this party's shares.
    """
    names = set()
    for step in plan:
        if step["kind"] not in PLAN_KINDS:
            raise ValueError(f"layer {step.get('name')!r}: unsupported kind {step['kind']!r}; supported: {PLAN_KINDS}")
        if step["name"] in names:
            raise ValueError(f"the plan names two layers {step['name']!r}")
        if step["kind"] == "relu" and "protocol" in step:
            check_relu_protocol(step["protocol"])
        if "bound_bits" in step:
            _check_bound_step(step)
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


def _check_bound_step(step: dict) -> None:
    if step["kind"] != "relu" or step.get("protocol") != "fss":
        raise ValueError(f"layer {step['name']!r}: bound_bits is for relu steps with protocol 'fss'")
    check_bound_bits(step["bound_bits"], f"layer {step['name']!r}: bound_bits")


def run_plan(party: Party, model_key, x: AShare, frac_bits: int, tensors: dict,
             profile: list | None = None, truncate_output: bool = True,
             input_open: bool = False, input_part: Callable[[int], np.ndarray] | None = None) -> tuple[AShare, int]:
    """Run the plan on input shares x (F fractional bits).

    input_open: x.value is E = x - A on both P0 and P1, masked by the
    input's owner with the A that P2 reveals to it for the first product
    (input_maskable); that product then opens nothing (one round fewer).
    Over a network channel, a large batch runs in parts (pipeline_parts),
    each with its own material and, with input_open, its own mask; see
    _run_pipelined. input_part(rows), if given, returns the next part's
    input values (x then holds the batch's shape only): called when that
    part starts, so a batch arriving part by part starts on its first.

    Returns (output shares, their fractional bits): F, or with
    truncate_output=False the higher scale the last layer left (its
    truncation saved: the receiver divides in the clear). `profile`, if
    given, receives one dict per layer: name, kind, seconds, bytes sent and
    rounds online on this party (a round that branches share is counted
    once, for the first layer in it).
    """
    parts = pipeline_parts(x.shape[0], party.channel.pipelines_batches)
    if len(parts) == 1:
        return _run_whole(party, model_key, x, frac_bits, tensors, profile, truncate_output, input_open)
    shadows = [AShare(None, party.index, (rows, *x.shape[1:])) for rows in parts]
    if not party.computes:  # P2 deals, or P0/P1 record: the parts' material one part after the other
        outs = [_run_whole(party, model_key, shadow, frac_bits, tensors, None, truncate_output, input_open)
                for shadow in shadows]
        return AShare(None, party.index, (x.shape[0], *outs[0][0].shape[1:])), outs[0][1]
    # The dealer's material first, part by part in the order P2 deals it (a recording keeps it so).
    bundles = []
    for shadow in shadows:
        with party.dealer.capturing() as bundle:
            _run_whole(party, model_key, shadow, frac_bits, tensors, None, truncate_output, input_open)
        bundles.append(bundle)
    if input_part is None:
        pieces = iter(np.split(x.value, np.cumsum(parts)[:-1]))
        input_part = lambda rows: next(pieces)  # noqa: E731 - the parts start in order
    return _run_pipelined(party, model_key, parts, input_part, bundles, frac_bits, tensors, profile,
                          truncate_output, input_open)


def _run_pipelined(party: Party, model_key, parts: list[int], input_part: Callable, bundles: list, frac_bits: int,
                   tensors: dict, profile: list | None, truncate_output: bool, input_open: bool) -> tuple[AShare, int]:
    """Run the parts of a batch pipelined (parties.lockstep.run_pipelined), each replaying its bundle: a part
    computes while another's messages cross the link. Part k takes its input, input_part(rows), when it starts.

    The profile gets each layer's bytes summed over the parts, the rounds
    of the first part, and the slowest part's seconds.
    """
    outputs: list = [None] * len(parts)
    profiles: list[list] = [[] for _ in parts]

    def program(k):
        def run(p: Party) -> None:
            x = AShare(input_part(parts[k]), party.index)
            outputs[k] = _run_whole(p, model_key, x, frac_bits, tensors, profiles[k], truncate_output, input_open)
        return run

    run_pipelined(party, [program(k) for k in range(len(parts))], bundles)
    if profile is not None:
        for layer in zip(*profiles):
            profile.append(dict(layer[0], seconds=max(row["seconds"] for row in layer),
                                bytes_sent=sum(row["bytes_sent"] for row in layer)))
    y = np.concatenate([out.value for out, _ in outputs])
    return AShare(y, party.index), outputs[0][1]


def _run_whole(party: Party, model_key, x: AShare, frac_bits: int, tensors: dict, profile: list | None,
               truncate_output: bool, input_open: bool) -> tuple[AShare, int]:
    """run_plan on the whole of x, in one part."""
    plan = party.store[("plan", model_key)]
    if input_open and not input_maskable(plan):
        raise ValueError("this model's first layer cannot take a masked input (needs dense or an unpadded conv2d)")
    masked_step = _first_product(plan) if input_open else None
    compiled, deps, segments = _run_shape(party, model_key, plan, x.shape, truncate_output, masked_step, frac_bits)

    def program(i):
        def run(p: Party, values: dict) -> None:
            if i == len(plan):  # the output's truncation
                values["output"] = _settle(p, values[plan[-1]["name"]], _bits(compiled.output_pending, frac_bits))
                return
            _run_step(p, model_key, plan, compiled, i, values, tensors, frac_bits, i == masked_step)
        return run

    names = [(step["name"], step["kind"]) for step in plan] + ([("output", "truncate")] if truncate_output else [])
    values = _Values(compiled, x)
    for segment in segments:
        if len(segment) == 1 or not party.computes:
            for i in segment:
                start_time, start = time.perf_counter(), party.channel.totals(online=True)
                program(i)(party, values)
                if profile is not None:
                    end = party.channel.totals(online=True)
                    profile.append(dict(name=names[i][0], kind=names[i][1], seconds=time.perf_counter() - start_time,
                                        bytes_sent=end.bytes_sent - start.bytes_sent,
                                        rounds=end.rounds - start.rounds))
            continue
        # Branches that overlap: 1. the dealer's material of the segment,
        # layer by layer in graph order (the order P2 deals in), each
        # layer's kept in a bundle of its own (dealer calls only: the values
        # are the dealer's view, shapes without shares).
        programs = [program(i) for i in segment]
        shadow = values.shadow()
        bundles = []
        for run in programs:
            with party.dealer.capturing() as bundle:
                run(party, shadow)
            bundles.append(bundle)
        del shadow
        # 2. The segment's layers online, in lockstep: branches share their rounds.
        local = {i: k for k, i in enumerate(segment)}
        segment_deps = [[local[d] for d in deps[i] if d in local] for i in segment]
        stats = run_in_lockstep(party, [lambda p, run=run: run(p, values) for run in programs], segment_deps, bundles)
        if profile is not None:
            for i, st in zip(segment, stats):
                profile.append(dict(name=names[i][0], kind=names[i][1], seconds=st.seconds,
                                    bytes_sent=st.bytes_sent, rounds=st.rounds))
    out_name = "output" if truncate_output else plan[-1]["name"]
    out_bits = frac_bits if truncate_output else frac_bits + _bits(compiled.output_pending, frac_bits)
    return values[out_name], out_bits


def _run_shape(party: Party, model_key, plan: list[dict], x_shape: tuple, truncate_output: bool, masked_step,
               frac_bits: int) -> tuple[_Compiled, list, list]:
    """compile_plan's decisions, each step's dependencies and the run's segments, computed once.

    Kept in the party's store per plan and run shape: recomputing them on
    every query cost a batch-1 query of the MNIST CNN about a third of its
    in-process latency (mostly the cost formulas, needed here only for
    the segments).
    """
    cached = party.store.get(("compiled", model_key))
    if cached is None or cached[0] is not plan:
        cached = (plan, compile_plan(plan), {})
        party.store[("compiled", model_key)] = cached
    _, compiled, shapes = cached
    shape_key = (tuple(x_shape), truncate_output, masked_step, frac_bits)
    if shape_key not in shapes:
        if len(shapes) >= 64:  # a server seeing many batch sizes: keep the cache bounded
            shapes.clear()
        costs = _step_costs(plan, compiled, x_shape[0], truncate_output, masked_step, frac_bits, x_shape[1:])
        deps = [s.deps for s in compiled.steps] + ([[len(plan) - 1]] if truncate_output else [])
        shapes[shape_key] = (deps, _segments([c.rounds for _, c in costs], deps))
    deps, segments = shapes[shape_key]
    return compiled, deps, segments


def _segments(rounds: list[int], deps: list[list[int]]) -> list[list[int]]:
    """Split the steps (graph order) into runs that need lockstep and single steps that do not.

    With every step starting as soon as its inputs are ready (the lockstep
    schedule, plan._attributed_rounds), a cut between steps p-1 and p is
    where every step before it has finished by the time any step after it
    starts. Between two cuts, a group whose steps share no round runs one
    step after the other at no extra round; only the others (a residual
    block with a convolution on its shortcut, an inception block) pay for
    the lockstep's scheduling. A sequential model gets one step per segment.
    """
    start, finish = [], []
    for r, d in zip(rounds, deps):
        start.append(max((finish[j] for j in d), default=0))
        finish.append(start[-1] + r)
    segments, current, done_by = [], [], 0
    later_start = [0] * (len(rounds) + 1)
    later_start[len(rounds)] = 1 << 62
    for i in range(len(rounds) - 1, -1, -1):
        later_start[i] = min(start[i], later_start[i + 1])
    for i in range(len(rounds)):
        current.append(i)
        done_by = max(done_by, finish[i])
        if done_by <= later_start[i + 1]:  # a cut after step i
            spans = sorted((start[j], finish[j]) for j in current if finish[j] > start[j])
            if all(a[1] <= b[0] for a, b in pairwise(spans)):
                segments.extend([j] for j in current)  # nothing overlaps: one step at a time
            else:
                segments.append(current)
            current = []
    return segments


class _Values(dict):
    """Tensor name -> this party's shares; each is dropped once its last reader has taken it (liveness).

    Readers take their inputs when they start, so this holds in lockstep
    too, whatever order the branches start in.
    """

    def __init__(self, compiled: _Compiled, x: AShare):
        super().__init__({compiled.input_name: x})
        self.readers_left: dict = {}
        for s in compiled.steps:
            for name in s.inputs:
                self.readers_left[name] = self.readers_left.get(name, 0) + 1

    def shadow(self) -> _Values:
        """A copy holding shapes without shares (the dealer's view), with its own reader counts."""
        copy = _Values.__new__(_Values)
        dict.__init__(copy, {name: AShare(None, v.party, v.shape) for name, v in self.items()})
        copy.readers_left = dict(self.readers_left)
        return copy

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
    ins = values.take(s.inputs)
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
            # At the product's scale 2F (times the pooled window, and the
            # input's carried window), so the later truncation keeps it exact.
            y = y + tensors[step["bias"]] * np.uint64(window << (frac_bits + _bits(s.carried_in, frac_bits)))
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
        if step.get("protocol") == "fss":
            y = relu_fss(party, x, bits, fss_domain_bits(step, bits, frac_bits), tag=f"relu:{name}")
        elif bits:
            y = relu_truncated(party, x, bits, tag=f"relu:{name}")
        else:
            y = relu(party, x, tag=f"relu:{name}")
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
