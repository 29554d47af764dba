"""Relay TCP connections through a simulated link: a one-way delay and a rate cap in each direction.

    python -m pysmpc.netsim.relay --listen 10.77.0.10:4000 --to 127.0.0.1:4100 \\
        --delay-ms 20 --rate-mbit 100 [--control /tmp/relay.sock]

A `LinkRelay` listens on one address; each connection it accepts is
connected onward to a target and carried by two pumps, one per direction.
A pump models one direction of a point-to-point link:

1. Read what has arrived (at most one chunk, and only while the bytes it
   holds are under `buffer_bytes`: otherwise it stops reading, the kernel
   buffers fill and the sender blocks, which is the back-pressure a real
   link's receive window applies).
2. Stamp the chunk with the time its last byte leaves the link's
   serializer (`TokenBucket`: `rate_bits_per_s`, tokens may run into debt,
   so a chunk of n bytes finishes n / rate after the previous one), plus
   the propagation `delay`.
3. Write it on once that time has come, in arrival order. A chunk's
   delivery time depends only on when its bytes arrived, so a message of
   S bytes arrives S / rate + delay after its first byte, whatever the
   chunk size.

So a ping-pong of S bytes takes 2 * (delay + S / rate) and a bulk transfer
runs at `rate`. What it does not model: TCP's own congestion window over a
long path (each side of the relay is a short local TCP hop, so there is no
slow start at the link's round-trip time), loss, jitter and reordering.

Threads, not asyncio: asyncio's selector rounds timeouts up to whole
milliseconds, too coarse for a 0.5 ms LAN delay; `select` with a float
timeout wakes within tens of microseconds (and limits a relay to about
500 connections: descriptors below 1024). `--control PATH` serves the
relay's counters over a Unix socket, reachable from any network namespace:
one JSON line answers each command line, "stats", "reset" (zero the
counters) or "set DELAY_MS RATE_MBIT|none" (change the link).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import logging
import math
import os
import select
import signal
import socket
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field

__all__ = ["LinkRelay", "TokenBucket", "DEFAULT_CHUNK_BYTES", "DEFAULT_BUFFER_BYTES", "main"]

log = logging.getLogger("pysmpc.netsim")

DEFAULT_CHUNK_BYTES = 1 << 16
# Enough to keep a 1 Gbit/s link with a 20 ms delay full (2.5 MB in flight);
# larger products of rate and delay get 2 * rate * delay.
DEFAULT_BUFFER_BYTES = 4 << 20
# How often a pump with nothing to do looks whether the relay is closing.
_IDLE_POLL = 0.5
_PR_SET_TIMERSLACK = 29


class TokenBucket:
    """A rate limiter that says when n bytes have finished leaving: tokens are bytes, refilled at `rate`.

    `departure(n, now)` takes n tokens, running into debt if there are not
    enough, and returns the time the debt is paid: the time the last of the
    n bytes leaves a link of `rate` bytes per second. Up to `burst` bytes
    saved while idle leave at once (burst 0: a plain serializer).
    """

    def __init__(self, rate_bytes_per_s: float, burst_bytes: float = 0.0):
        if not rate_bytes_per_s > 0:
            raise ValueError(f"the rate must be positive, got {rate_bytes_per_s!r} bytes/s")
        if burst_bytes < 0:
            raise ValueError(f"the burst must be >= 0 bytes, got {burst_bytes!r}")
        self.rate = float(rate_bytes_per_s)
        self.burst = float(burst_bytes)
        self._tokens = self.burst
        self._last: float | None = None

    def departure(self, nbytes: int, now: float) -> float:
        if self._last is not None:
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        self._tokens -= nbytes
        return now if self._tokens >= 0 else now + -self._tokens / self.rate


@dataclass
class _DirectionStats:
    bytes: int = 0
    chunks: int = 0
    buffered: int = 0  # bytes read and not yet written on
    peak_buffered: int = 0

    def as_dict(self) -> dict:
        return {"bytes": self.bytes, "chunks": self.chunks, "buffered": self.buffered,
                "peak_buffered": self.peak_buffered}


@dataclass
class _Connection:
    peer: str
    peer_sock: socket.socket
    target_sock: socket.socket | None = None
    opened: float = field(default_factory=time.time)
    closed: bool = False
    error: str | None = None
    peer_to_target: _DirectionStats = field(default_factory=_DirectionStats)
    target_to_peer: _DirectionStats = field(default_factory=_DirectionStats)
    pumps_left: int = 2

    def as_dict(self) -> dict:
        return {"peer": self.peer, "opened": self.opened, "closed": self.closed, "error": self.error,
                "peer_to_target": self.peer_to_target.as_dict(), "target_to_peer": self.target_to_peer.as_dict()}

    def abort(self) -> None:
        """Wake both pumps (their sockets turn readable and fail to write) so they finish."""
        for sock in (self.peer_sock, self.target_sock):
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


class LinkRelay:
    """Accept TCP connections on `listen` and carry each to `target` over a simulated link.

    Each direction of each connection gets `delay` seconds of one-way
    latency and, with `rate_bits_per_s`, a rate cap (a `TokenBucket` of
    `burst_bytes`); so the round-trip time is 2 * delay. A direction holds
    at most `buffer_bytes` (default: 4 MiB, or 2 * rate * delay when that
    is larger) and reads at most `chunk_bytes` at a time; byte order and
    content are kept. Use as a context manager, or start() and close().
    `set_link` changes the delay and rate for the bytes read from then on
    (one set of connections, measured over several links in turn).
    `stats()` lists every connection's counters; `reset_stats()` zeroes them.
    """

    def __init__(self, listen: tuple[str, int], target: tuple[str, int], *, delay: float = 0.0,
                 rate_bits_per_s: float | None = None, burst_bytes: int = 0, buffer_bytes: int | None = None,
                 chunk_bytes: int = DEFAULT_CHUNK_BYTES, connect_timeout: float = 10.0):
        _check_link(delay, rate_bits_per_s)
        if chunk_bytes < 1:
            raise ValueError(f"chunk_bytes must be >= 1, got {chunk_bytes!r}")
        if buffer_bytes is None:
            buffer_bytes = max(DEFAULT_BUFFER_BYTES, int(2 * _in_flight(delay, rate_bits_per_s)))
        self.buffer_bytes = int(buffer_bytes)
        self.chunk_bytes = int(chunk_bytes)
        self._check_buffer(delay, rate_bits_per_s)
        self.listen = listen
        self.target = target
        self.burst_bytes = burst_bytes
        self._link = (float(delay), rate_bits_per_s)  # replaced whole by set_link: pumps read it without a lock
        self.connect_timeout = connect_timeout
        self._listener: socket.socket | None = None
        self._closing = threading.Event()
        self._lock = threading.Lock()
        self._connections: list[_Connection] = []
        self._threads: list[threading.Thread] = []
        self._threads_lock = threading.Lock()

    @property
    def delay(self) -> float:
        return self._link[0]

    @property
    def rate_bits_per_s(self) -> float | None:
        return self._link[1]

    def set_link(self, delay: float, rate_bits_per_s: float | None) -> None:
        """Change the link: bytes read from now on get the new delay and rate (those held keep theirs)."""
        _check_link(delay, rate_bits_per_s)
        self._check_buffer(delay, rate_bits_per_s)
        self._link = (float(delay), rate_bits_per_s)

    def _check_buffer(self, delay: float, rate_bits_per_s: float | None) -> None:
        in_flight = _in_flight(delay, rate_bits_per_s)
        if self.buffer_bytes < max(self.chunk_bytes, in_flight):
            # A buffer smaller than what is in flight caps the rate at buffer / delay, not rate.
            raise ValueError(f"buffer_bytes={self.buffer_bytes} must hold one chunk ({self.chunk_bytes}) and the "
                             f"{in_flight:.0f} bytes in flight at {rate_bits_per_s} bit/s over {delay} s")

    # -- lifecycle -------------------------------------------------------------
    @property
    def address(self) -> tuple[str, int]:
        """Where the relay listens (the real port when `listen` asked for port 0)."""
        if self._listener is None:
            raise RuntimeError("the relay is not started")
        return self._listener.getsockname()[:2]

    def start(self) -> "LinkRelay":
        self._listener = socket.create_server(self.listen)
        self._spawn(self._accept_loop, "relay-accept")
        return self

    def close(self) -> None:
        """Stop accepting, cut every connection, wait for the threads."""
        self._closing.set()
        with self._lock:
            for conn in self._connections:
                conn.abort()
        with self._threads_lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(timeout=5.0)
        if self._listener is not None:
            self._listener.close()

    def __enter__(self) -> "LinkRelay":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # -- counters -----------------------------------------------------------------
    def stats(self) -> dict:
        with self._lock:
            return {"listen": _fmt(self.address), "target": _fmt(self.target), "delay_s": self.delay,
                    "rate_bits_per_s": self.rate_bits_per_s, "buffer_bytes": self.buffer_bytes,
                    "connections": [c.as_dict() for c in self._connections]}

    def reset_stats(self) -> None:
        """Zero byte and chunk counts and peaks (what is buffered now stays); forget closed connections."""
        with self._lock:
            self._connections = [c for c in self._connections if not c.closed]
            for conn in self._connections:
                for d in (conn.peer_to_target, conn.target_to_peer):
                    d.bytes = d.chunks = 0
                    d.peak_buffered = d.buffered

    # -- threads ----------------------------------------------------------------------
    def _spawn(self, target, name: str, *args) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        with self._threads_lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        listener = self._listener
        assert listener is not None  # start() set it before starting this thread
        while not self._closing.is_set():
            ready, _, _ = select.select([listener], [], [], _IDLE_POLL)
            if not ready:
                continue
            try:
                sock, addr = listener.accept()
            except OSError:
                continue
            conn = _Connection(peer=_fmt(addr[:2]), peer_sock=sock)
            with self._lock:
                self._connections.append(conn)
            self._spawn(self._open, f"relay-open-{conn.peer}", conn)

    def _open(self, conn: _Connection) -> None:
        """Connect onward, then start the two pumps (or hang up on the peer if the target is down)."""
        try:
            conn.target_sock = socket.create_connection(self.target, timeout=self.connect_timeout)
        except OSError as exc:
            conn.error = f"cannot connect to {_fmt(self.target)}: {exc}"
            log.warning("%s: %s", conn.peer, conn.error)
            conn.peer_sock.close()
            conn.closed = True
            return
        for sock in (conn.peer_sock, conn.target_sock):
            sock.setblocking(False)
            # Small messages (a round's few hundred bytes) must not wait for Nagle.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._spawn(self._pump, f"relay-up-{conn.peer}", conn, conn.peer_sock, conn.target_sock, conn.peer_to_target)
        self._spawn(self._pump, f"relay-down-{conn.peer}", conn, conn.target_sock, conn.peer_sock,
                    conn.target_to_peer)

    def _pump(self, conn: _Connection, src: socket.socket, dst: socket.socket, stats: _DirectionStats) -> None:
        """Carry one direction: read, stamp with the link's delivery time, hold, write on in order."""
        _tighten_timer_slack()
        link, bucket = None, None
        queue: deque[list] = deque()  # [delivery time, memoryview of what is left to write]
        eof = False
        try:
            while True:
                if not queue and eof:
                    dst.shutdown(socket.SHUT_WR)  # pass the half-close on, after everything before it
                    break
                readers = [src] if not eof and stats.buffered < self.buffer_bytes else []
                writers, timeout = [], _IDLE_POLL
                if queue:
                    wait = queue[0][0] - time.monotonic()
                    if wait <= 0:
                        writers = [dst]
                    else:
                        timeout = min(wait, _IDLE_POLL)
                readable, writable, _ = select.select(readers, writers, [], timeout)
                if self._closing.is_set():
                    break
                if writable:
                    view = queue[0][1]
                    try:
                        sent = dst.send(view)
                    except BlockingIOError:
                        sent = 0
                    with self._lock:
                        stats.buffered -= sent
                        stats.bytes += sent
                        stats.chunks += sent == len(view)
                    if sent == len(view):
                        queue.popleft()
                    else:
                        queue[0][1] = view[sent:]
                if readable:
                    try:
                        data = src.recv(min(self.chunk_bytes, self.buffer_bytes - stats.buffered))
                    except BlockingIOError:
                        continue
                    now = time.monotonic()
                    if not data:
                        eof = True
                        continue
                    if self._link is not link:  # first chunk, or set_link since the last one
                        link = self._link
                        bucket = None if link[1] is None else TokenBucket(link[1] / 8, self.burst_bytes)
                    leaves = now if bucket is None else bucket.departure(len(data), now)
                    queue.append([leaves + link[0], memoryview(data)])
                    with self._lock:
                        stats.buffered += len(data)
                        stats.peak_buffered = max(stats.peak_buffered, stats.buffered)
        except OSError as exc:  # a reset, or the other pump aborted the connection
            if conn.error is None and not self._closing.is_set():
                conn.error = f"{type(exc).__name__}: {exc}"
            conn.abort()
        except ValueError:  # select() takes descriptors below FD_SETSIZE (1024) only
            conn.error = f"too many open descriptors for select() (socket {src.fileno()}): relay fewer connections"
            log.error("%s: %s", conn.peer, conn.error)
            conn.abort()
        finally:
            with self._lock:
                conn.pumps_left -= 1
                if conn.pumps_left == 0:
                    conn.closed = True
                    src.close()
                    dst.close()


def _check_link(delay: float, rate_bits_per_s: float | None) -> None:
    if not (delay >= 0 and math.isfinite(delay)):
        raise ValueError(f"delay must be a finite number of seconds >= 0, got {delay!r}")
    if rate_bits_per_s is not None and not (rate_bits_per_s > 0 and math.isfinite(rate_bits_per_s)):
        raise ValueError(f"rate_bits_per_s must be positive (or None for no cap), got {rate_bits_per_s!r}")


def _in_flight(delay: float, rate_bits_per_s: float | None) -> float:
    """Bytes a link of this rate holds while they cross it: rate x delay (0 without a cap)."""
    return 0.0 if rate_bits_per_s is None else rate_bits_per_s / 8 * delay


def _tighten_timer_slack() -> None:
    """Let this thread's timed waits end within 1 us of their deadline (Linux; the default slack is 50 us).

    Best effort: elsewhere the relay still works, a little later.
    """
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_TIMERSLACK, 1000, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _fmt(address) -> str:
    host, port = address[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _parse_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def _serve_control(relay: LinkRelay, path: str, stop: threading.Event) -> None:
    """Answer "stats" and "reset" lines on a Unix socket with one JSON line each."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # Bound and listening under a temporary name, then renamed into place: whoever sees the
    # path exist can connect at once (bind alone creates it, and a connect before listen is refused).
    staging = f"{path}.{os.getpid()}.tmp"
    server.bind(staging)
    server.listen()
    os.replace(staging, path)
    server.settimeout(_IDLE_POLL)
    try:
        while not stop.is_set():
            try:
                client, _ = server.accept()
            except socket.timeout:
                continue
            with client, client.makefile("rwb") as stream:
                for line in stream:
                    command = line.strip().decode(errors="replace")
                    reply: dict
                    if command == "reset":
                        relay.reset_stats()
                        reply = {"ok": True}
                    elif command.startswith("set "):
                        reply = _set_link(relay, command.split()[1:])
                    elif command == "stats":
                        reply = relay.stats()
                    else:
                        reply = {"error": f"unknown command {command!r}: "
                                          "send 'stats', 'reset' or 'set DELAY_MS RATE_MBIT|none'"}
                    stream.write(json.dumps(reply).encode() + b"\n")
                    stream.flush()
    finally:
        server.close()
        try:
            os.unlink(path)
        except OSError:
            pass


def _set_link(relay: LinkRelay, words: list[str]) -> dict:
    """'set DELAY_MS RATE_MBIT' (RATE_MBIT may be 'none'): change the link for what is read from now on."""
    try:
        delay_ms, rate_mbit = words
        relay.set_link(float(delay_ms) / 1000, None if rate_mbit == "none" else float(rate_mbit) * 1e6)
    except ValueError as exc:
        return {"error": f"expected 'set DELAY_MS RATE_MBIT|none': {exc}"}
    return {"ok": True}


def main(argv=None) -> int:
    """Run one relay until SIGINT or SIGTERM; return its exit code."""
    parser = argparse.ArgumentParser(prog="python -m pysmpc.netsim.relay", description=__doc__.split("\n")[0])
    parser.add_argument("--listen", type=_parse_address, required=True, help="HOST:PORT to accept connections on")
    parser.add_argument("--to", type=_parse_address, required=True, help="HOST:PORT to carry each connection to")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="one-way delay of each direction (ms)")
    parser.add_argument("--rate-mbit", type=float, default=None,
                        help="rate cap of each direction (Mbit/s; default: no cap)")
    parser.add_argument("--buffer-bytes", type=int, default=None, help="most bytes one direction holds")
    parser.add_argument("--chunk-bytes", type=int, default=DEFAULT_CHUNK_BYTES)
    parser.add_argument("--control", default=None,
                        help="Unix socket path answering 'stats', 'reset' and 'set DELAY_MS RATE_MBIT|none'")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=args.log_level.upper(),
                        format="%(asctime)s pysmpc-relay %(levelname)s %(message)s")
    # The pumps hand the GIL to each other constantly; the default 5 ms switch
    # interval would add up to 5 ms to a chunk whose thread wakes while another runs.
    sys.setswitchinterval(1e-4)
    try:
        relay = LinkRelay(args.listen, args.to, delay=args.delay_ms / 1000,
                          rate_bits_per_s=None if args.rate_mbit is None else args.rate_mbit * 1e6,
                          buffer_bytes=args.buffer_bytes, chunk_bytes=args.chunk_bytes)
        relay.start()
    except (ValueError, OSError) as exc:
        log.error("%s", exc)
        return 2
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    control = None
    if args.control:
        control = threading.Thread(target=_serve_control, args=(relay, args.control, stop), daemon=True)
        control.start()
    rate = "no rate cap" if args.rate_mbit is None else f"{args.rate_mbit:g} Mbit/s"
    log.info("relaying %s -> %s: %g ms one-way, %s", _fmt(relay.address), _fmt(args.to), args.delay_ms, rate)
    while not stop.wait(_IDLE_POLL):
        pass
    relay.close()
    if control is not None:
        control.join(timeout=2 * _IDLE_POLL)
    return 0


if __name__ == "__main__":
    sys.exit(main())
