"""The operations a party runs on its stored shares, by name.

A cluster (in-process or over TCP) drives its three parties with calls
`(op_name, args)`; every party runs the same op on its own store. Only ops
listed in OPS can be called, with plain arguments (tensor ids, ints,
strings, public arrays): a worker never runs code it was sent.
"""

from __future__ import annotations

import numpy as np

from pysmpc import ring
from pysmpc.parties.party import CLIENT, P0, P1, Party
from pysmpc.protocols import argmax as argmax_protocol
from pysmpc.protocols import compare, conv2d, matmul, mul, pool, relu, select, truncate
from pysmpc.graph.secure import load_plan, run_plan
from pysmpc.protocols.open import reveal_to
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


def op_infer(party: Party, out: int, model_key: str, x: int, frac_bits: int) -> dict:
    """Run a loaded model on shared input x; returns the output shape and a per-layer profile."""
    plan = party.store[("plan", model_key)]
    profile: list = []
    y = run_plan(party, model_key, _get(party, x), frac_bits, _plan_tensors(party, plan), profile)
    _put(party, out, y)
    return {"shape": list(y.shape), "profile": profile}


def op_unload_model(party: Party, model_key: str) -> None:
    plan = party.store.pop(("plan", model_key), [])
    for layer in plan:
        party.store.pop(("fixed", (model_key, layer["name"])), None)
        party.store.pop(("dealer_mask", (model_key, layer["name"])), None)


OPS.update(load_model=op_load_model, infer=op_infer, unload_model=op_unload_model)
