"""A party as an OS process, driven over TCP by a TcpCluster.

    python -m pysmpc.runtime.worker --party N \\
        --hosts localhost:4000,localhost:4001,localhost:4002 [--tls-dir DIR] [--allow-cleartext]

Hosts off loopback need --tls-dir (certificates from `pysmpc certs`);
without it the worker refuses to start unless --allow-cleartext forces it.

1. Listen on hosts[N]; accept the client (the controller), whose hello
   names the session.
2. Connect to each lower party (P_N connects to P_j, j < N; retried until
   the timeout) and accept each higher one; every hello must name the same
   session, and with TLS every certificate the expected party.
3. Agree PRG seeds with the other parties (exchange_seeds, offline), tell
   the client "ready". Meanwhile a thread loads the Numba kernels
   (kernels.warm); loading a model waits for it, so that no inference
   compiles a kernel mid-protocol while its peers wait.
4. Loop: receive an operation call from the client, run it with run_op,
   send back the result, or an error naming this party and the op. While
   an op runs, send the client a heartbeat every few seconds (the period
   its hello asks for), so it can tell a busy worker from a stalled one.
   After an error the worker tells the other parties to stop waiting on it
   and stays up, answering further calls with that error, until the client
   leaves.

A connection whose hello carries a `query` is a client query for the model
being served (runtime/queries.py, op "serve"); one that comes before the
session exists waits for it (a worker restarted by its cluster takes up
the queries that reached it while it started). A client's hello with
`describe` is answered with the model being served (its shapes, input
range and reveal policy; none before the session and the model exist),
then closed. Anyone else is refused as busy during a session.

`--exit-with-parent PID` (TcpCluster passes its own pid) ends the worker
as soon as the process that spawned it is gone, even killed without a word.

`--fault SPEC` (fault tests only; parties/faults.py) delays or drops this
worker's protocol frames.

One session per process: the worker exits when the client says goodbye or
disconnects. Logs go to stderr. Nothing received is unpickled (see wire.py).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import socket
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

from pysmpc.parties.addresses import CleartextError, check_cleartext, parse_hosts
from pysmpc.parties.channel import ChannelError, PeerDisconnected
from pysmpc.parties.faults import inject_fault, parse_fault
from pysmpc.parties.frames import DEFAULT_MAX_FRAME, FRAME_HEADER_ROOM, HEARTBEAT_TAG
from pysmpc.parties.party import CLIENT, DEALER, P0, P1, Party, exchange_seeds
from pysmpc.parties.socket import SocketChannel, accept_peer, connect_peer, reply_hello
from pysmpc.parties.streams import TlsConfig
from pysmpc.runtime import wire
from pysmpc.runtime.cluster import DEFAULT_TIMEOUT
from pysmpc.runtime.datasets import DatasetBook, take_dataset
from pysmpc.runtime.ops import run_op
from pysmpc.runtime.owner_shares import take_owner_shares
from pysmpc.runtime.queries import (
    Query,
    QueryInbox,
    ServedModels,
    check_request,
    query_frame_limit,
)
from pysmpc.runtime.rounds import RoundBook, check_owner_name
from pysmpc.runtime.serving import STOP_SERVING_TAG

__all__ = ["build_parser", "main", "serve"]

PARTIES = (P0, P1, DEALER)
log = logging.getLogger("pysmpc.worker")

# Queries that arrive before the session exists wait for it, up to this many.
_MAX_EARLY_QUERIES = 64


class SetupError(RuntimeError):
    """The worker could not join a session."""


def build_parser(prog: str = "python -m pysmpc.runtime.worker") -> argparse.ArgumentParser:
    """The worker's command line; `prog` is the name its help and errors use (`pysmpc worker` from the CLI)."""
    parser = argparse.ArgumentParser(prog=prog, description="Start one party of a TCP cluster: listen on its host, "
                                     "join the other two, and serve the client's operations until it leaves.")
    parser.add_argument("--party", type=int, required=True, choices=PARTIES,
                        help="which party this worker is: 0 and 1 hold the shares, 2 is the dealer")
    parser.add_argument("--hosts", default="localhost:4000,localhost:4001,localhost:4002",
                        help="host:port of P0,P1,P2 (comma separated; default: %(default)s)")
    parser.add_argument("--tls-dir", default=None, metavar="DIR",
                        help="directory with ca.pem and pN.pem/pN.key (pysmpc certs); needed when a host is not "
                             "loopback")
    parser.add_argument("--allow-cleartext", action="store_true",
                        help="run without TLS even though some hosts are not loopback (shares cross the network "
                             "in the clear)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                        help="seconds to wait for a peer's message (default: %(default)s)")
    parser.add_argument("--startup-timeout", type=float, default=None, metavar="SECONDS",
                        help="seconds to wait for the client (default: for ever)")
    parser.add_argument("--max-frame-bytes", type=int, default=DEFAULT_MAX_FRAME, metavar="BYTES",
                        help="largest message this worker accepts; the same as serve's --max-frame-bytes "
                             "(default: %(default)s)")
    parser.add_argument("--listen-fd", type=int, default=None, help=argparse.SUPPRESS)  # socket bound by TcpCluster
    parser.add_argument("--exit-with-parent", type=int, default=None, metavar="PID",
                        help="exit as soon as process PID, which started this worker, is gone (TcpCluster passes "
                             "its own pid: a killed model owner leaves no worker behind)")
    parser.add_argument("--fault", action="append", default=[], help=argparse.SUPPRESS)  # fault tests only
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                        type=str.upper, help="what the worker logs to stderr (default: %(default)s)")
    return parser


def main(argv=None, prog: str = "python -m pysmpc.runtime.worker") -> int:
    """Run one worker; return its exit code (0 after a clean session). `prog`: the name its help uses."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    for spec in args.fault:
        try:
            parse_fault(spec)
        except ValueError as exc:
            parser.error(str(exc))

    logging.basicConfig(stream=sys.stderr, level=args.log_level.upper(),
                        format=f"%(asctime)s pysmpc-worker P{args.party} %(levelname)s %(message)s")
    if args.exit_with_parent is not None:
        _exit_with_parent(args.exit_with_parent)
        # Ctrl-C at a terminal reaches the whole process group: the owner
        # stops serving and then its workers, which must not die under it first.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _terminate)
    try:
        hosts = parse_hosts(args.hosts)
        tls = TlsConfig(args.tls_dir, args.party) if args.tls_dir else None
    except (ValueError, OSError) as exc:  # a bad --hosts, missing or unreadable TLS files
        log.error("%s", exc)
        return 2
    if args.listen_fd is not None:
        listener = socket.socket(fileno=args.listen_fd)
    else:
        host, port = hosts[args.party]
        try:
            listener = socket.create_server((host, port))
        except OSError as exc:
            log.error("cannot listen on %s:%s: %s (is the port busy?)", host, port, exc)
            return 2
    try:
        return serve(args.party, listener, hosts, tls=tls, timeout=args.timeout,
                     startup_timeout=args.startup_timeout, max_frame_bytes=args.max_frame_bytes,
                     allow_cleartext=args.allow_cleartext, faults=args.fault)
    except CleartextError as exc:
        log.error("%s", exc)
        return 2
    except SetupError as exc:
        log.error("%s", exc)
        return 1
    except KeyboardInterrupt:
        log.info("stopped by a signal; exiting")
        return 130
    finally:
        listener.close()


def _terminate(signum, frame):
    """SIGTERM ends the worker as Ctrl-C does: its connections close and its peers see it leave."""
    raise KeyboardInterrupt


# How often a spawned worker looks whether the process that started it is still there.
_PARENT_POLL = 0.5


def _exit_with_parent(pid: int) -> None:
    """Exit this process as soon as `pid` is no longer its parent (it died, even by SIGKILL, and left no goodbye).

    A worker waiting for a session, or serving, may not notice its
    owner's connection close for a while (or ever, before the owner
    connected); an orphan is re-parented, which is checked here every
    _PARENT_POLL seconds. Portable where prctl(PR_SET_PDEATHSIG) is not,
    and unlike it not tied to the thread that spawned the worker.
    """
    def gone():
        # Each log record is flushed as it is written; logging.shutdown() could
        # wait on a handler lock another thread holds.
        log.error("the process that started this worker (pid %s) is gone; exiting", pid)
        os._exit(4)

    if os.getppid() != pid:
        gone()

    def watch():
        while os.getppid() == pid:
            time.sleep(_PARENT_POLL)
        gone()

    threading.Thread(target=watch, daemon=True, name="pysmpc-parent-watch").start()


def _address(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"{host}:{port}"


def serve(index: int, listener: socket.socket, hosts, *, tls: TlsConfig | None = None,
          timeout: float = DEFAULT_TIMEOUT, startup_timeout: float | None = None,
          max_frame_bytes: int = DEFAULT_MAX_FRAME, allow_cleartext: bool = False, faults=()) -> int:
    """Join one session as party `index` on `listener` and serve it; return the exit code.

    Raises CleartextError if some host is not loopback and `tls` is None,
    unless `allow_cleartext` forces cleartext.
    """
    hosts = parse_hosts(hosts)
    check_cleartext(hosts, tls, f"worker P{index}", allow_cleartext=allow_cleartext)
    log.info("listening on %s (TLS %s)", _address(listener), "on" if tls else "off")
    kernels_ready = threading.Event()
    threading.Thread(target=_warm_up, args=(kernels_ready,), daemon=True, name="pysmpc-warm-up").start()
    session = _join(index, listener, hosts, tls, timeout, startup_timeout, max_frame_bytes)
    channel = session.channel
    for spec in faults:
        inject_fault(channel, spec)
        log.warning("fault injected: %s", spec)
    stop = threading.Event()
    inbox = QueryInbox()
    served_models = ServedModels()
    for hello, stream in session.early_queries:
        _queue_query(index, hello["session"], hello["query"], stream, inbox, timeout, max_frame_bytes)
    book = RoundBook(index) if index in (P0, P1) else None
    dataset_book = DatasetBook(index) if index in (P0, P1) else None
    threading.Thread(target=_accept_extra,
                     args=(index, listener, tls, channel.session, stop, inbox, timeout, max_frame_bytes, book,
                           served_models, dataset_book),
                     daemon=True, name="pysmpc-accept").start()
    heartbeat = _Heartbeat(channel, session.heartbeat)
    try:
        try:
            party = Party(index, channel, exchange_seeds(index, channel))
            party.store["query_inbox"] = inbox
            party.store["served_models"] = served_models
            if book is not None:
                party.store["fl_book"] = book
                party.store["dataset_book"] = dataset_book
            party.store["kernels_ready"] = kernels_ready
        except ChannelError as exc:
            channel.send_control(CLIENT, "ctl:error", f"party {index}: seed exchange failed: {exc}".encode())
            raise SetupError(f"seed exchange failed: {exc}") from None
        channel.send_control(CLIENT, "ctl:ready", b"")
        log.info("session %s ready", channel.session)
        return _loop(party, channel, heartbeat)
    finally:
        heartbeat.stop()
        stop.set()
        inbox.close(f"worker P{index} is shutting down")
        channel.close()


def _warm_up(done: threading.Event) -> None:
    from pysmpc.kernels.warm import warm_up

    try:
        log.info("Numba kernels loaded in %.1f s", warm_up())
    except Exception:  # noqa: BLE001 - the first protocol step that needs them will say what is wrong
        log.exception("loading the Numba kernels failed")
    finally:
        done.set()


class _Heartbeat:
    """While an op runs, tell the client every `interval` seconds that this worker is alive.

    A stopped or hung worker falls silent, and the client calls it lost
    after its timeout, even when no peer waits on it (a local op, an idle
    serving loop). Between ops nothing is sent: an idle session costs nothing.
    """

    def __init__(self, channel: SocketChannel, interval: float):
        self.channel = channel
        self.interval = interval
        self._busy = threading.Event()
        self._stopped = threading.Event()
        threading.Thread(target=self._run, daemon=True, name="pysmpc-heartbeat").start()

    def _run(self) -> None:
        while not self._stopped.wait(self.interval):
            if self._busy.is_set():
                try:
                    self.channel.send_control(CLIENT, HEARTBEAT_TAG, b"")
                except ChannelError as exc:
                    # The client is gone. Between ops the loop sees that and
                    # ends the session; an op may wait on something only the
                    # client could end (an idle serving loop), so end it here.
                    if not self._stopped.wait(self.interval) and self._busy.is_set():
                        log.error("the client is gone (%s) while an operation runs; exiting", exc)
                        logging.shutdown()
                        os._exit(3)
                    return

    @contextmanager
    def running(self):
        self._busy.set()
        try:
            yield
        finally:
            self._busy.clear()

    def stop(self) -> None:
        self._stopped.set()


@dataclass
class _Session:
    channel: SocketChannel
    heartbeat: float
    early_queries: list = field(default_factory=list)  # (hello, stream) of queries that came first


def _join(index, listener, hosts, tls, timeout, startup_timeout, max_frame_bytes) -> _Session:
    """Steps 1-2: the client, then the mesh. Returns the channel with every connection attached."""
    listener.settimeout(0.25)
    waiting: dict[int, tuple] = {}  # peer -> (hello, stream), answered once the session is known
    early: list = []  # queries, answered once the session is known

    def accept_until(done, deadline, what):
        while not done():
            if deadline is not None and time.monotonic() > deadline:
                raise SetupError(f"timed out waiting for {what}")
            try:
                sock, addr = listener.accept()
            except TimeoutError:
                continue
            try:
                peer, hello, stream = accept_peer(sock, index, tls=tls, timeout=min(timeout, 10.0),
                                                  max_frame_bytes=max_frame_bytes)
            except (ChannelError, OSError) as exc:
                log.warning("refused a connection from %s:%s: %s", addr[0], addr[1], exc)
                continue
            if peer == CLIENT and hello.get("describe"):
                _describe(index, hello["session"], stream, None)  # no session: no model yet
                continue
            if "submit" in hello or "dataset" in hello:
                reply_hello(stream, index, hello["session"], error=f"P{index} has no session yet: no round is open")
                log.warning("refused a data owner's shares: no session yet")
                continue
            if "query" in hello:
                if peer == CLIENT and len(early) < _MAX_EARLY_QUERIES:
                    early.append((hello, stream))
                    continue
                reply_hello(stream, index, hello["session"], error=f"P{index} has no session yet (the cluster is "
                            "starting) and enough queries waiting for it")
                log.warning("refused a query: no session yet")
                continue
            if peer != CLIENT and peer < index:
                reply_hello(stream, index, hello["session"], error=f"P{index} connects to P{peer}, not the reverse")
                log.warning("refused a connection from P%s: wrong direction", peer)
                continue
            if peer in waiting:
                waiting[peer][1].close()
            waiting[peer] = (hello, stream)

    start = time.monotonic()
    try:
        accept_until(lambda: CLIENT in waiting, None if startup_timeout is None else start + startup_timeout,
                     "the client")
    except BaseException:
        _refuse_all(index, early, "the worker did not join a session")
        raise
    session = waiting[CLIENT][0]["session"]
    heartbeat = waiting[CLIENT][0].get("heartbeat")
    if not isinstance(heartbeat, (int, float)) or isinstance(heartbeat, bool) or not 0.01 <= heartbeat <= 3600:
        heartbeat = timeout / 4
    log.info("client joined, session %s", session)
    channel = SocketChannel(index, timeout, session=session, max_frame_bytes=max_frame_bytes)
    try:
        reply_hello(waiting[CLIENT][1], index, session)
        channel.attach(CLIENT, waiting.pop(CLIENT)[1])
        deadline = time.monotonic() + timeout
        for j in PARTIES:
            if j < index:
                try:
                    stream = connect_peer(hosts[j], index, j, session=session, tls=tls,
                                          timeout=max(0.1, deadline - time.monotonic()),
                                          max_frame_bytes=max_frame_bytes)
                except ChannelError as exc:
                    raise SetupError(f"cannot join P{j}: {exc}") from None
                channel.attach(j, stream)

        def have_higher():
            for j in [p for p in waiting if p != CLIENT]:
                hello, stream = waiting.pop(j)
                if hello["session"] != session:
                    reply_hello(stream, index, session, error=f"P{index} is in session {session}")
                    log.warning("refused P%s from session %s", j, hello["session"])
                    continue
                reply_hello(stream, index, session)
                channel.attach(j, stream)
            return all(j in channel.peers for j in PARTIES if j > index)

        accept_until(have_higher, deadline, f"P{', P'.join(str(j) for j in PARTIES if j > index)}")
    except SetupError as exc:
        channel.send_control(CLIENT, "ctl:error", f"party {index}: {exc}".encode())
        channel.close()
        _refuse_all(index, early, f"the worker could not join the session: {exc}")
        raise
    except BaseException:
        channel.close()
        _refuse_all(index, early, "the worker could not join the session")
        raise
    return _Session(channel, float(heartbeat), early)


def _refuse_all(index: int, queries: list, reason: str) -> None:
    for hello, stream in queries:
        try:
            reply_hello(stream, index, hello["session"], error=reason)
        except (ChannelError, OSError):
            stream.close()


def _accept_extra(index, listener, tls, session, stop: threading.Event, inbox: QueryInbox, timeout: float,
                  max_frame_bytes: int, book: RoundBook | None = None,
                  served_models: ServedModels | None = None, dataset_book: DatasetBook | None = None) -> None:
    """During a session: queue client queries, describe the served model, take data owners' shares;
    refuse anyone else (busy)."""
    while not stop.is_set():
        try:
            sock, addr = listener.accept()
        except TimeoutError:
            continue
        except OSError:
            return

        def refuse(sock=sock, addr=addr):
            try:
                peer, hello, stream = accept_peer(sock, index, tls=tls, timeout=5.0)
            except (ChannelError, OSError) as exc:
                log.warning("refused a connection from %s:%s: %s", addr[0], addr[1], exc)
                return
            if peer == CLIENT and "submit" in hello:
                _take_submission(index, hello, stream, book, timeout)
                return
            if peer == CLIENT and "dataset" in hello:
                take_dataset(index, hello, stream, dataset_book, timeout)
                return
            request = hello.get("query")
            if peer == CLIENT and isinstance(request, dict):
                _queue_query(index, hello["session"], request, stream, inbox, timeout, max_frame_bytes)
                return
            if peer == CLIENT and hello.get("describe"):
                _describe(index, hello["session"], stream, None if served_models is None else served_models.describe())
                return
            reply_hello(stream, index, hello["session"], error=f"P{index} is busy with session {session}")
            log.warning("refused %s from %s:%s: busy", "the client" if peer == CLIENT else f"P{peer}",
                        addr[0], addr[1])

        threading.Thread(target=refuse, daemon=True).start()


def _describe(index, session, stream, description: dict | None) -> None:
    """Answer a client's "describe" hello with the served model (None: none yet), then hang up."""
    try:
        reply_hello(stream, index, str(session)[:64], extra={"model": description})
    except (ChannelError, OSError):
        pass
    stream.close()


def _take_submission(index, hello, stream, book: RoundBook | None, timeout: float) -> None:
    """A data owner's share of a round: tell it the round's rules, read the share, say whether it counts.

    The owner connects to P0 and P1 only; it is named by its hello, which
    with TLS must match its certificate ("owner:NAME", checked by
    accept_peer). The share reaches the RoundBook, never the client
    driving the session.
    """
    asked = {}

    def admit(submit):
        if book is None:
            raise ValueError(f"P{index} holds no shares of updates: owners submit to P0 and P1 only")
        if not isinstance(submit, dict):
            raise ValueError("the submission is not a JSON object")
        round_id, owner = submit.get("round"), check_owner_name(submit.get("owner"))
        rules = book.rules(round_id)
        asked.update(round_id=round_id, owner=owner, size=sum(math.prod(s) for s in rules["shapes"]))
        return f"round {round_id}, data owner {owner}", rules, 8 * asked["size"] + FRAME_HEADER_ROOM

    def receive(channel) -> str:
        book.submit(asked["round_id"], asked["owner"], channel.recv(CLIENT, tag="fl:share"))
        return f"submitted {asked['size']} elements"

    take_owner_shares(index, hello, stream, timeout, request_key="submit", tag="fl", admit=admit, receive=receive)


def _queue_query(index, query_id, request, stream, inbox: QueryInbox, timeout, max_frame_bytes) -> None:
    """Answer a query's hello and queue it, or refuse it with the reason (the client hears why)."""
    problem = "query id too long" if len(query_id) > 64 else check_request(request)
    try:
        if problem is not None:
            reply_hello(stream, index, query_id[:64], error=problem)
            log.warning("refused a query: %s", problem)
            return
        channel = SocketChannel(index, timeout, session=query_id, max_frame_bytes=max_frame_bytes,
                                max_recv_bytes=query_frame_limit(request, max_frame_bytes))
        reply_hello(stream, index, query_id)
    except (ChannelError, OSError) as exc:  # the client left already
        stream.close()
        log.info("query %s: client gone before it was queued (%s)", query_id, exc)
        return
    channel.attach(CLIENT, stream)
    query = Query(query_id, request, channel)
    refused = inbox.add(query)
    if refused is not None:
        query.fail(refused)
        log.warning("refused query %s: %s", query_id, refused)
        return
    log.info("query %s queued", query_id)


def _loop(party: Party, channel: SocketChannel, heartbeat: _Heartbeat) -> int:
    """Step 4: serve operation calls until the client leaves."""
    failed: str | None = None
    while True:
        try:
            tag, payload = channel.recv_control(CLIENT, timeout=None)
        except PeerDisconnected:
            log.info("client disconnected; exiting")
            return 0
        except ChannelError as exc:
            log.error("bad message from the client: %s; exiting", exc)
            return 1
        if tag == "ctl:shutdown":
            log.info("client said goodbye; exiting")
            return 0
        if tag == STOP_SERVING_TAG:  # meant for a serving loop that ended before it came
            continue
        name = "?"
        try:
            if tag != "ctl:call":
                raise wire.WireError(f"expected an operation call, got a '{tag}' message")
            name, args, kwargs = wire.decode_call(payload)
            if failed:
                raise RuntimeError(f"party {party.index} stopped after an earlier error ({failed})")
            with heartbeat.running():
                reply = wire.encode_result(run_op(party, name, args, kwargs))
        except Exception as exc:  # noqa: BLE001 - reported to the client, which raises it
            if not failed:
                log.error("op %r failed: %s: %s", name, type(exc).__name__, exc,
                          exc_info=not isinstance(exc, (ChannelError, wire.WireError)))
                failed = f"'{name}' failed: {type(exc).__name__}: {exc}"
                # Peers may be blocked waiting on this party: let them fail now.
                channel.abort_peers(f"party {party.index}: {failed}", peers=[p for p in PARTIES if p != party.index])
            reply = wire.encode_error(party.index, name, exc)
        try:
            channel.send_control(CLIENT, "ctl:result", reply)
        except ChannelError as exc:
            log.error("cannot answer the client: %s; exiting", exc)
            return 1


if __name__ == "__main__":
    code = main()
    # Skip the interpreter's teardown: freeing a served model's arrays and
    # the JIT-compiled kernels takes seconds on a busy machine, during which
    # the worker looks alive to whoever waits for it to go.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
