"""Byte streams over one TCP socket, plain or TLS, read by one thread and written by another.

`TlsConfig` holds one endpoint's mutual-TLS material and the common name
each endpoint's certificate must carry; `_PlainStream` and `_TlsStream`
give the frame layer (`parties.frames`) the same small interface:
recv_into, send_views, wait_readable, peer_common_name, close.
"""

from __future__ import annotations

import logging
import math
import os
import select
import socket
import ssl
import threading
from pathlib import Path
from typing import Callable

from pysmpc.parties.channel import ChannelError, PeerDisconnected
from pysmpc.parties.party import CLIENT, DEALER, P0, P1

__all__ = ["CERT_FILES", "CERT_NAMES", "OWNER_CERT_PREFIX", "TlsConfig"]

log = logging.getLogger("pysmpc.socket")

# A blocking socket call waits at most this long before it checks whether the
# connection was closed or a deadline passed, then waits again.
_SLICE = 0.25
_SEND_CHUNK = 1 << 20  # TLS: encrypt and send large buffers in pieces of this size
_IOV_MAX = 512
_READ_BUFFER = 1 << 16  # plain streams read ahead this much

# The common name each endpoint's certificate must carry, and its file stem in
# the cluster's TLS directory.
CERT_NAMES = {P0: "P0", P1: "P1", DEALER: "P2", CLIENT: "client"}
CERT_FILES = {P0: "p0", P1: "p1", DEALER: "p2", CLIENT: "client"}
# A data owner's certificate is named "owner:NAME" (files owner-NAME.pem/.key):
# the workers count each owner once per round by that name, and the client's
# certificate (the aggregator's) cannot pass for an owner.
OWNER_CERT_PREFIX = "owner:"


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
