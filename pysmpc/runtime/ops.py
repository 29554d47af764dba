"""The operations a party runs on its stored shares, by name.

A cluster (in-process or over TCP) drives its three parties with calls
`(op_name, args)`; every party runs the same op on its own store. Only ops
listed in OPS can be called, with plain arguments (tensor ids, ints,
strings, public arrays): a worker never runs code it was sent.
"""

from __future__ import annotations

import json

import numpy as np

from pysmpc import ring
from pysmpc.parties.channel import ChannelError
from pysmpc.parties.party import CLIENT, DEALER, P0, P1, Party
from pysmpc.protocols import argmax as argmax_protocol
from pysmpc.protocols import compare, conv2d, matmul, mul, pool, relu, select, truncate
from pysmpc.graph.secure import load_plan, run_plan
from pysmpc.protocols.open import open_arith, reveal_to
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
    shape = tuple(shape)
    if party.index in (P0, P1):
        value = party.channel.recv(CLIENT, tag="input")
        if value.shape != shape or value.dtype != np.uint64:
            raise ValueError(f"{party.name}: input share has shape {value.shape}/{value.dtype}, expected {shape}/uint64")
        return _put(party, out, AShare(value, party.index))
    return _put(party, out, AShare(None, party.index, shape))


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


def op_load_model(party: Party, model_key: str, plan: list) -> None:
    """Keep a model's plan and open its weight masks once (graph.secure.load_plan)."""
    load_plan(party, model_key, plan, _plan_tensors(party, plan))


def op_infer(party: Party, out: int, model_key: str, x: int, frac_bits: int, truncate_output: bool = False) -> dict:
    """Run a loaded model on shared input x.

    Returns the output's shape and fractional bits (the last truncation is
    left to the receiver unless truncate_output) and a per-layer profile.
    """
    plan = party.store[("plan", model_key)]
    profile: list = []
    y, out_bits = run_plan(party, model_key, _get(party, x), frac_bits, _plan_tensors(party, plan), profile,
                           truncate_output=truncate_output)
    _put(party, out, y)
    return {"shape": list(y.shape), "frac_bits": out_bits, "profile": profile}


def op_unload_model(party: Party, model_key: str) -> None:
    plan = party.store.pop(("plan", model_key), [])
    for layer in plan:
        party.store.pop(("fixed", (model_key, layer["name"])), None)
        party.store.pop(("dealer_mask", (model_key, layer["name"])), None)


OPS.update(load_model=op_load_model, infer=op_infer, unload_model=op_unload_model)


def op_serve(party: Party, model_key: str, num_requests: int, frac_bits: int, input_shape: list,
             max_batch: int = 16, max_rows: int = 256, idle_timeout: float | None = None) -> dict:
    """Serve client queries that arrive at the workers (TCP), `num_requests` of them.

    1. P0 takes the oldest queued query and those that batch with it, and
       tells P1 and P2 their ids (control messages); P1 and P2 wait for the
       same queries to reach them.
    2. P0 and P1 read each query's input share from the client; all three
       check what they got and agree (control messages) on which queries
       are well-formed. A bad query (wrong shape or dtype, more than
       `max_rows` inputs, a frame over its declared size) is answered with
       an error naming the problem; the loop goes on.
    3. Run the model once on the batch (plus the secure argmax when asked),
       and P0 and P1 send each client its rows of the output shares and
       their fractional bits (the client does the last division).

    Query traffic is added to the party's stats under "query:<tag>".
    Returns {"served": ok, "failed": bad}.
    """
    inbox = party.store.get("query_inbox")
    if inbox is None or not hasattr(party.channel, "send_control"):
        raise RuntimeError("this cluster takes no client queries: serving needs workers over TCP")
    input_shape = tuple(input_shape)
    served = failed = 0
    while served + failed < num_requests:
        batch = _agree_on_batch(party, inbox, min(max_batch, num_requests - served - failed), max_rows, idle_timeout)
        if batch is None:
            break
        shares, problems = [], []
        for query in batch:
            share, problem = _read_query(party, query, frac_bits, input_shape, max_rows)
            shares.append(share)
            problems.append(problem)
        ok = _agree_on_flags(party, [p is None for p in problems])
        for query, good, problem in zip(batch, ok, problems):
            if not good and query is not None and party.index in (P0, P1):
                reason = problem or "another party rejected this query"
                try:
                    query.channel.send_control(CLIENT, "query:error", reason.encode())
                except ChannelError:  # the client hung up (or we did, on a bad frame): serve the others
                    pass
        good_queries = [(q, s) for q, s, g in zip(batch, shares, ok) if g]
        if good_queries:
            _answer(party, model_key, good_queries, frac_bits)
        for query in batch:
            if query is not None:
                party.channel.absorb(query.channel, "query")
                query.channel.close()
        served += len(good_queries)
        failed += len(batch) - len(good_queries)
    return {"served": served, "failed": failed}


def _agree_on_batch(party, inbox, max_batch, max_rows, idle_timeout):
    """Step 1: the same batch of queries on all three parties (None: stop serving)."""
    if party.index == P0:
        batch = inbox.next_batch(max_batch, max_rows, timeout=idle_timeout)
        for j in (P1, DEALER):
            party.channel.send_control(j, "serve:next", json.dumps([q.id for q in batch]).encode())
        return batch or None
    tag, payload = party.channel.recv_control(P0, timeout=None)
    if tag != "serve:next":
        raise RuntimeError(f"{party.name}: expected the next queries from P0, got '{tag}'")
    ids = json.loads(bytes(payload))
    if not ids:
        return None
    return [inbox.take(qid, timeout=party.channel.timeout) for qid in ids]


def _read_query(party, query, frac_bits, input_shape, max_rows):
    """Step 2: this party's input share of a query (None on P2), or a problem."""
    if query is None:
        return None, "the query did not reach every party"
    request = query.request
    try:
        shape = tuple(int(s) for s in request["shape"])
    except (KeyError, TypeError, ValueError):
        return None, "the query's shape is missing or malformed"
    if len(shape) != len(input_shape) + 1 or shape[1:] != input_shape or shape[0] < 1:
        return None, f"query shape {shape} does not fit the model's input (batch, {', '.join(map(str, input_shape))})"
    if shape[0] > max_rows:
        return None, (f"the query has a batch of {shape[0]} inputs; this server takes at most {max_rows} per query "
                      "(max_rows): split it")
    if request.get("frac_bits") != frac_bits:
        return None, f"the query is encoded with {request.get('frac_bits')} fractional bits, the model with {frac_bits}"
    if request.get("reveal") not in ("logits", "argmax"):
        return None, f"reveal must be 'logits' or 'argmax', got {request.get('reveal')!r}"
    if party.index == DEALER:
        return AShare(None, party.index, shape), None
    try:
        value = query.channel.recv(CLIENT, tag="input")
    except Exception as exc:  # noqa: BLE001 - a bad client must not stop the server
        return None, f"no input share from the client: {exc}"
    if not isinstance(value, np.ndarray) or value.dtype != np.uint64 or value.shape != shape:
        got = (f"a {value.dtype} array of shape {value.shape}" if isinstance(value, np.ndarray)
               else f"a {type(value).__name__}")
        return None, f"the input share is {got}; expected a uint64 array of shape {shape} (ring elements)"
    return AShare(value, party.index), None


def _agree_on_flags(party, mine: list[bool]) -> list[bool]:
    """All three parties learn which queries every party found well-formed (control messages)."""
    flags = np.array(mine, dtype=np.uint8).tobytes()
    others = [j for j in (P0, P1, DEALER) if j != party.index]
    for j in others:
        party.channel.send_control(j, "serve:ok", flags)
    agreed = np.array(mine, dtype=bool)
    for j in others:
        tag, payload = party.channel.recv_control(j, timeout=party.channel.timeout)
        if tag != "serve:ok":
            raise RuntimeError(f"{party.name}: expected query flags from party {j}, got '{tag}'")
        agreed &= np.frombuffer(bytes(payload), dtype=np.uint8).astype(bool)
    return agreed.tolist()


def _answer(party, model_key, good_queries, frac_bits) -> None:
    """Step 3: one run of the model for the batch; each client gets its rows."""
    from pysmpc.sharing.shares import concat_shares

    x = concat_shares([s for _, s in good_queries], axis=0)
    plan = party.store[("plan", model_key)]
    y, out_bits = run_plan(party, model_key, x, frac_bits, _plan_tensors(party, plan), truncate_output=False)
    reveal = good_queries[0][0].request["reveal"]
    if reveal == "argmax":
        y = argmax_protocol.argmax(party, y)
    if party.index == DEALER:
        return
    row = 0
    for query, share in good_queries:
        n = share.shape[0]
        scale = np.array([0 if reveal == "argmax" else out_bits], dtype=np.uint64)
        query.channel.send(CLIENT, [np.ascontiguousarray(y.value[row : row + n]), scale], tag="output")
        row += n


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
    from pysmpc.sharing.prg import PRG, new_seed

    share = _get(party, x)
    if party.index not in (P0, P1):
        return _put(party, out, AShare(None, party.index, share.shape))
    noise = standard_normal(PRG(new_seed()), share.shape) * float(std)
    noise_ring = np.rint(noise * float(1 << frac_bits)).astype(np.int64).view(np.uint64)
    return _put(party, out, AShare(share.value + noise_ring, party.index))


OPS.update(add_gaussian=op_add_gaussian)
