"""Length-prefixed frames: the wire format of every message between endpoints.

A frame is

    fixed header  "!4sHHIQ": magic b"PSMC", version, flags (0),
                  JSON header length, body length
    JSON header   {"tag", "seq", "session", "layout", "buffers"}
    body          the raw buffers of the payload's arrays and bytes, in order

`layout` rebuilds the payload (an array, bytes, or nested lists/tuples of
those) from the buffers; `buffers` lists each buffer's dtype and shape, so
the receiver allocates numpy arrays and reads straight into them. Nothing
from the network is ever unpickled: dtypes come from a short whitelist, and
every size is checked before anything is allocated.
"""

from __future__ import annotations

import json
import math
import struct
from typing import Callable

import numpy as np

from pysmpc.parties.channel import ChannelError, PeerDisconnected

__all__ = ["ABORT_TAG", "DEFAULT_MAX_FRAME", "FRAME_HEADER_ROOM", "FrameTooLarge", "HEARTBEAT_TAG", "HELLO_TAG",
           "MAGIC", "VERSION", "read_frame", "write_frame"]

MAGIC = b"PSMC"
VERSION = 1
_FIXED = struct.Struct("!4sHHIQ")
DEFAULT_MAX_FRAME = 1 << 30  # 1 GiB: header + body of one frame
_MAX_HEADER = 1 << 20
# Room that covers a frame's fixed and JSON headers around a payload of a few arrays.
FRAME_HEADER_ROOM = 1 << 16
_MAX_DEPTH = 16
_MAX_NDIM = 32
_MAX_ELEMENTS = 1 << 48  # no array, even an empty one, spans more (nonzero) elements

# Tags that the channel itself uses; protocol tags never start with "ctl:".
HELLO_TAG = "hello"
ABORT_TAG = "ctl:abort"
HEARTBEAT_TAG = "ctl:alive"  # a worker running an op tells its client it lives; protocol receives skip it

_DTYPES = {
    np.dtype(t).str: np.dtype(t)
    for t in ("bool", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64")
}
_BYTES = "bytes"
_HEADER_ENCODER = json.JSONEncoder(separators=(",", ":"))  # json.dumps would build one per frame


def _wire_array(a: np.ndarray) -> np.ndarray:
    if a.dtype.str not in _DTYPES:
        swapped = a.dtype.newbyteorder("<")
        if swapped.str not in _DTYPES:
            raise TypeError(f"cannot send an array of dtype {a.dtype}: allowed are {sorted(_DTYPES)}")
        a = a.astype(swapped)
    # Not np.ascontiguousarray: it turns a 0-d array into shape (1,).
    return a if a.flags.c_contiguous else a.copy(order="C")


def _flatten(data, buffers: list, descr: list, depth: int = 0):
    """Split a payload into buffers; return the layout that rebuilds it."""
    if depth > _MAX_DEPTH:
        raise TypeError("payload nested too deeply")
    if data is None:
        return None
    if isinstance(data, np.ndarray):
        a = _wire_array(data)
        buffers.append(memoryview(a.reshape(-1).view(np.uint8)))
        descr.append([a.dtype.str, list(a.shape)])
        return {"a": len(descr) - 1}
    if isinstance(data, (bytes, bytearray, memoryview)):
        view = memoryview(data).cast("B")
        buffers.append(view)
        descr.append([_BYTES, [len(view)]])
        return {"b": len(descr) - 1}
    if isinstance(data, (list, tuple)):
        key = "l" if isinstance(data, list) else "t"
        return {key: [_flatten(d, buffers, descr, depth + 1) for d in data]}
    raise TypeError(f"cannot send a {type(data).__name__}: channels carry numpy arrays and bytes")


def _unflatten(layout, parts: list, depth: int = 0):
    if depth > _MAX_DEPTH:
        raise ChannelError("frame layout nested too deeply")
    if layout is None:
        return None
    if isinstance(layout, dict) and len(layout) == 1:
        (key, value), = layout.items()
        if key in ("a", "b") and isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(parts):
            part = parts[value]
            if (key == "b") != isinstance(part, bytes):
                raise ChannelError(f"frame layout refers to buffer {value} with the wrong kind")
            return part
        if key in ("l", "t") and isinstance(value, list):
            items = [_unflatten(v, parts, depth + 1) for v in value]
            return items if key == "l" else tuple(items)
    raise ChannelError(f"malformed frame layout {str(layout)[:80]!r}")


class FrameTooLarge(ChannelError):
    """A frame to send is over the frame limit; nothing was sent."""


def write_frame(stream, tag: str, seq: int, session: str, data, idle: Callable[[], None],
                max_frame: int | None = None, on_block: Callable[[], None] | None = None) -> int:
    """Send one frame; return the body size (the payload's bytes).

    With `max_frame`, a frame larger than that (header and body, as the
    receiver counts) raises FrameTooLarge before anything is sent.
    on_block() is called before waiting for the socket to take the rest.
    """
    buffers: list = []
    descr: list = []
    layout = _flatten(data, buffers, descr)
    header = _HEADER_ENCODER.encode({"tag": tag, "seq": seq, "session": session, "layout": layout,
                                     "buffers": descr}).encode()
    body = sum(len(b) for b in buffers)
    if max_frame is not None and len(header) + body > max_frame:
        raise FrameTooLarge(f"the '{tag}' message makes a frame of {len(header) + body} bytes, over the frame "
                            f"limit of {max_frame} bytes (max_frame_bytes)")
    stream.send_views([memoryview(_FIXED.pack(MAGIC, VERSION, 0, len(header), body) + header), *buffers], idle,
                      on_block)
    return body


def _read_exact(stream, view: memoryview, idle, what: str, at_start: bool = False, first_idle=None) -> None:
    got = 0
    while got < len(view):
        try:
            n = stream.recv_into(view[got:])
        except TimeoutError:
            (first_idle if at_start and got == 0 and first_idle is not None else idle)()
            continue
        except OSError as exc:  # reset by the peer, or closed by us (EBADF)
            raise PeerDisconnected(f"connection lost ({exc})") from None
        if n == 0:
            if at_start and got == 0:
                raise PeerDisconnected("connection closed")
            if isinstance(what, tuple):  # formatted only when needed: this is the hot path
                what = what[0].format(*what[1:])
            raise PeerDisconnected(f"connection closed in the middle of a frame ({what})")
        got += n


def read_frame(stream, max_frame: int, idle: Callable[[], None],
               first_idle: Callable[[], None] | None = None) -> tuple[dict, object]:
    """Read one frame: (header, payload). Raises ChannelError for anything malformed.

    idle() is called whenever a read waited a slice in vain; until the
    frame's first byte arrives, first_idle() instead, if given (a caller
    may give up then without losing its place in the stream).

    Sizes are checked against `max_frame` before anything is allocated, and
    each buffer is allocated only when its turn to be read comes, so a frame
    that declares more than it sends costs at most the bytes it sent plus
    one buffer (np.empty: pages are committed as the bytes arrive).
    """
    fixed = bytearray(_FIXED.size)
    _read_exact(stream, memoryview(fixed), idle, "fixed header", at_start=True, first_idle=first_idle)
    magic, version, flags, hlen, blen = _FIXED.unpack(fixed)
    if magic != MAGIC:
        raise ChannelError(f"bad magic {bytes(magic)!r} (expected {MAGIC!r}): "
                           "the peer does not speak the pysmpc frame protocol")
    if version != VERSION:
        raise ChannelError(f"frame version {version}, this side speaks version {VERSION}")
    if hlen + blen > max_frame:
        raise ChannelError(f"frame of {hlen + blen} bytes exceeds the limit of {max_frame} bytes")
    if hlen > _MAX_HEADER:
        raise ChannelError(f"frame header of {hlen} bytes exceeds the limit of {_MAX_HEADER} bytes")
    raw = bytearray(hlen)
    _read_exact(stream, memoryview(raw), idle, "JSON header")
    try:
        header = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # RecursionError: "[[[[..." nested too deep
        raise ChannelError(f"frame header is not valid JSON: {str(exc)[:200]}") from None
    parts = []
    for kind, shape in _plan_buffers(header, blen):
        part = np.empty(shape, dtype=np.uint8 if kind == _BYTES else _DTYPES[kind])
        _read_exact(stream, memoryview(part.reshape(-1).view(np.uint8)), idle, ("buffer for '{}'", header["tag"]))
        parts.append(part.tobytes() if kind == _BYTES else part)
    return header, _unflatten(header["layout"], parts)


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _plan_buffers(header, blen: int) -> list:
    """Check a decoded header; return (kind, shape) of each buffer its body fills."""
    if not isinstance(header, dict) or set(header) != {"tag", "seq", "session", "layout", "buffers"}:
        raise ChannelError(f"malformed frame header {str(header)[:120]!r}")
    if not isinstance(header["tag"], str) or not isinstance(header["session"], str) or not _is_int(header["seq"]):
        raise ChannelError(f"malformed frame header {str(header)[:120]!r}")
    descr = header["buffers"]
    if not isinstance(descr, list):
        raise ChannelError("malformed frame header: 'buffers' is not a list")
    plan, total = [], 0
    for d in descr:
        if not (isinstance(d, list) and len(d) == 2 and isinstance(d[0], str) and isinstance(d[1], list)
                and len(d[1]) <= _MAX_NDIM and all(_is_int(s) and s >= 0 for s in d[1])):
            raise ChannelError(f"malformed buffer description {str(d)[:80]!r} in frame '{header['tag']}'")
        kind, shape = d
        if kind == _BYTES:
            if len(shape) != 1:
                raise ChannelError(f"malformed buffer description {d!r}")
        elif kind not in _DTYPES:
            raise ChannelError(f"frame '{header['tag']}' carries dtype {kind!r}; allowed are {sorted(_DTYPES)}")
        # An empty array may still name absurd sizes, e.g. (0, 2**70), which numpy cannot build.
        if math.prod(s for s in shape if s) > _MAX_ELEMENTS:
            raise ChannelError(f"frame '{header['tag']}': buffer of shape {str(shape)[:80]} names more than "
                               f"2**48 elements")
        itemsize = 1 if kind == _BYTES else _DTYPES[kind].itemsize
        total += itemsize * math.prod(shape)
        if total > blen:
            break
        plan.append((kind, tuple(shape)))
    if total != blen:
        raise ChannelError(f"frame '{header['tag']}': buffers describe {total} bytes but the body has {blen}")
    return plan
