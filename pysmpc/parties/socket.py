"""TCP transport: one connection per pair of endpoints, length-prefixed frames.

Each pair among P0, P1, P2 and the client has one TCP connection (TLS with
per-party certificates when configured). A frame is

    fixed header  "!4sHHIQ": magic b"PSMC", version, flags (0),
                  JSON header length, body length
    JSON header   {"tag", "seq", "session", "layout", "buffers"}
    body          the raw buffers of the payload's arrays and bytes, in order

`layout` rebuilds the payload (an array, bytes, or nested lists/tuples of
those) from the buffers; `buffers` lists each buffer's dtype and shape, so
the receiver allocates numpy arrays and reads straight into them. Nothing
from the network is ever unpickled: dtypes come from a short whitelist.

Arrays leave by `socket.sendmsg` of memoryviews over their own memory (no
copy for C-contiguous arrays). A thread that waits for a message reads its
socket itself; while a send waits for the socket, a drain thread per
connection reads what arrives meanwhile, so two parties that send each other
large arrays at the same time never deadlock on full socket buffers.

Each direction of a connection numbers its frames from 0; the first frame
each way is a "hello" naming the endpoint and the session. A frame out of
sequence, from another session, over the size limit or with a bad magic is
a `ChannelError`; a closed connection is `PeerDisconnected`; a receive that
waits longer than the channel's timeout is `PeerTimeout`.
"""

from __future__ import annotations

import collections
import ipaddress
import json
import logging
import math
import os
import select
import socket
import ssl
import struct
import threading
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np

from pysmpc.parties.channel import Channel, ChannelError, PeerDisconnected, PeerTimeout
from pysmpc.parties.party import CLIENT, DEALER, P0, P1

__all__ = [
    "SocketChannel",
    "TlsConfig",
    "CleartextError",
    "CleartextWarning",
    "CERT_NAMES",
    "CERT_FILES",
    "OWNER_CERT_PREFIX",
    "DEFAULT_MAX_FRAME",
    "FrameTooLarge",
    "FRAME_HEADER_ROOM",
    "HELLO_TAG",
    "ABORT_TAG",
    "HEARTBEAT_TAG",
    "MAGIC",
    "VERSION",
    "accept_peer",
    "connect_peer",
    "is_loopback",
    "parse_hosts",
    "read_frame",
    "reply_hello",
    "check_cleartext",
    "write_frame",
]

log = logging.getLogger("pysmpc.socket")

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
# A blocking socket call waits at most this long before it checks whether the
# connection was closed or a deadline passed, then waits again.
_SLICE = 0.25
_SEND_CHUNK = 1 << 20  # TLS: encrypt and send large buffers in pieces of this size
_IOV_MAX = 512
_READ_BUFFER = 1 << 16  # plain streams read ahead this much
_DRAIN_POLL = 0.01  # how often a drain thread looks whether its send is done

# The common name each endpoint's certificate must carry, and its file stem in
# the cluster's TLS directory.
CERT_NAMES = {P0: "P0", P1: "P1", DEALER: "P2", CLIENT: "client"}
CERT_FILES = {P0: "p0", P1: "p1", DEALER: "p2", CLIENT: "client"}
# A data owner's certificate is named "owner:NAME" (files owner-NAME.pem/.key):
# the workers count each owner once per round by that name, and the client's
# certificate (the aggregator's) cannot pass for an owner.
OWNER_CERT_PREFIX = "owner:"

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


class CleartextWarning(UserWarning):
    """Parties talk over a non-loopback network without TLS (forced with allow_cleartext)."""


class CleartextError(ValueError):
    """A connection off loopback would go without TLS, and cleartext was not forced."""


def _name(index: int) -> str:
    return f"party {index}" if index != CLIENT else "the client"


# -- addresses -------------------------------------------------------------------
def parse_hosts(hosts) -> list[tuple[str, int]]:
    """Parse "h0:p0,h1:p1,h2:p2" (or a sequence of "host:port") into three (host, port)."""
    if isinstance(hosts, str):
        hosts = [h for h in hosts.split(",") if h.strip()]
    out = []
    for entry in hosts:
        if isinstance(entry, (tuple, list)):
            host, port = entry
        else:
            host, sep, port = str(entry).strip().rpartition(":")
            if not sep or not host:
                raise ValueError(f"host {entry!r} is not of the form host:port")
            host = host.strip("[]")  # "[::1]:4000"
        try:
            port = int(port)
        except ValueError:
            raise ValueError(f"host {entry!r} has a bad port") from None
        if not 0 <= port < 65536:
            raise ValueError(f"host {entry!r}: port out of range")
        out.append((host, port))
    if len(out) != 3:
        raise ValueError(f"need exactly three hosts (P0, P1, P2), got {len(out)}: {hosts!r}")
    return out


def is_loopback(host: str) -> bool:
    """True if every address `host` resolves to is a loopback address."""
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return False
    addrs = {info[4][0].split("%")[0] for info in infos}
    return bool(addrs) and all(ipaddress.ip_address(a).is_loopback for a in addrs)


def _fmt_host(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def check_cleartext(hosts: list[tuple[str, int]], tls, who: str, *, allow_cleartext: bool = False) -> bool:
    """Refuse cleartext off loopback unless forced; when forced, warn loudly. True if traffic is exposed.

    `tls` is the TLS configuration (or its directory); None means cleartext.
    Without TLS, shares, PRG seeds and dealer corrections cross the network
    readable and forgeable by anyone on the path: an eavesdropper who sees
    both input shares, or the seeds P2 shares with P0 and P1, learns the
    secrets, which breaks the one-corruption assumption without corrupting
    any party. Loopback stays open without TLS (tests, demos, one machine).
    """
    if tls is not None:
        return False
    exposed = [f"{h}:{p}" for h, p in hosts if not is_loopback(h)]
    if not exposed:
        return False
    if not allow_cleartext:
        raise CleartextError(
            f"{who}: refusing to connect without TLS: {', '.join(exposed)} "
            f"{'is' if len(exposed) == 1 else 'are'} not loopback, so shares, PRG seeds and dealer material "
            "would cross the network unencrypted and unauthenticated. Make certificates with "
            f"`pysmpc certs DIR --hosts {','.join(_fmt_host(h, p) for h, p in hosts)}`, copy them to the machines "
            "(the command says which file goes where) and pass tls_dir=DIR (--tls-dir DIR); or, on a network "
            "you trust with the secrets, force cleartext with allow_cleartext=True (--allow-cleartext).")
    msg = (f"{who}: TRAFFIC IS IN THE CLEAR (forced with allow_cleartext). Hosts {', '.join(exposed)} are not "
           "loopback and no TLS directory is configured: shares, seeds and dealer material cross the network "
           "unencrypted and unauthenticated. Make certificates with `pysmpc certs` and pass tls_dir / --tls-dir.")
    log.warning(msg)
    warnings.warn(msg, CleartextWarning, stacklevel=3)
    return True


# -- TLS --------------------------------------------------------------------------
class TlsConfig:
    """Mutual TLS for one endpoint: its key and certificate and the cluster CA.

    `directory` holds ca.pem and, per endpoint, p0.pem/p0.key, p1..., p2...,
    client.pem/client.key. Both sides of every connection present a
    certificate signed by the CA; each side then checks that the other's
    common name is the endpoint it expects (CERT_NAMES), so a valid
    certificate of P1 cannot pass for P0.
    """

    def __init__(self, directory, me: int, *, stem: str | None = None):
        directory = Path(directory)
        stem = stem or CERT_FILES[me]
        ca, cert, key = directory / "ca.pem", directory / f"{stem}.pem", directory / f"{stem}.key"
        missing = [f.name for f in (ca, cert, key) if not f.is_file()]
        if missing:
            raise FileNotFoundError(f"TLS directory {directory} lacks {', '.join(missing)}: {CERT_NAMES[me]} needs "
                                    f"ca.pem, {stem}.pem and {stem}.key there (make them with `pysmpc certs DIR`)")
        if key.stat().st_mode & 0o077:
            log.warning("private key %s is readable by other users (mode %o): chmod 600 it", key,
                        key.stat().st_mode & 0o777)
        self.directory = directory
        self.me = me
        self.server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        for ctx in (self.server, self.client):
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            try:
                ctx.load_cert_chain(cert, key)
                ctx.load_verify_locations(ca)
            except ssl.SSLError as exc:
                raise ValueError(f"cannot load the TLS files {cert}, {key} and {ca}: {exc.reason or exc} "
                                 "(a key that does not match its certificate, or a file that is not PEM)") from None
            ctx.verify_mode = ssl.CERT_REQUIRED
        # Peers are identified by the common name checked after the handshake,
        # not by host name: parties may sit behind any address.
        self.client.check_hostname = False


# -- streams: a socket, plain or TLS, read by one thread and written by another --------
class _PlainStream:
    tls = False

    def __init__(self, sock: socket.socket):
        self.sock = sock
        sock.settimeout(_SLICE)  # the fd is non-blocking from here on: _send_now relies on it
        # A small frame arrives whole in one recv: its fixed header, JSON
        # header and body are then served from here, one syscall for three.
        self._buffer = memoryview(bytearray(_READ_BUFFER))
        self._start = self._end = 0
        self.bytes_in = 0  # from the socket: a reader waiting mid-frame tells a slow peer from a stalled one

    def wait_readable(self, timeout: float) -> bool:
        """Whether bytes can be read now or arrive within `timeout` seconds."""
        return self._end > self._start or _poll_in(self.sock, timeout)

    def recv_into(self, view: memoryview) -> int:
        """Read some bytes into `view`; 0 at end of stream; TimeoutError if none came in a slice."""
        if self._end == self._start:
            if len(view) >= len(self._buffer):
                n = self.sock.recv_into(view)
                self.bytes_in += n
                return n
            self._start, self._end = 0, self.sock.recv_into(self._buffer)
            self.bytes_in += self._end
        n = min(len(view), self._end - self._start)
        view[:n] = self._buffer[self._start:self._start + n]
        self._start += n
        return n

    def send_views(self, views: list, idle: Callable[[], None], on_block: Callable[[], None] | None = None) -> None:
        """Send all of `views`; call on_block() first if the socket cannot take them all at once."""
        views = [v for v in views if len(v)]
        if on_block is not None:
            _advance(views, _send_now(self.sock, lambda fd: os.writev(fd, views[:_IOV_MAX])))
            if views:
                on_block()
        while views:
            try:
                n = self.sock.sendmsg(views[:_IOV_MAX])
            except TimeoutError:  # nothing was sent: safe to retry
                idle()
                continue
            _advance(views, n)

    def peer_common_name(self) -> str | None:
        return None

    def close(self) -> None:
        _close_socket(self.sock)


class _TlsStream:
    """TLS over a socket through memory BIOs.

    An SSL object must not be used by two threads at once, but the reader
    thread blocks in recv while senders write: so socket I/O happens outside
    the SSL object, and only the short in-memory encrypt/decrypt steps hold
    `_ssl_lock`. Encrypted records leave under `_send_lock` in the order
    they were produced.
    """

    tls = True

    def __init__(self, sock: socket.socket, context: ssl.SSLContext, server_side: bool):
        self.sock = sock
        sock.settimeout(_SLICE)
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._obj = context.wrap_bio(self._in, self._out, server_side=server_side)
        self._ssl_lock = threading.Lock()
        self._send_lock = threading.Lock()
        self.bytes_in = 0  # encrypted, from the socket (see _PlainStream)

    def wait_readable(self, timeout: float) -> bool:
        """Whether TLS bytes are buffered here or arrive within `timeout` seconds."""
        with self._ssl_lock:
            if self._obj.pending() or self._in.pending:
                return True
        return _poll_in(self.sock, timeout)

    def handshake(self, idle: Callable[[], None]) -> None:
        while True:
            try:
                with self._ssl_lock:
                    self._obj.do_handshake()
                self._flush(idle)
                return
            except ssl.SSLWantReadError:
                self._flush(idle)
                self._fill(idle)
            except ssl.SSLError as exc:
                self._flush_quietly()
                raise ChannelError(f"TLS handshake failed: {exc.reason or exc}") from None

    def _fill(self, idle) -> None:
        while True:
            try:
                data = self.sock.recv(1 << 18)
            except TimeoutError:
                idle()
                continue
            if not data:
                raise PeerDisconnected("connection closed during the TLS handshake (the peer refused our "
                                       "certificate, or it runs without TLS)")
            with self._ssl_lock:
                self._in.write(data)
            return

    def _flush(self, idle) -> None:
        with self._send_lock:
            with self._ssl_lock:
                data = self._out.read()
            if data:
                _send_all(self.sock, memoryview(data), idle)

    def _flush_quietly(self) -> None:
        try:
            self._flush(lambda: None)
        except OSError:
            pass

    def recv_into(self, view: memoryview) -> int:
        while True:
            with self._ssl_lock:
                try:
                    return self._obj.read(len(view), view)
                except ssl.SSLWantReadError:
                    pass
                except ssl.SSLZeroReturnError:
                    return 0
                except ssl.SSLError as exc:
                    raise ChannelError(f"TLS error: {exc.reason or exc}") from None
            data = self.sock.recv(1 << 18)  # TimeoutError propagates: the caller decides
            if not data:
                return 0
            self.bytes_in += len(data)
            with self._ssl_lock:
                self._in.write(data)

    def send_views(self, views: list, idle: Callable[[], None], on_block: Callable[[], None] | None = None) -> None:
        """Send all of `views`, encrypted; call on_block() first if the socket cannot take a record at once."""
        with self._send_lock:
            for view in views:
                for start in range(0, len(view), _SEND_CHUNK):
                    with self._ssl_lock:
                        self._obj.write(view[start:start + _SEND_CHUNK])
                        data = memoryview(self._out.read())
                    if on_block is not None:
                        data = data[_send_now(self.sock, lambda fd: os.write(fd, data)):]
                        if len(data):
                            on_block()
                            on_block = None
                    _send_all(self.sock, data, idle)

    def peer_common_name(self) -> str | None:
        cert = self._obj.getpeercert()
        for rdn in (cert or {}).get("subject", ()):
            for key, value in rdn:
                if key == "commonName":
                    return value
        return None

    def close(self) -> None:
        _close_socket(self.sock)


def _poll_in(sock: socket.socket, timeout: float) -> bool:
    """Whether `sock` is readable within `timeout` s (POLLHUP and POLLERR count: the read reports them)."""
    # A fresh poll object each time (about 1 us): one object must not be
    # polled by two threads at once, and the drain thread polls unlocked.
    poller = select.poll()
    try:
        poller.register(sock, select.POLLIN)
    except (ValueError, OSError):  # closed on this side: the read that follows says so
        return True
    return bool(poller.poll(max(0, math.ceil(timeout * 1000))))


def _send_now(sock: socket.socket, write: Callable[[int], int]) -> int:
    """Bytes that write(fd) put in the socket without waiting (the fd is non-blocking: settimeout)."""
    try:
        return write(sock.fileno())
    except (BlockingIOError, InterruptedError):
        return 0


def _advance(views: list, n: int) -> None:
    """Drop the first n bytes from a list of memoryviews, in place."""
    while n:
        if n >= len(views[0]):
            n -= len(views.pop(0))
        else:
            views[0] = views[0][n:]
            n = 0


def _send_all(sock: socket.socket, view: memoryview, idle) -> None:
    while len(view):
        try:
            n = sock.send(view)
        except TimeoutError:
            idle()
            continue
        view = view[n:]


def _close_socket(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


# -- frames ---------------------------------------------------------------------------
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


# -- the channel ------------------------------------------------------------------------
class _NoFrameYet(Exception):
    """A receive's wait ran out before a frame began: nothing was consumed."""


class _Link:
    """One connection to one peer: a locked sender, and receives read by the thread that waits.

    The thread waiting for a message reads the socket itself: a reader
    thread handing frames over through a queue cost two thread wake-ups per
    message, about 200 us more per exchange on loopback. One case still
    needs a second thread: two parties that send each other more than the
    socket buffers hold, at the same time, would both block in send with
    neither reading. So a send the socket does not take at once sets
    `draining`, and this link's drain thread reads incoming frames into
    `pending` until the send is done.

    Whoever reads holds `read_lock`. A stream that fails (closed, bad
    frame, stalled mid-frame) records its `failure`, and every later receive
    raises it at once.
    """

    def __init__(self, channel: "SocketChannel", peer: int, stream, send_seq: int, recv_seq: int):
        self.channel = channel
        self.peer = peer
        self.stream = stream
        self.send_seq = send_seq
        self.recv_seq = recv_seq
        self.send_lock = threading.Lock()
        self.read_lock = threading.Lock()
        self.pending_lock = threading.Lock()  # guards pending and failure
        self.pending: collections.deque = collections.deque()
        self.failure: ChannelError | None = None
        self.draining = threading.Event()
        self.closed = False
        self.broken: str | None = None
        self.thread = threading.Thread(target=self._drain_loop, daemon=True,
                                       name=f"pysmpc-drain-{channel.party}-from-{peer}")
        self.thread.start()

    # -- receiving --------------------------------------------------------------------
    def _read(self, wait: float, refuse: bool = True) -> bool:
        """Read one frame into `pending` if one begins within `wait` s; False if none did. Hold read_lock.

        Once a frame has begun, the rest of it must come within the
        channel's timeout: a peer that stalls mid-frame leaves the stream
        unusable, and that is the link's failure.
        """
        if self.failure is not None:
            return True
        ch = self.channel
        stream = self.stream
        if not stream.wait_readable(wait):
            return False
        progress = [stream.bytes_in, time.monotonic()]

        def nothing_yet():  # e.g. a TLS record that carried no data
            if self.closed:
                raise PeerDisconnected("channel closed")
            raise _NoFrameYet

        def mid_frame():  # called after each slice in which no byte came
            if self.closed:
                raise PeerDisconnected("channel closed")
            now = time.monotonic()
            if stream.bytes_in != progress[0]:
                progress[:] = [stream.bytes_in, now]
            elif now - progress[1] > ch.timeout:
                raise PeerTimeout(f"no byte of the rest of a frame came for {ch.timeout:g} s")

        item = failure = None
        try:
            header, payload = read_frame(stream, ch.max_recv_bytes, mid_frame, first_idle=nothing_yet)
            if header["session"] != ch.session:
                raise ChannelError(f"frame from session {header['session']!r}, this is session {ch.session!r}")
            if header["seq"] != self.recv_seq:
                raise ChannelError(f"out-of-order frame '{header['tag']}': sequence number {header['seq']}, "
                                   f"expected {self.recv_seq}")
            self.recv_seq += 1
            item = (header["tag"], payload)
        except _NoFrameYet:
            return False
        except PeerDisconnected as exc:
            failure = PeerDisconnected("channel closed") if self.closed else exc
        except ChannelError as exc:
            if not self.closed and not isinstance(exc, PeerTimeout):
                log.error("party %s: bad frame from %s: %s; closing the connection", ch.party, _name(self.peer), exc)
                if refuse:
                    self._refuse(f"{_name(ch.party)} refused a frame from {_name(self.peer)}: {exc}")
            failure = exc
            self.stream.close()
        except Exception as exc:  # noqa: BLE001 - a receive must fail as a ChannelError, whatever went wrong
            log.exception("party %s: reading from %s failed", ch.party, _name(self.peer))
            failure = ChannelError(f"reading failed: {exc!r}")
            self.stream.close()
        with self.pending_lock:
            if failure is not None:
                self.failure = failure
            else:
                self.pending.append(item)
        return True

    def _drain_loop(self) -> None:
        while True:
            self.draining.wait()
            if self.closed or self.failure is not None:
                return
            # Short waits: the send this drain serves ends, and its thread reads again itself.
            if not self.stream.wait_readable(_DRAIN_POLL):
                continue
            if self.read_lock.acquire(timeout=_DRAIN_POLL):
                try:
                    if self.draining.is_set():
                        self._read(0.0)
                finally:
                    self.read_lock.release()

    def get(self, tag: str, timeout: float | None):
        """The next (tag, payload) from this peer; raises the link's failure if it has one."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self.pending_lock:
                if self.pending:
                    return self.pending.popleft()
                if self.failure is not None:
                    raise self._failed(tag)
            left = _SLICE if deadline is None else deadline - time.monotonic()
            if left <= 0:
                raise PeerTimeout(f"{_name(self.channel.party)}: no message from {_name(self.peer)} within "
                                  f"{timeout:g} s (waiting for '{tag}')")
            # Not acquired: the drain thread is reading a frame; look at pending again.
            if self.read_lock.acquire(timeout=min(left, _SLICE)):
                try:
                    if not self.pending:
                        self._read(min(left, _SLICE))
                finally:
                    self.read_lock.release()

    def unget(self, item) -> None:
        """Put a received (tag, payload) back: the next get returns it."""
        with self.pending_lock:
            self.pending.appendleft(item)

    def _failed(self, tag: str) -> ChannelError:
        exc = self.failure
        if isinstance(exc, PeerDisconnected):
            what = "disconnected"
        elif isinstance(exc, PeerTimeout):
            what = "stopped in the middle of a frame"
        else:
            what = "sent a bad frame"
        return type(exc)(f"{_name(self.channel.party)}: {_name(self.peer)} {what} while we waited for '{tag}' ({exc})")

    # -- sending ----------------------------------------------------------------------
    def _refuse(self, reason: str) -> None:
        """Tell the peer why we hang up (an abort frame), if that takes under a second.

        The peer may be in the middle of sending the frame we refused; its
        drain thread still reads this, and its failed send reports it (_refusal).
        """
        deadline = time.monotonic() + 1.0

        def idle():
            if time.monotonic() > deadline:
                raise TimeoutError

        if not self.send_lock.acquire(timeout=1.0):
            return
        try:
            write_frame(self.stream, ABORT_TAG, self.send_seq, self.channel.session, reason.encode()[:2000], idle)
            self.send_seq += 1
        except (OSError, ChannelError):  # TimeoutError is an OSError
            pass
        finally:
            self.send_lock.release()

    def _refusal(self, wait: float) -> str:
        """The reason of an abort frame the peer sent (reading for up to `wait` s), or ""."""
        deadline = time.monotonic() + wait
        while True:
            with self.pending_lock:
                for item in self.pending:
                    if item[0] == ABORT_TAG:
                        return _abort_reason(item[1])
                if self.failure is not None:
                    return ""
            left = deadline - time.monotonic()
            if left <= 0:
                return ""
            if self.read_lock.acquire(timeout=left):
                try:
                    self._read(min(left, _SLICE), refuse=False)  # we hold send_lock: no abort frame of ours
                finally:
                    self.read_lock.release()

    def send(self, tag: str, data) -> None:
        deadline = time.monotonic() + self.channel.timeout

        def idle():
            if self.closed:
                raise PeerDisconnected("channel closed")
            if time.monotonic() > deadline:
                raise TimeoutError

        with self.send_lock:
            if self.broken:
                raise PeerDisconnected(f"{_name(self.channel.party)}: connection to {_name(self.peer)} is unusable "
                                       f"({self.broken}); cannot send '{tag}'")
            try:
                # The limit holds both ways: a frame the peer would refuse is not sent either.
                write_frame(self.stream, tag, self.send_seq, self.channel.session, data, idle,
                            max_frame=self.channel.max_frame_bytes, on_block=self.draining.set)
            except FrameTooLarge as exc:  # nothing was sent: the connection stays usable
                raise FrameTooLarge(f"{_name(self.channel.party)}: cannot send to {_name(self.peer)}: {exc}") from None
            except TimeoutError:
                self.broken = "a send timed out"
                raise PeerTimeout(f"{_name(self.channel.party)}: {_name(self.peer)} did not take '{tag}' within "
                                  f"{self.channel.timeout:g} s") from None
            except (OSError, ChannelError) as exc:
                self.broken = str(exc)
                refusal = self._refusal(wait=1.0)  # why the peer hung up, if it said so
                raise PeerDisconnected(f"{_name(self.channel.party)}: cannot send '{tag}' to {_name(self.peer)}: "
                                       f"{exc}" + (f" ({refusal})" if refusal else "")) from None
            finally:
                self.draining.clear()
            self.send_seq += 1

    def close(self) -> None:
        self.closed = True
        self.stream.close()
        self.draining.set()  # the drain thread wakes and exits


class SocketChannel(Channel):
    """Channel over TCP (or TLS) connections, one per peer; see the module docstring.

    Build it with `attach(peer, stream)` for each connection made by
    `connect_peer` / `accept_peer`. Protocol traffic goes through the
    counting `send`/`recv`/`exchange` of the base class. The cluster's own
    control messages (operation calls and their results) use `send_control`
    / `recv_control`, which are not counted, just as the in-process cluster's
    task queues are not.

    No frame larger than `max_frame_bytes` is sent or received;
    `max_recv_bytes` (default: the same) lowers the limit for received
    frames only, e.g. to the one input share a query client may send.
    """

    def __init__(self, party: int, timeout: float = 30.0, *, session: str = "",
                 max_frame_bytes: int = DEFAULT_MAX_FRAME, max_recv_bytes: int | None = None):
        super().__init__(party, timeout)
        self.session = session
        self.max_frame_bytes = max_frame_bytes
        self.max_recv_bytes = max_frame_bytes if max_recv_bytes is None else min(max_recv_bytes, max_frame_bytes)
        self._links: dict[int, _Link] = {}

    def attach(self, peer: int, stream) -> None:
        """Take over a connection whose hello frames (seq 0 both ways) were exchanged."""
        if peer in self._links:
            raise ValueError(f"party {self.party} already has a connection to {_name(peer)}")
        self._links[peer] = _Link(self, peer, stream, send_seq=1, recv_seq=1)

    @property
    def peers(self) -> list[int]:
        return sorted(self._links)

    def _link(self, peer: int) -> _Link:
        try:
            return self._links[peer]
        except KeyError:
            raise ChannelError(f"party {self.party} has no connection to {_name(peer)}") from None

    # -- transport for Channel ------------------------------------------------------
    def _send_raw(self, to, tag, data):
        self._link(to).send(tag, data)

    def _recv_raw(self, frm, tag):
        got_tag, data = self._link(frm).get(tag, self.timeout)
        while got_tag == HEARTBEAT_TAG:  # it may come before an op's output, on the same connection
            got_tag, data = self._link(frm).get(tag, self.timeout)
        if got_tag == ABORT_TAG:
            raise PeerDisconnected(f"{_name(self.party)}: {_name(frm)} aborted the operation "
                                   f"({_abort_reason(data)}) while we waited for '{tag}'")
        if got_tag.startswith("ctl:") and tag != got_tag:
            # The op ended there (e.g. with an error) before sending what we wait for: its
            # reply stays for recv_control, which reports what happened.
            self._link(frm).unget((got_tag, data))
            raise ChannelError(f"{_name(self.party)}: {_name(frm)} ended the operation without sending '{tag}'")
        if got_tag != tag:
            raise ChannelError(f"{_name(self.party)}: expected '{tag}' from {_name(frm)}, got '{got_tag}' "
                               "(the parties are running different programs)")
        return data

    # -- control messages (not counted) -------------------------------------------------
    def send_control(self, to: int, tag: str, data) -> None:
        self._link(to).send(tag, data)

    def recv_control(self, frm: int, timeout: float | None = None) -> tuple[str, object]:
        """Next message from `frm`, any tag: (tag, payload). `timeout` None waits for ever."""
        return self._link(frm).get("a control message", timeout)

    def abort_peers(self, reason: str, peers=None) -> None:
        """Tell peers that this party gave up, so a peer waiting on it fails now, not at its timeout."""
        for peer in (self.peers if peers is None else peers):
            try:
                self._links[peer].send(ABORT_TAG, reason.encode()[:2000])
            except (ChannelError, KeyError):
                pass

    def disconnect(self, peer: int) -> None:
        """Close the connection to one peer (fault injection): it sees the connection drop."""
        self._link(peer).close()

    def close(self) -> None:
        for link in self._links.values():
            link.close()


def _abort_reason(data) -> str:
    try:
        return bytes(data).decode(errors="replace")
    except TypeError:
        return "no reason given"


# -- making connections --------------------------------------------------------------
def _hello_payload(**fields) -> bytes:
    return json.dumps(fields, separators=(",", ":")).encode()


def _parse_hello(header: dict, payload) -> dict:
    if header["tag"] != HELLO_TAG or header["seq"] != 0 or not isinstance(payload, bytes):
        raise ChannelError(f"expected a hello frame first, got '{header['tag']}' (seq {header['seq']})")
    try:
        hello = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        raise ChannelError("hello frame is not valid JSON") from None
    if not isinstance(hello, dict):
        raise ChannelError("hello frame is not a JSON object")
    return hello


def _hello_peer(hello: dict, me: int) -> int:
    """The endpoint a hello comes from; ChannelError unless it names another known endpoint and a session."""
    peer = hello.get("party")
    # _is_int first: a list is unhashable, and true would pass for party 1.
    if not _is_int(peer) or peer not in CERT_NAMES or peer == me or not isinstance(hello.get("session"), str):
        raise ChannelError(f"hello names party {str(peer)[:40]} of session {str(hello.get('session'))[:80]!r}")
    return peer


def _wrap(sock: socket.socket, tls: TlsConfig | None, server_side: bool, idle):
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if tls is None:
        return _PlainStream(sock)
    stream = _TlsStream(sock, tls.server if server_side else tls.client, server_side)
    stream.handshake(idle)
    return stream


def _deadline_idle(deadline: float, what: str, check: Callable[[], None] | None = None):
    def idle():
        if check is not None:
            check()
        if time.monotonic() > deadline:
            raise PeerTimeout(f"timed out {what}")
    return idle


def connect_peer(address: tuple[str, int], me: int, peer: int, *, session: str, tls: TlsConfig | None = None,
                 timeout: float = 30.0, max_frame_bytes: int = DEFAULT_MAX_FRAME,
                 check: Callable[[], None] | None = None, extra: dict | None = None, reply: dict | None = None):
    """Connect to `peer` at `address`, retrying until it listens; exchange hellos. Returns the stream.

    `check()` is called while waiting and may raise (e.g. the peer's
    process died). `extra` adds fields to our hello (a client query says
    what it asks for there); `reply`, a dict, is filled with the peer's
    answering hello (a round's rules come back there to a data owner, a
    served model's description to a query client).
    Raises PeerTimeout when `timeout` passes, ChannelError
    when the peer is not who it should be or refuses us.
    """
    host, port = address
    deadline = time.monotonic() + timeout
    where = f"{_name(peer)} at {host}:{port}"
    idle = _deadline_idle(deadline, f"waiting for {where}", check)
    while True:
        try:
            sock = socket.create_connection((host, port), timeout=max(0.1, min(5.0, deadline - time.monotonic())))
            break
        except (ConnectionRefusedError, ConnectionResetError, TimeoutError, socket.gaierror) as exc:
            if time.monotonic() > deadline:
                raise PeerTimeout(f"{_name(me)}: cannot connect to {where} within {timeout:g} s: {exc}") from None
            if check is not None:
                check()
            time.sleep(0.05)
    try:
        stream = _wrap(sock, tls, server_side=False, idle=idle)
        if tls is not None:
            cn = stream.peer_common_name()
            if cn != CERT_NAMES[peer]:
                raise ChannelError(f"{where} presented a certificate for {cn!r}, expected {CERT_NAMES[peer]!r}: "
                                   "refusing the connection")
        write_frame(stream, HELLO_TAG, 0, session, _hello_payload(**(extra or {}), party=me, session=session, version=VERSION), idle)
        try:
            header, payload = read_frame(stream, max_frame_bytes, idle)
        except PeerDisconnected as exc:
            if tls is not None:
                raise
            raise PeerDisconnected(f"{exc} before answering our hello (if the cluster uses TLS, give this side its "
                                   "certificates: tls_dir / --tls-dir)") from None
        hello = _parse_hello(header, payload)
        if "error" in hello:
            raise ChannelError(f"{where} refused the connection: {hello['error']}")
        if reply is not None:
            reply.update(hello)
        if hello.get("party") != peer or hello.get("session") != session:
            raise ChannelError(f"{where} answered as party {hello.get('party')!r} of session "
                               f"{hello.get('session')!r}, expected party {peer} of session {session!r}")
        return stream
    except OSError as exc:
        # A peer that drops us mid-handshake (e.g. it refused our TLS certificate)
        # shows up as a reset or broken pipe: report it as a refused connection.
        _close_socket(sock)
        raise PeerDisconnected(f"{where} closed the connection during the handshake: {exc}") from None
    except BaseException:
        _close_socket(sock)
        raise


def accept_peer(sock: socket.socket, me: int, *, tls: TlsConfig | None = None, timeout: float = 10.0,
                max_frame_bytes: int = DEFAULT_MAX_FRAME) -> tuple[int, dict, object]:
    """Read the hello on a freshly accepted socket: (peer index, hello, stream).

    The caller answers with `reply_hello` (or `reply_hello(..., error=...)`)
    once it knows the session. Raises ChannelError for anything that is not
    a well-formed hello from a party or the client (garbage, wrong
    certificate, bad index) after closing the socket.
    """
    idle = _deadline_idle(time.monotonic() + timeout, "waiting for a hello")
    stream = None
    try:
        stream = _wrap(sock, tls, server_side=True, idle=idle)
        header, payload = read_frame(stream, min(max_frame_bytes, _MAX_HEADER), idle)
        hello = _parse_hello(header, payload)
        peer = _hello_peer(hello, me)
        if tls is not None:
            cn = stream.peer_common_name()
            expected = _expected_common_name(peer, hello)
            if cn != expected:
                msg = (f"{_name(peer)} presented a certificate for {cn!r}, expected {expected!r}: "
                       "connection refused")
                reply_hello(stream, me, hello["session"], error=msg)
                raise ChannelError(msg)
        return peer, hello, stream
    except BaseException:
        if stream is not None:
            stream.close()
        else:
            _close_socket(sock)
        raise


def _expected_common_name(peer: int, hello: dict) -> str:
    """The certificate name a hello's sender must present: a data owner submitting shares is "owner:NAME"."""
    submit = hello.get("submit")
    if peer == CLIENT and submit is not None:
        owner = submit.get("owner") if isinstance(submit, dict) else None
        return OWNER_CERT_PREFIX + (owner if isinstance(owner, str) else "?")
    return CERT_NAMES[peer]


def reply_hello(stream, me: int, session: str, *, error: str | None = None, timeout: float = 10.0,
                extra: dict | None = None) -> None:
    """Answer a peer's hello: accept it into `session`, or refuse it with `error` (then close).

    `extra` adds fields to the answer (a round's rules, for a data owner;
    the served model, for a client that asked to have it described).
    """
    fields = {**(extra or {}), "party": me, "session": session, "version": VERSION}
    if error is not None:
        fields["error"] = error
    try:
        write_frame(stream, HELLO_TAG, 0, session, _hello_payload(**fields),
                    _deadline_idle(time.monotonic() + timeout, "answering a hello"))
    except (OSError, ChannelError):
        if error is None:
            raise
    if error is not None:
        stream.close()

