"""TCP transport: one connection per pair of endpoints, carrying frames.

Each pair among P0, P1, P2 and the client has one TCP connection (TLS with
per-party certificates when configured; `parties.streams`). Messages are
frames (`parties.frames`).

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
import json
import logging
import socket
import threading
import time
from typing import Callable

from pysmpc.parties.channel import Channel, ChannelError, PeerDisconnected, PeerTimeout
from pysmpc.parties.frames import (
    _MAX_HEADER,
    ABORT_TAG,
    DEFAULT_MAX_FRAME,
    HEARTBEAT_TAG,
    HELLO_TAG,
    VERSION,
    FrameTooLarge,
    _is_int,
    read_frame,
    write_frame,
)
from pysmpc.parties.party import CLIENT
from pysmpc.parties.streams import (
    _SLICE,
    CERT_NAMES,
    OWNER_CERT_PREFIX,
    TlsConfig,
    _close_socket,
    _PlainStream,
    _TlsStream,
)

__all__ = ["SocketChannel", "accept_peer", "connect_peer", "reply_hello"]

log = logging.getLogger("pysmpc.socket")

_DRAIN_POLL = 0.01  # how often a drain thread looks whether its send is done


def _name(index: int) -> str:
    return f"party {index}" if index != CLIENT else "the client"


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

    pipelines_batches = True  # a link's transfer can hide behind another part's computation

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
