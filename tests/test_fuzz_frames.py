"""Fuzzing the frame decoder, hello parsing and the wire encoding (Hypothesis).

Whatever bytes arrive, read_frame either decodes a frame or raises a
ChannelError (or a subclass) with a message; wire.decode either decodes a
value or raises a WireError. Nothing else escapes, nothing hangs (every
example has a deadline), and a declared size is checked against the frame
limit before anything is allocated. tests/fuzz/ has atheris harnesses for
longer runs by hand.
"""

from __future__ import annotations

import json
import re
import socket
import struct
import tracemalloc

import numpy as np
import pytest
from fuzz._harness import (  # tests/fuzz: the atheris harness uses the same stream
    BytesStream,
    never_idle,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pysmpc.parties.channel import ChannelError, PeerTimeout
from pysmpc.parties.frames import HELLO_TAG, MAGIC, VERSION, read_frame, write_frame
from pysmpc.parties.party import P0
from pysmpc.parties.socket import accept_peer
from pysmpc.parties.streams import CERT_NAMES
from pysmpc.runtime import wire

# derandomize: the same examples on every run and machine, so CI is repeatable.
FUZZ = settings(max_examples=100, deadline=2000, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
FIXED = struct.Struct("!4sHHIQ")
LIMIT = 1 << 20  # max frame bytes in these tests


def encode_frame(payload, tag="t", seq=1, session="s") -> bytes:
    out = BytesStream()
    write_frame(out, tag, seq, session, payload, never_idle)
    return bytes(out.sent)


def decode(data: bytes, max_frame: int = LIMIT, chunk: int = 1 << 16):
    """read_frame on `data`: (header, payload), or the ChannelError it raised. Anything else fails the test."""
    try:
        return read_frame(BytesStream(data, chunk), max_frame, never_idle)
    except ChannelError as exc:
        assert str(exc), "a ChannelError must say what is wrong"
        return exc


def raw_frame(header, body: bytes = b"", hlen=None, blen=None) -> bytes:
    h = header if isinstance(header, bytes) else json.dumps(header).encode()
    return FIXED.pack(MAGIC, VERSION, 0, len(h) if hlen is None else hlen, len(body) if blen is None else blen) + h + body


# -- payloads ---------------------------------------------------------------------------------
WIRE_DTYPES = ["bool", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64"]
arrays = hnp.arrays(st.sampled_from(WIRE_DTYPES).map(np.dtype), hnp.array_shapes(min_dims=0, max_dims=3, min_side=0,
                                                                                    max_side=4))
leaves = st.one_of(arrays, st.binary(max_size=64))
payloads = st.one_of(st.none(), st.recursive(leaves, lambda kids: st.one_of(st.lists(kids, max_size=4),
                                                                            st.tuples(kids, kids)), max_leaves=8))


def assert_same(got, want):
    if isinstance(want, np.ndarray):
        assert isinstance(got, np.ndarray) and got.dtype == want.dtype and got.shape == want.shape
        assert got.tobytes() == want.tobytes()  # bytes: NaN == NaN
    elif isinstance(want, (list, tuple)):
        assert type(got) is type(want) and len(got) == len(want)
        for g, w in zip(got, want):
            assert_same(g, w)
    else:
        assert got == want


@FUZZ
@given(payloads, st.integers(1, 64))
def test_valid_frames_round_trip_in_any_read_sizes(payload, chunk):
    got = decode(encode_frame(payload), chunk=chunk)
    assert not isinstance(got, Exception), got
    header, data = got
    assert header["tag"] == "t" and header["seq"] == 1 and header["session"] == "s"
    assert_same(data, payload)


@FUZZ
@given(st.binary(max_size=512))
def test_random_bytes_are_a_channel_error(data):
    assert isinstance(decode(data), ChannelError)


@FUZZ
@given(st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1), st.binary(max_size=256))
def test_any_declared_sizes_after_a_valid_magic(hlen, blen, rest):
    got = decode(FIXED.pack(MAGIC, VERSION, 0, hlen, blen) + rest)
    if hlen + blen > LIMIT:
        assert isinstance(got, ChannelError) and "exceeds the limit" in str(got)


@FUZZ
@given(payloads, st.data())
def test_mutated_frames_decode_or_fail_cleanly(payload, data):
    frame = bytearray(encode_frame(payload))
    how = data.draw(st.sampled_from(["flip", "truncate", "hlen", "blen", "splice"]))
    if how == "flip":
        for pos in data.draw(st.lists(st.integers(0, len(frame) - 1), min_size=1, max_size=8)):
            frame[pos] ^= 1 << data.draw(st.integers(0, 7))
    elif how == "truncate":
        frame = frame[:data.draw(st.integers(0, len(frame) - 1))]
    elif how == "hlen":
        frame[8:12] = struct.pack("!I", data.draw(st.integers(0, 2**32 - 1)))
    elif how == "blen":
        frame[12:20] = struct.pack("!Q", data.draw(st.integers(0, 2**64 - 1)))
    else:
        at = data.draw(st.integers(0, len(frame)))
        frame[at:at + data.draw(st.integers(0, 16))] = data.draw(st.binary(max_size=32))
    decode(bytes(frame))


# Headers that are valid JSON but anything else: wrong keys, types, dtypes, shapes, nesting.
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=False),
                         st.text(max_size=8))
json_values = st.recursive(json_scalars, lambda kids: st.one_of(st.lists(kids, max_size=4),
                                                               st.dictionaries(st.text(max_size=4), kids, max_size=3)),
                           max_leaves=12)
dims = st.one_of(st.integers(0, 8), st.integers(-3, 2**70), st.booleans(), st.just(2**64), st.text(max_size=2))
buffer_descr = st.one_of(
    st.tuples(st.sampled_from([np.dtype(t).str for t in WIRE_DTYPES] + ["bytes", "|O", "<c16", "V8", "<U3", ""]),
              st.lists(dims, max_size=4)).map(list),
    json_values)
layouts = st.recursive(
    st.one_of(st.none(), st.builds(lambda k, v: {k: v}, st.sampled_from(["a", "b", "l", "t", "z"]),
                                   st.one_of(st.integers(-1, 4), st.booleans(), st.none()))),
    lambda kids: st.builds(lambda k, v: {k: v}, st.sampled_from(["l", "t", "a"]), st.lists(kids, max_size=3)),
    max_leaves=20)


@FUZZ
@given(st.fixed_dictionaries({"tag": st.one_of(st.text(max_size=6), json_values),
                              "seq": st.one_of(st.integers(0, 5), json_values),
                              "session": st.one_of(st.just("s"), json_values),
                              "layout": st.one_of(layouts, json_values),
                              "buffers": st.one_of(st.lists(buffer_descr, max_size=4), json_values)},
                             optional={"extra": json_values}),
       st.binary(max_size=256), st.booleans())
def test_malformed_headers_are_a_channel_error(header, body, fit_body):
    if fit_body and isinstance(header.get("buffers"), list):
        # Give the body the size the description claims, so decoding gets past the size check.
        try:
            size = sum((1 if d[0] == "bytes" else np.dtype(d[0]).itemsize) * int(np.prod(d[1], dtype=object))
                       for d in header["buffers"])
            if 0 <= size <= 4096:
                body = (body * (size // max(len(body), 1) + 1))[:size] if body else bytes(size)
        except Exception:  # noqa: BLE001 - a description the decoder must refuse anyway
            pass
    got = decode(raw_frame(header, body))
    if not isinstance(got, Exception):
        assert_shape_matches(got[1])


def assert_shape_matches(payload):
    """A decoded payload is built only of arrays of whitelisted dtypes, bytes, lists, tuples and None."""
    if isinstance(payload, np.ndarray):
        assert payload.dtype.name in WIRE_DTYPES
    elif isinstance(payload, (list, tuple)):
        for p in payload:
            assert_shape_matches(p)
    else:
        assert payload is None or isinstance(payload, bytes)


# -- regressions and limits ----------------------------------------------------------------------
def test_a_declared_terabyte_is_refused_without_allocating():
    tracemalloc.start()
    try:
        got = decode(FIXED.pack(MAGIC, VERSION, 0, 64, 1 << 40) + b"{", max_frame=1 << 30)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert isinstance(got, ChannelError)
    assert "frame of 1099511627840 bytes exceeds the limit of 1073741824 bytes" in str(got)
    assert peak < 1 << 20, f"read_frame allocated {peak} bytes for a frame it refused"


def test_buffers_are_allocated_only_as_their_bytes_arrive():
    # 64 buffers of 1 MiB declared, within the limit, but only 100 body bytes sent.
    header = {"tag": "t", "seq": 1, "session": "s", "layout": {"l": [{"a": i} for i in range(64)]},
              "buffers": [["|u1", [1 << 20]]] * 64}
    frame = raw_frame(header, b"\x00" * 100, blen=64 << 20)
    tracemalloc.start()
    try:
        got = decode(frame, max_frame=1 << 30)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert isinstance(got, ChannelError) and "in the middle of a frame" in str(got)
    assert peak < 3 << 20, f"read_frame allocated {peak} bytes before the bytes arrived"


@pytest.mark.parametrize("header, message", [
    (b"[" * 100_000 + b"]" * 100_000, "not valid JSON"),  # was a RecursionError
    ({"tag": "t", "seq": 1, "session": "s", "layout": {"a": 0}, "buffers": [["<u8", [0, 2**70]]]},
     "names more than 2\\*\\*48 elements"),  # was numpy's ValueError
    ({"tag": "t", "seq": 1, "session": "s", "layout": {"a": 0}, "buffers": [["<u8", [2**40, 2**40, 0]]]},
     "names more than"),
    ({"tag": "t", "seq": 1, "session": "s", "layout": {"a": 0}, "buffers": [["|O", [1]]]}, "carries dtype '\\|O'"),
    ({"tag": "t", "seq": 1, "session": "s", "layout": {"b": 0}, "buffers": [["<u8", [1]]]}, "wrong kind"),
    ({"tag": "t", "seq": 1, "session": "s", "layout": {"a": 1}, "buffers": [["<u8", [1]]]}, "malformed frame layout"),
    ({"tag": "t", "seq": 1, "session": "s", "layout": None, "buffers": [["<u8", [2]]]}, "describe 16 bytes"),
], ids=["deep-json", "empty-but-huge", "empty-but-huge-3d", "object-dtype", "kind", "index", "size"])
def test_malformed_frames_name_the_problem(header, message):
    body = b"\x00" * 8 if not isinstance(header, bytes) and header["buffers"][0][1] == [1] else b""
    got = decode(raw_frame(header, body))
    assert isinstance(got, ChannelError)
    assert re.search(message, str(got)), str(got)


# -- hellos on a real socket -------------------------------------------------------------------------
_LISTENER: list = []


@pytest.fixture(scope="module", autouse=True)
def _close_listener():
    yield
    while _LISTENER:
        _LISTENER.pop().close()


def _tcp_pair() -> tuple[socket.socket, socket.socket]:
    """Two ends of a loopback TCP connection (accept_peer sets TCP options a socketpair lacks)."""
    if not _LISTENER:
        _LISTENER.append(socket.create_server(("127.0.0.1", 0)))
    theirs = socket.create_connection(_LISTENER[0].getsockname()[:2])
    ours, _ = _LISTENER[0].accept()
    return ours, theirs


def _accept(data: bytes):
    """accept_peer (as P0) on a socket whose peer sent `data` and closed; its result or ChannelError."""
    ours, theirs = _tcp_pair()
    try:
        theirs.sendall(data)
        theirs.shutdown(socket.SHUT_WR)
        try:
            return accept_peer(ours, P0, timeout=2.0)
        except ChannelError as exc:
            return exc
    finally:
        theirs.close()


def _hello_frame(fields) -> bytes:
    payload = fields if isinstance(fields, bytes) else json.dumps(fields).encode()
    return encode_frame(payload, tag=HELLO_TAG, seq=0, session="s")


@FUZZ
@given(st.one_of(st.fixed_dictionaries({"party": st.one_of(st.integers(-2, 5), json_values),
                                        "session": st.one_of(st.text(max_size=8), json_values)},
                                       optional={"query": json_values, "version": json_values}),
                 json_values, st.binary(max_size=64)))
def test_any_hello_is_accepted_from_a_known_party_or_refused(fields):
    got = _accept(_hello_frame(fields))
    if isinstance(got, ChannelError):
        assert str(got)
        return
    peer, hello, stream = got
    stream.close()
    assert type(peer) is int and peer in CERT_NAMES and peer != P0 and isinstance(hello["session"], str)


@pytest.mark.parametrize("party", [[1], {"a": 1}, True, 1.0, "1"])
def test_hello_with_a_party_that_is_not_an_int_is_refused(party):
    got = _accept(_hello_frame({"party": party, "session": "s"}))  # [1] was a TypeError (unhashable)
    assert isinstance(got, ChannelError) and "hello names party" in str(got)


def test_a_stalled_hello_times_out():
    ours, theirs = _tcp_pair()
    try:
        theirs.sendall(_hello_frame({"party": 1, "session": "s"})[:10])
        with pytest.raises(PeerTimeout, match="timed out waiting for a hello"):
            accept_peer(ours, P0, timeout=0.5)
    finally:
        theirs.close()


# -- the wire encoding of op calls -------------------------------------------------------------------
scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**64), st.floats(allow_nan=False),
                    st.text(max_size=8),
                    st.builds(np.uint64, st.integers(0, 2**64 - 1)), st.builds(np.int32, st.integers(-2**31, 2**31 - 1)),
                    st.builds(np.float32, st.floats(width=32, allow_nan=False)), st.just(Ellipsis),
                    st.builds(slice, st.one_of(st.none(), st.integers(-9, 9)), st.one_of(st.none(), st.integers(-9, 9)),
                              st.one_of(st.none(), st.integers(1, 3))))
values = st.recursive(st.one_of(scalars, arrays, st.binary(max_size=16)),
                      lambda kids: st.one_of(st.lists(kids, max_size=3), st.tuples(kids),
                                             st.dictionaries(st.one_of(st.text(max_size=4), st.integers(-5, 5)),
                                                             kids, max_size=3)),
                      max_leaves=10)


def wire_decode(message):
    try:
        return wire.decode(message)
    except wire.WireError as exc:
        assert str(exc)
        return exc


def deliver(message: list) -> list:
    """What a frame hands the receiver: bytes for bytes, fresh arrays for arrays."""
    return [bytes(m) if isinstance(m, (bytes, bytearray)) else np.array(m) for m in message]


def assert_same_value(got, want):
    if isinstance(want, np.ndarray):
        assert_same(got, want)
    elif isinstance(want, (list, tuple)):
        assert type(got) is type(want) and len(got) == len(want)
        for g, w in zip(got, want):
            assert_same_value(g, w)
    elif isinstance(want, dict):
        assert isinstance(got, dict) and list(got) == [int(k) if isinstance(k, int) else k for k in want]
        for g, w in zip(got.values(), want.values()):
            assert_same_value(g, w)
    else:
        assert got == want and type(got) is type(want), (got, want)


@FUZZ
@given(values)
def test_wire_round_trips_any_value(value):
    assert_same_value(wire.decode(deliver(wire.encode(value))), value)


@FUZZ
@given(values, st.data())
def test_wire_mutated_messages_decode_or_raise_wire_error(value, data):
    message = deliver(wire.encode(value))
    doc = bytearray(message[0])
    for pos in data.draw(st.lists(st.integers(0, len(doc) - 1), min_size=1, max_size=4)):
        doc[pos] = data.draw(st.integers(0, 255))
    buffers = message[1:]
    if buffers and data.draw(st.booleans()):
        buffers = data.draw(st.permutations(buffers))[: data.draw(st.integers(0, len(buffers)))]
    wire_decode([bytes(doc), *buffers])


tagged = st.recursive(
    json_values,
    lambda kids: st.builds(lambda k, v: {k: v},
                           st.sampled_from(["list", "tuple", "dict", "slice", "ellipsis", "np", "array", "bytes", "x"]),
                           st.one_of(kids, st.lists(kids, max_size=3),
                                     st.tuples(st.sampled_from(["<u8", "<i4", "<f4", "<f8", "|b1", "|O", "<c8"])
                                               | json_values,
                                               st.one_of(st.text(max_size=5), st.integers(-2**70, 2**70),
                                                         st.floats(), st.booleans())).map(list))),
    max_leaves=15)


@FUZZ
@given(tagged, st.lists(st.one_of(arrays, st.binary(max_size=8)), max_size=3))
def test_wire_any_json_decodes_or_raises_wire_error(doc, buffers):
    message = [json.dumps(doc).encode(), *buffers]
    wire_decode(message)
    for fn in (wire.decode_call, wire.decode_reply):
        try:
            fn(message)
        except wire.WireError:
            pass
        except (*set(wire._ERROR_TYPES.values()), wire.RemoteError) as exc:  # a reply carrying a remote error
            assert fn is wire.decode_reply and hasattr(exc, "party"), (doc, exc)


@FUZZ
@given(st.binary(max_size=256), st.lists(st.one_of(arrays, st.binary(max_size=8), st.integers()), max_size=2))
def test_wire_random_bytes_and_buffers(doc, buffers):
    wire_decode([doc, *buffers])
    wire_decode(doc)


@pytest.mark.parametrize("doc, message", [
    (b"[" * 100_000, "not valid JSON"),  # was a RecursionError
    (b'{"np": ["<f8", 1' + b"0" * 400 + b"]}", "bad numpy scalar"),  # was an OverflowError
    (b'{"np": ["<f4", 1e300]}', "out of range for float32"),  # was a silent inf
    (b'{"np": [{}, null]}', "unknown tagged value 'np'"),  # was a TypeError (unhashable dict); found by atheris
], ids=["deep-json", "huge-int-float", "float32-overflow", "np-dict-dtype"])
def test_wire_regressions(doc, message):
    with pytest.raises(wire.WireError, match=message):
        wire.decode([doc])


def test_zero_dim_arrays_keep_their_shape():
    # np.ascontiguousarray made a 0-d array (1,) on the way out; found by the round-trip property.
    header, payload = decode(encode_frame([np.array(7, np.uint64), np.array(True)]))
    assert payload[0].shape == () and payload[0] == 7 and payload[1].shape == () and payload[1]
