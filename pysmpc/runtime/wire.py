"""Safe encoding of operation calls and their results for the TCP cluster.

A message is a list: UTF-8 JSON describing the value, then the numpy arrays
and bytes it refers to, which travel as raw frame buffers. In the JSON,
null, booleans, integers, floats and strings stand for themselves;
everything else is an object with exactly one key naming its type:

    {"list": [...]}   {"tuple": [...]}   {"dict": [[key, value], ...]}
    {"slice": [start, stop, step]}       {"ellipsis": null}
    {"np": [dtype, value]}   numpy scalar (np.uint64(5) -> ["<u8", "5"])
    {"array": i}             numpy array, buffer i
    {"bytes": i}             bytes, buffer i

Decoding accepts only these forms and whitelisted dtypes, and rejects
anything else with a `WireError`: a worker never unpickles or evaluates
what it receives. Ops are then looked up by name in runtime.ops.OPS.
"""

from __future__ import annotations

import json

import numpy as np

from pysmpc.parties.channel import ChannelError, PeerDisconnected, PeerTimeout

__all__ = [
    "WireError",
    "RemoteError",
    "encode",
    "decode",
    "encode_call",
    "decode_call",
    "encode_result",
    "encode_error",
    "decode_reply",
]

_MAX_DEPTH = 32
_SCALAR_DTYPES = {
    np.dtype(t).str: np.dtype(t)
    for t in ("bool", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64")
}
# Errors a worker reports are rebuilt as these types (by name) so callers can
# catch them as they would from the in-process cluster; others become RemoteError.
_ERROR_TYPES = {cls.__name__: cls for cls in (
    ValueError, TypeError, KeyError, IndexError, OverflowError, ZeroDivisionError, ArithmeticError,
    NotImplementedError, RuntimeError, MemoryError, AssertionError,
    ChannelError, PeerTimeout, PeerDisconnected,
)}


class WireError(ValueError):
    """A message could not be encoded, or a received one is not a valid message."""


class RemoteError(RuntimeError):
    """An error of a type that is not rebuilt on this side, raised on a party."""


# -- values -------------------------------------------------------------------------------
def encode(value) -> list:
    """Encode a value as [json bytes, *buffers]."""
    buffers: list = []
    doc = _enc(value, buffers, 0)
    return [json.dumps(doc, separators=(",", ":"), allow_nan=True).encode(), *buffers]


def _enc(v, buffers: list, depth: int):
    if depth > _MAX_DEPTH:
        raise WireError("value nested too deeply to encode")
    if isinstance(v, np.generic):  # before int/float: np.float64 is a float subclass
        if v.dtype.str not in _SCALAR_DTYPES:
            raise WireError(f"cannot encode a numpy scalar of dtype {v.dtype}")
        return {"np": [v.dtype.str, str(v.item()) if v.dtype.kind in "iu" else v.item()]}
    if v is None or isinstance(v, (bool, str)):
        return v
    if isinstance(v, int):  # also IntEnum; plain int on the other side
        return int(v)
    if isinstance(v, float):
        return float(v)
    if isinstance(v, np.ndarray):
        if v.dtype.str not in _SCALAR_DTYPES:
            raise WireError(f"cannot encode an array of dtype {v.dtype}")
        buffers.append(v)
        return {"array": len(buffers) - 1}
    if isinstance(v, (bytes, bytearray)):
        buffers.append(bytes(v))
        return {"bytes": len(buffers) - 1}
    if isinstance(v, list):
        return {"list": [_enc(x, buffers, depth + 1) for x in v]}
    if isinstance(v, tuple):
        return {"tuple": [_enc(x, buffers, depth + 1) for x in v]}
    if isinstance(v, dict):
        if not all(isinstance(k, (str, int)) and not isinstance(k, bool) for k in v):
            raise WireError("dict keys must be strings or ints")
        return {"dict": [[_enc(k, buffers, depth + 1), _enc(x, buffers, depth + 1)] for k, x in v.items()]}
    if isinstance(v, slice):
        return {"slice": [_enc(x, buffers, depth + 1) for x in (v.start, v.stop, v.step)]}
    if v is Ellipsis:
        return {"ellipsis": None}
    raise WireError(f"cannot encode a {type(v).__name__}: messages carry ints, floats, strings, None, bools, "
                    "lists, tuples, dicts, slices, numpy scalars and arrays")


def decode(message) -> object:
    """Decode [json bytes, *buffers] made by `encode`; WireError for anything else."""
    if not isinstance(message, list) or not message or not isinstance(message[0], bytes):
        raise WireError(f"a message is a list [json, *buffers], got {type(message).__name__}")
    try:
        doc = json.loads(message[0])
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # RecursionError: "[[[[..." nested too deep
        raise WireError(f"message is not valid JSON: {str(exc)[:200]}") from None
    buffers = message[1:]
    used = set()
    value = _dec(doc, buffers, used, 0)
    if len(used) != len(buffers):
        raise WireError(f"message has {len(buffers)} buffers but refers to {len(used)}")
    return value


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _buffer(i, buffers, used, kind):
    if not _is_int(i) or not 0 <= i < len(buffers) or i in used:
        raise WireError(f"bad buffer reference {i!r}")
    buf = buffers[i]
    if kind is np.ndarray and not isinstance(buf, np.ndarray):
        raise WireError(f"buffer {i} should be an array, is {type(buf).__name__}")
    if kind is bytes and not isinstance(buf, bytes):
        raise WireError(f"buffer {i} should be bytes, is {type(buf).__name__}")
    used.add(i)
    return buf


def _dec(d, buffers: list, used: set, depth: int):
    if depth > _MAX_DEPTH:
        raise WireError("message nested too deeply")
    if d is None or isinstance(d, (bool, int, float, str)):
        return d
    if not isinstance(d, dict) or len(d) != 1:
        raise WireError(f"unknown value {str(d)[:80]!r}: expected a JSON scalar or a one-key tagged object")
    (kind, body), = d.items()
    if kind in ("list", "tuple") and isinstance(body, list):
        items = [_dec(x, buffers, used, depth + 1) for x in body]
        return items if kind == "list" else tuple(items)
    if kind == "dict" and isinstance(body, list):
        out = {}
        for pair in body:
            if not (isinstance(pair, list) and len(pair) == 2):
                raise WireError(f"bad dict entry {str(pair)[:80]!r}")
            key = _dec(pair[0], buffers, used, depth + 1)
            if not (isinstance(key, str) or _is_int(key)):
                raise WireError(f"dict key {key!r} is not a string or int")
            out[key] = _dec(pair[1], buffers, used, depth + 1)
        return out
    if kind == "slice" and isinstance(body, list) and len(body) == 3:
        parts = [_dec(x, buffers, used, depth + 1) for x in body]
        if not all(p is None or _is_int(p) or isinstance(p, np.integer) for p in parts):
            raise WireError(f"slice bounds must be ints or None, got {parts!r}")
        return slice(*parts)
    if kind == "ellipsis" and body is None:
        return Ellipsis
    if kind == "np" and isinstance(body, list) and len(body) == 2 and isinstance(body[0], str) \
            and body[0] in _SCALAR_DTYPES:  # str first: a dict or list is unhashable
        dtype = _SCALAR_DTYPES[body[0]]
        raw = body[1]
        try:
            if dtype.kind in "iu":
                if not isinstance(raw, str):
                    raise ValueError("integer scalars travel as decimal strings")
                value = int(raw)
                info = np.iinfo(dtype)
                if not info.min <= value <= info.max:
                    raise ValueError(f"{value} out of range for {dtype}")
                return dtype.type(value)
            if dtype.kind == "b":
                if not isinstance(raw, bool):
                    raise ValueError("bool scalar must be true or false")
                return np.bool_(raw)
            if not isinstance(raw, (int, float)) or isinstance(raw, bool):
                raise ValueError("float scalar must be a number")
            with np.errstate(over="ignore"):
                value = dtype.type(raw)
            if np.isfinite(value) != np.isfinite(float(raw)):
                raise ValueError(f"out of range for {dtype}")
            return value
        except (ValueError, OverflowError) as exc:  # OverflowError: an int too large for a float, e.g. 10**400
            raise WireError(f"bad numpy scalar {str(body)[:80]}: {exc}") from None
    if kind == "array":
        return _buffer(body, buffers, used, np.ndarray)
    if kind == "bytes":
        return _buffer(body, buffers, used, bytes)
    raise WireError(f"unknown tagged value {kind!r} (or malformed body) in message")


# -- calls and replies -----------------------------------------------------------------
def encode_call(name: str, args: tuple, kwargs: dict) -> list:
    """Encode an operation call for the workers."""
    if not isinstance(name, str):
        raise WireError("operation name must be a string")
    return encode({"op": name, "args": tuple(args), "kwargs": dict(kwargs)})


def decode_call(message) -> tuple[str, tuple, dict]:
    """Decode a call into (name, args, kwargs); WireError if it is not one."""
    value = decode(message)
    if not (isinstance(value, dict) and set(value) == {"op", "args", "kwargs"} and isinstance(value["op"], str)
            and isinstance(value["args"], tuple) and isinstance(value["kwargs"], dict)
            and all(isinstance(k, str) for k in value["kwargs"])):
        raise WireError("message is not an operation call {op, args, kwargs}")
    return value["op"], value["args"], value["kwargs"]


def encode_result(value) -> list:
    return encode({"ok": True, "value": value})


def encode_error(party: int, op: str, exc: BaseException) -> list:
    """Encode an error raised by `op` on `party`, keeping its type name and message."""
    args = [a for a in exc.args if isinstance(a, (str, int, float)) and not isinstance(a, bool)]
    if len(args) != len(exc.args):
        args = [str(exc)]
    return encode({"ok": False, "party": int(party), "op": str(op), "type": type(exc).__name__, "args": args,
                   "message": str(exc)})


def decode_reply(message):
    """Return a reply's value, or raise the error it carries (rebuilt by type name)."""
    reply = decode(message)
    if not isinstance(reply, dict) or not isinstance(reply.get("ok"), bool):
        raise WireError("message is not a reply {ok, ...}")
    if reply["ok"]:
        if set(reply) != {"ok", "value"}:
            raise WireError("malformed result reply")
        return reply["value"]
    if not (isinstance(reply.get("type"), str) and isinstance(reply.get("args"), list)
            and isinstance(reply.get("message"), str)):
        raise WireError("malformed error reply")
    cls = _ERROR_TYPES.get(reply["type"])
    if cls is None:
        exc = RemoteError(f"{reply['type']}: {reply['message']}")
    else:
        exc = cls(*reply["args"])
    exc.party = reply.get("party")
    exc.op = reply.get("op")
    raise exc
