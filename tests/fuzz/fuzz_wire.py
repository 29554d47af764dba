#!/usr/bin/env python3
"""atheris harness: decoding of operation calls and replies (runtime/wire.py).

    python tests/fuzz/fuzz_wire.py -max_total_time=60

An input is up to three buffers, then the JSON document: byte 0 holds
the buffer count; each buffer is one kind byte (a dtype or bytes), a
length byte and its data. decode, decode_call and decode_reply may raise
WireError; decode_reply may also raise the remote error a reply carries
(one of the rebuilt types, with .party set). Anything else is a finding.
"""

from __future__ import annotations

import atheris

from _harness import run, use_working_copy

use_working_copy()
with atheris.instrument_imports(include=["pysmpc"]):
    import numpy as np

    from pysmpc.runtime import wire

DTYPES = ["bytes", "bool", "int8", "uint8", "int32", "uint32", "int64", "uint64", "float32", "float64"]
REBUILT = (*set(wire._ERROR_TYPES.values()), wire.RemoteError)


def split(data: bytes) -> list:
    """[json bytes, *buffers] from the input format in the module docstring."""
    count, pos, buffers = (data[0] % 4 if data else 0), 1, []
    for _ in range(count):
        if pos + 2 > len(data):
            break
        kind, n = DTYPES[data[pos] % len(DTYPES)], data[pos + 1]
        raw = data[pos + 2:pos + 2 + n]
        pos += 2 + n
        if kind == "bytes":
            buffers.append(bytes(raw))
        else:
            itemsize = np.dtype(kind).itemsize
            buffers.append(np.frombuffer(raw[:len(raw) // itemsize * itemsize], dtype=kind).copy())
    return [bytes(data[pos:]), *buffers]


def test_one_input(data: bytes) -> None:
    message = split(data)
    for decode in (wire.decode, wire.decode_call, wire.decode_reply):
        try:
            decode(message)
        except wire.WireError as exc:
            assert str(exc)
        except REBUILT as exc:
            if decode is not wire.decode_reply:
                raise
            assert hasattr(exc, "party")


def join(message: list) -> bytes:
    out = bytearray([len(message) - 1])
    for buf in message[1:]:
        raw = bytes(buf) if isinstance(buf, bytes) else buf.tobytes()
        kind = "bytes" if isinstance(buf, bytes) else buf.dtype.name
        out += bytes([DTYPES.index(kind), len(raw)]) + raw
    return bytes(out) + message[0]


def seeds() -> list[bytes]:
    arr = np.arange(6, dtype=np.uint64)
    return [join(m) for m in (
        wire.encode_call("getitem", (3, (slice(None, 2), Ellipsis), np.uint64(7)), {"public": arr}),
        wire.encode_call("serve", ("model-0", 4, 16, [28, 28, 1], 16, 256, None), {}),
        wire.encode_call("load_model", ("m", [{"kind": "conv2d", "name": "c", "stride": [1, 1]}]), {}),
        wire.encode_result({"shape": [1, 10], "frac_bits": 16, "profile": [b"x", 1.5, True]}),
        wire.encode_error(1, "add", KeyError("P1: no tensor with id 4")),
        wire.encode([np.float32(1.5), np.int8(-3), {"a": (1, 2)}, None]),
    )]


if __name__ == "__main__":
    run(test_one_input, seeds(), "wire")
