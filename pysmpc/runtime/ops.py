"""The operations a party runs on its stored shares, by name.

A cluster (in-process or over TCP) drives its three parties with calls
`(op_name, args)`; every party runs the same op on its own store. Only ops
listed in OPS can be called, with plain arguments (tensor ids, ints,
strings, public arrays): a worker never runs code it was sent.
"""

from __future__ import annotations

import time
from collections import deque

import numpy as np

from pysmpc import ring
from pysmpc.parties.party import CLIENT, P0, P1, Party
from pysmpc.protocols import argmax as argmax_protocol
from pysmpc.protocols import compare, conv2d, matmul, mul, pool, relu, select, truncate
from pysmpc.graph.secure import load_plan, pipeline_parts, run_plan
from pysmpc.protocols.open import open_arith, reveal_to
from pysmpc.runtime.queries import ServedModels
from pysmpc.runtime.rounds import ROUND_OPS
from pysmpc.sharing.shares import AShare

__all__ = ["OPS", "run_op"]


def _get(party: Party, tid: int) -> AShare:
    try:
        return party.store[("tensor", tid)]
    except KeyError:
        raise KeyError(f"{party.name}: no tensor with id {tid} (freed, or from another cluster)") from None


def _put(party: Party, tid: int, share: AShare) -> tuple:
    party.store[("tensor", tid)] = share
    return share.shape


def op_input(party: Party, out: int, shape: tuple) -> tuple:
    """Receive this party's share of a client input (the dealer keeps the shape only)."""
    return _put(party, out, _receive_input(party, tuple(shape)))


def _receive_input(party: Party, shape: tuple) -> AShare:
    if party.index in (P0, P1):
        return AShare(_receive_input_value(party, shape), party.index)
    return AShare(None, party.index, shape)


def _receive_input_value(party: Party, shape: tuple) -> np.ndarray:
    value = party.channel.recv(CLIENT, tag="input")
    if not isinstance(value, np.ndarray) or value.shape != shape or value.dtype != np.uint64:
        raise ValueError(f"{party.name}: input share has shape {getattr(value, 'shape', None)}/"
                         f"{getattr(value, 'dtype', type(value).__name__)}, expected {shape}/uint64")
    return value


def op_reveal(party: Party, tid: int, tag: str = "output") -> None:
    share = _get(party, tid)
    reveal_to(party, share.value, CLIENT, tag=tag)


def op_open(party: Party, tid: int, tag: str = "open"):
    """Open a tensor to both computing parties (each learns it); they return it to the caller."""
    share = _get(party, tid)
    if party.is_dealer:
        return None
    (value,) = open_arith(party, [share.value], tag=tag)
    return value


def op_free(party: Party, tids: list) -> None:
    for tid in tids:
        party.store.pop(("tensor", tid), None)


def op_add(party, out, x, y):
    return _put(party, out, _get(party, x) + _get(party, y))


def op_sub(party, out, x, y):
    return _put(party, out, _get(party, x) - _get(party, y))


def op_neg(party, out, x):
    return _put(party, out, -_get(party, x))


def op_add_public(party, out, x, public):
    return _put(party, out, _get(party, x).add_public(public))


def op_mul_public(party, out, x, public):
    return _put(party, out, _get(party, x) * public)


def op_matmul_public(party, out, x, public, public_left=False):
    share = _get(party, x)
    if public_left:
        shape = (public.shape[0], share.shape[1])
        value = None if share.value is None else ring.matmul(public, share.value)
    else:
        shape = (share.shape[0], public.shape[1])
        value = None if share.value is None else ring.matmul(share.value, public)
    return _put(party, out, AShare(value, party.index, shape))


def op_reshape(party, out, x, shape):
    return _put(party, out, _get(party, x).reshape(tuple(shape)))


def op_transpose(party, out, x, axes):
    return _put(party, out, _get(party, x).transpose(*axes))


def op_getitem(party, out, x, key):
    return _put(party, out, _get(party, x)[key])


def op_sum(party, out, x, axis, keepdims):
    return _put(party, out, _get(party, x).sum(axis=axis, keepdims=keepdims))


def op_mul(party, out, x, y):
    return _put(party, out, mul.mul(party, _get(party, x), _get(party, y)))


def op_matmul(party, out, x, y):
    return _put(party, out, matmul.matmul(party, _get(party, x), _get(party, y)))


def op_conv2d(party, out, x, w, stride, padding):
    return _put(party, out, conv2d.conv2d(party, _get(party, x), _get(party, w), stride, padding))


def op_conv2d_public(party, out, x, w_public, stride, padding):
    share = _get(party, x)
    shape = conv2d.output_shape(share.shape, w_public.shape, stride, padding)
    value = None if share.value is None else ring.conv2d(share.value, w_public, stride=stride, padding=padding)
    return _put(party, out, AShare(value, party.index, shape))


def op_share_fixed(party, key, w):
    matmul.share_fixed_operand(party, _get(party, w), key)


def op_matmul_fixed(party, out, x, key):
    return _put(party, out, matmul.matmul_fixed(party, _get(party, x), key))


def op_conv2d_fixed(party, out, x, key, stride, padding):
    return _put(party, out, conv2d.conv2d_fixed(party, _get(party, x), key, stride, padding))


def op_truncate(party, out, x, bits):
    return _put(party, out, truncate.truncate(party, _get(party, x), bits))


def op_relu(party, out, x):
    return _put(party, out, relu.relu(party, _get(party, x)))


def op_less_than(party, out, x, y=None, public=None):
    share = _get(party, x)
    other = _get(party, y) if y is not None else public
    bits = compare.less_than(party, share, other)
    return _put(party, out, select.bit_to_arith(party, bits).reshape(share.shape))


def op_sum_pool2d(party, out, x, k, stride):
    return _put(party, out, pool.sum_pool2d(party, _get(party, x), k, stride))


def op_avg_pool2d(party, out, x, k, stride, frac_bits):
    return _put(party, out, pool.avg_pool2d(party, _get(party, x), k, frac_bits, stride))


def op_max_pool2d(party, out, x, k, stride):
    return _put(party, out, pool.max_pool2d(party, _get(party, x), k, stride))


def op_argmax(party, out, x):
    return _put(party, out, argmax_protocol.argmax(party, _get(party, x)))


OPS = {name[3:]: fn for name, fn in globals().items() if name.startswith("op_") and callable(fn)}


def run_op(party: Party, name: str, args: tuple, kwargs: dict):
    try:
        fn = OPS[name]
    except KeyError:
        raise ValueError(f"unknown operation {name!r}; known: {sorted(OPS)}") from None
    return fn(party, *args, **kwargs)


def op_stats(party: Party) -> dict:
    return {tag: s.as_dict() for tag, s in party.channel.stats().items()}


def op_reset_stats(party: Party) -> None:
    party.channel.reset_stats()


OPS.update(stats=op_stats, reset_stats=op_reset_stats)


def _plan_tensors(party: Party, plan: list) -> dict:
    ids = [layer[k] for layer in plan for k in ("kernel", "bias") if layer.get(k) is not None]
    return {tid: _get(party, tid) for tid in ids}


def op_load_model(party: Party, model_key: str, plan: list, description: dict | None = None) -> None:
    """Keep a model's plan and open its weight masks once (graph.secure.load_plan).

    `description` (input and output shapes, input range, fractional bits)
    is what this party tells clients about the model (queries.ServedModels).
    A worker first finishes loading its Numba kernels (runtime.worker): the
    first use of a kernel takes seconds, and within an inference its peers
    would wait that long for this party, close to their timeout.
    """
    kernels_ready = party.store.get("kernels_ready")
    if kernels_ready is not None:
        kernels_ready.wait()
    load_plan(party, model_key, plan, _plan_tensors(party, plan))
    if description is not None:
        party.store.setdefault("served_models", ServedModels()).add(model_key, description)


def op_infer(party: Party, out: int, model_key: str, x: int, frac_bits: int, truncate_output: bool = False) -> dict:
    """Run a loaded model on shared input x (on prepared material if some fits).

    Returns the output's shape and fractional bits (the last truncation is
    left to the receiver unless truncate_output), a per-layer profile and
    whether prepared material was used.
    """
    profile: list = []
    x_share = _get(party, x)
    prepared = bool(_stock(party, model_key, x_share.shape, truncate_output))
    y, out_bits = _run_model(party, model_key, x_share, frac_bits, truncate_output, profile)
    _put(party, out, y)
    return {"shape": list(y.shape), "frac_bits": out_bits, "profile": _profile_table(profile), "prepared": prepared}


def op_predict(party: Party, model_key: str, shape: list, frac_bits: int, mask_id: str | None = None,
               reveal: str = "logits") -> dict:
    """Receive a client's input, run the model and send the output shares back (one call).

    The input is two additive shares, or, with `mask_id`, E = x - A sent
    to both P0 and P1 by a client holding that prepared run's input mask
    A (op_prepare with input_mask_ids): the first product then opens
    nothing. With reveal="logits" the output is securely truncated to
    `frac_bits` first (`reveal_output_truncated`); with reveal="argmax" it
    is the secure argmax's one-hot rows (integers; P2 deals the argmax's
    material live).
    """
    if reveal not in ("logits", "argmax"):
        raise ValueError(f"reveal must be 'logits' or 'argmax', got {reveal!r}")
    truncate_output = reveal_output_truncated(reveal)
    shape = tuple(shape)
    if len(pipeline_parts(shape[0], party.channel.pipelines_batches)) > 1:
        # The batch runs in pipelined parts and arrives so: each part's input is taken when it starts.
        x, input_part = AShare(None, party.index, shape), lambda rows: _receive_input_value(party, (rows, *shape[1:]))
    else:
        x, input_part = _receive_input(party, shape), None
    profile: list = []
    prepared = mask_id is not None or bool(_stock(party, model_key, x.shape, truncate_output))
    y, out_bits = _run_model(party, model_key, x, frac_bits, truncate_output, profile, mask_id=mask_id,
                             input_part=input_part)
    if reveal == "argmax":
        y, out_bits = argmax_protocol.argmax(party, y), 0
    reveal_to(party, y.value, CLIENT, tag="output")
    return {"shape": list(y.shape), "frac_bits": out_bits, "profile": _profile_table(profile), "prepared": prepared}


def reveal_output_truncated(reveal: str) -> bool:
    """Whether a model's output is truncated to F fractional bits before it is revealed this way.

    Logits are: the last product leaves them at 2F bits (or more after an
    average pool), and revealing that exact accumulator would hand a client
    F more bits of every weight combination than the model's own format
    holds, which makes extracting the model by solving equations exact.
    The secure truncation (protocols.truncate, 1 round) drops them. The
    argmax compares the untruncated values: it reveals only a position.
    """
    return reveal == "logits"


def _profile_table(profile: list[dict]) -> dict:
    """run_plan's per-layer profile as columns, the numbers as arrays.

    A list of dicts took ~0.2 ms to encode and as much to decode per reply
    over TCP, on the path of every query; arrays travel as raw buffers.
    """
    table = {"name": [p["name"] for p in profile], "kind": [p["kind"] for p in profile]}
    for key, dtype in (("seconds", np.float64), ("bytes_sent", np.int64), ("rounds", np.int64)):
        table[key] = np.array([p[key] for p in profile], dtype)
    return table


def op_prepare(party: Party, model_key: str, shape: list, frac_bits: int, truncate_output: bool = False,
               count: int = 1, keep_shapes: int = 4, input_mask_ids: list | None = None) -> dict:
    """Make the dealer material for `count` runs of a model on inputs of `shape`, ahead of the queries.

    Offline work (graph.secure.run_plan with Dealer.recording): P2 sends
    its corrections now and P0/P1 keep their shares, so a later `infer` on
    an input of this shape neither waits on P2 nor draws from the streams.
    Material for at most `keep_shapes` input shapes is kept (the oldest
    shape's is dropped). With `input_mask_ids`, one run per id is made for
    a masked input instead (run_plan's input_open): P2 sends the run's
    input mask to the client, and `predict(mask_id=...)` uses the run
    once. Returns the time taken and what this party holds.
    """
    shape = tuple(int(s) for s in shape)
    plan = party.store[("plan", model_key)]
    tensors = _plan_tensors(party, plan)
    start = time.perf_counter()

    def record(input_open):
        with party.dealer.recording() as bundle:
            y, out_bits = run_plan(party, model_key, AShare(None, party.index, shape), frac_bits, tensors,
                                   truncate_output=truncate_output, input_open=input_open)
        bundle.output = (y.shape, out_bits)
        return bundle

    stocks = party.store.setdefault(("prepared", model_key), {})
    masked = party.store.setdefault(("masked", model_key), {})
    if input_mask_ids is not None:
        for mask_id in input_mask_ids:
            if mask_id in masked:
                raise ValueError(f"{party.name}: a prepared run {mask_id!r} exists already")
            masked[mask_id] = record(True)
    else:
        key = (shape, bool(truncate_output))
        stock = stocks.pop(key, deque())
        stocks[key] = stock  # now the newest shape
        while len(stocks) > keep_shapes:
            stocks.pop(next(iter(stocks)))
        for _ in range(int(count)):
            stock.append(record(False))
    held = [b for s in stocks.values() for b in s] + list(masked.values())
    return {"seconds": time.perf_counter() - start, "stored_bytes": sum(b.nbytes for b in held)}


def _stock(party: Party, model_key: str, shape: tuple, truncate_output: bool):
    """Prepared material of a model for inputs of `shape`, oldest first (empty if none)."""
    return party.store.get(("prepared", model_key), {}).get((tuple(shape), bool(truncate_output)), ())


def _run_model(party: Party, model_key: str, x: AShare, frac_bits: int, truncate_output: bool, profile=None,
               mask_id: str | None = None, input_part=None):
    """run_plan, replaying prepared material when there is some (P2 then has nothing to do).

    With `mask_id`, the prepared run of that id, for an input masked by its
    owner (x.value is E = x - A); else the oldest run prepared for x's
    shape, if any. `input_part(rows)`, for a batch arriving in pipelined
    parts: x is its shape only, and each part's values are taken when the
    part starts (run_plan).
    """
    plan = party.store[("plan", model_key)]
    if mask_id is not None:
        bundle = party.store.get(("masked", model_key), {}).pop(mask_id, None)
        if bundle is None:
            raise KeyError(f"{party.name}: no prepared run {mask_id!r} for this model (used already, or never made)")
    else:
        stock = _stock(party, model_key, x.shape, truncate_output)
        if not stock:
            return run_plan(party, model_key, x, frac_bits, _plan_tensors(party, plan), profile,
                            truncate_output=truncate_output, input_part=input_part)
        bundle = stock.popleft()
    if not party.computes:
        shape, out_bits = bundle.output
        return AShare(None, party.index, shape), out_bits
    with party.dealer.replaying(bundle):
        return run_plan(party, model_key, x, frac_bits, _plan_tensors(party, plan), profile,
                        truncate_output=truncate_output, input_open=mask_id is not None, input_part=input_part)


def op_unload_model(party: Party, model_key: str) -> None:
    if "served_models" in party.store:
        party.store["served_models"].remove(model_key)
    plan = party.store.pop(("plan", model_key), [])
    party.store.pop(("prepared", model_key), None)
    party.store.pop(("masked", model_key), None)
    party.store.pop(("compiled", model_key), None)
    for layer in plan:
        party.store.pop(("fixed", (model_key, layer["name"])), None)
        party.store.pop(("dealer_mask", (model_key, layer["name"])), None)


OPS.update(load_model=op_load_model, infer=op_infer, predict=op_predict, prepare=op_prepare,
           unload_model=op_unload_model)


def op_serve(party: Party, *args, **kwargs) -> dict:
    """Serve client queries that reach the workers (TCP): runtime/serving.py, the loop by its own concern."""
    from pysmpc.runtime.serving import serve

    return serve(party, *args, **kwargs)


OPS.update(serve=op_serve)


def op_add_gaussian(party: Party, out: int, x: int, std: float, frac_bits: int) -> tuple:
    """Add Gaussian noise N(0, std^2) drawn by this party alone to its share (differential privacy).

    P0 and P1 each draw their own noise from a PRG on a fresh ``secrets``
    seed that no other party knows (sharing.gaussian), encode it with
    ``frac_bits`` fractional bits and add it to their share; P2 holds no
    share and adds nothing. The opened sum carries noise e0 + e1 with
    variance 2 std^2, and a party that removes its own noise still leaves
    the other's N(0, std^2): each suffices alone.

    Cost: 0 rounds, 0 bytes.
    """
    from pysmpc.sharing.gaussian import standard_normal
    from pysmpc.sharing.prg import PRG

    share = _get(party, x)
    if party.index not in (P0, P1):
        return _put(party, out, AShare(None, party.index, share.shape))
    noise = standard_normal(PRG.fresh(), share.shape) * float(std)
    noise_ring = np.rint(noise * float(1 << frac_bits)).astype(np.int64).view(np.uint64)
    return _put(party, out, AShare(share.value + noise_ring, party.index))


OPS.update(add_gaussian=op_add_gaussian)
OPS.update(ROUND_OPS)

from pysmpc.runtime.training_ops import TRAINING_OPS  # noqa: E402 - registered last, as ROUND_OPS

OPS.update(TRAINING_OPS)
