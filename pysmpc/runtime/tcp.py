"""Three parties as OS processes linked by TCP (optionally TLS): TcpCluster."""

from __future__ import annotations

import json
import logging
import math
import os
import secrets
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import weakref
from pathlib import Path

import numpy as np

from pysmpc.parties.addresses import check_cleartext, parse_hosts
from pysmpc.parties.channel import ChannelError, PeerDisconnected, PeerTimeout
from pysmpc.parties.frames import (
    DEFAULT_MAX_FRAME,
    FRAME_HEADER_ROOM,
    HEARTBEAT_TAG,
    FrameTooLarge,
)
from pysmpc.parties.party import CLIENT, DEALER, P0, P1
from pysmpc.parties.socket import SocketChannel, connect_peer
from pysmpc.parties.streams import TlsConfig
from pysmpc.runtime import wire
from pysmpc.runtime.cluster import (
    DEFAULT_TIMEOUT,
    BaseCluster,
    ClusterError,
    input_frames,
    stop_on_signals,
)
from pysmpc.runtime.queries import allowed_reveals
from pysmpc.runtime.serving import STOP_SERVING_TAG
from pysmpc.sharing.shares import share

__all__ = ["TcpCluster", "DEFAULT_HOSTS", "DEFAULT_TIMEOUT"]

PARTIES = (P0, P1, DEALER)
DEFAULT_HOSTS = ("localhost:4000", "localhost:4001", "localhost:4002")
_POLL = 0.25
_TAIL = 3000
# describe_model: how long the first attempt to reach a worker may take before it fails (or is waited for).
_REACH_TIMEOUT = 2.0
log = logging.getLogger("pysmpc.cluster")
serve_log = logging.getLogger("pysmpc.serve")  # one line per served query


class TcpCluster(BaseCluster):
    """Three parties in separate processes, reached over TCP; also a context manager.

    With `spawn=True` (default) `start()` launches the three workers
    (`python -m pysmpc.runtime.worker`) itself and `stop()` ends them, as
    does interpreter exit or garbage collection; with `spawn=False` it
    connects to workers started by hand on `hosts` (one session per worker
    process). With `tls_dir` every connection is mutual TLS with the
    certificates made by `pysmpc certs` (`pysmpc.runtime.certs`); without
    it, non-loopback hosts are refused with a CleartextError, unless
    `allow_cleartext=True` forces cleartext (then a CleartextWarning).

    The caller's endpoint (`client_channel`, party index CLIENT) is
    connected to all three workers: inputs go to P0 and P1 and outputs come
    back from them there, counted as in the in-process cluster; operation
    calls and results also use these connections but are not counted.

    Faults: `timeout` (seconds) is how long a party waits for a peer's
    message, and how long this caller waits for a sign of life from a
    worker running an op (workers send a heartbeat every timeout/4 s). A
    worker that exits, drops a connection or falls silent that long is
    *lost*: the call fails with a ClusterError naming it and the op (its
    `lost` lists such parties), within about `timeout` seconds and never
    later. `startup_timeout` bounds `start()` (spawning, loading kernels,
    connecting). `restart()` replaces spawned workers after a failure.

    `ephemeral_ports=True` (tests) binds free ports instead of the ones in
    `hosts`; `ports` then tells which. A spawning cluster keeps its
    listening sockets while it runs (each worker inherits its own), so a
    restarted worker listens on the same port and clients that connect
    while it starts wait for it. `worker_args` are extra worker command-line
    arguments: a tuple for every worker, or a dict {party: tuple}.

    >>> with TcpCluster() as cluster:
    ...     x = cluster.share(np.array([1.5, -2.0]))
    ...     (x * x).reveal()
    """

    def __init__(self, hosts=DEFAULT_HOSTS, spawn: bool = True, tls_dir=None, frac_bits: int = 16,
                 int_bits: int = 15, timeout: float = DEFAULT_TIMEOUT, *, ephemeral_ports: bool = False,
                 max_frame_bytes: int = DEFAULT_MAX_FRAME, worker_args: tuple | dict = (),
                 startup_timeout: float = 60.0, allow_cleartext: bool = False):
        super().__init__(frac_bits=frac_bits, int_bits=int_bits, timeout=timeout)
        self.hosts = parse_hosts(hosts)
        self.spawn = spawn
        # Absolute: spawned workers run in another directory.
        self.tls_dir = None if tls_dir is None else Path(tls_dir).absolute()
        # Checked here, before anything connects: a query client builds a cluster it never starts.
        self.allow_cleartext = bool(allow_cleartext)
        check_cleartext(self.hosts, self.tls_dir, type(self).__name__, allow_cleartext=self.allow_cleartext)
        if ephemeral_ports and not spawn:
            raise ValueError("ephemeral_ports needs spawn=True: hand-started workers choose their own ports")
        self.ephemeral_ports = ephemeral_ports
        self.max_frame_bytes = max_frame_bytes
        if isinstance(worker_args, dict):
            self.worker_args = {int(i): tuple(a) for i, a in worker_args.items()}
        else:
            self.worker_args = {i: tuple(worker_args) for i in PARTIES}
        self.startup_timeout = startup_timeout
        self._tls: TlsConfig | None = None
        self.session: str | None = None
        self.restarts = 0  # completed restarts
        # Everything the finalizer needs, outside `self` so it can run without it.
        self._state = {"processes": {}, "logs": {}, "channel": None, "listeners": {}}
        self._finalizer = weakref.finalize(self, _cleanup, self._state)
        self._failed_dispatch: dict[int, BaseException] = {}
        self._restart_hooks: list = []
        self.progress: dict[int, dict] = {}  # the latest "ctl:progress" of each worker (serving)
        self._serving = threading.Event()  # set while serve_model runs
        self._stop_reason: str | None = None

    @property
    def processes(self) -> dict[int, subprocess.Popen]:
        """The spawned worker processes by party index (empty with spawn=False)."""
        return self._state["processes"]

    @property
    def ports(self) -> list[int]:
        return [p for _, p in self.hosts]

    def worker_log(self, index: int) -> str:
        """What a spawned worker has written to stderr so far."""
        path = self._state["logs"].get(index)
        if path is None:
            return ""
        try:
            return Path(path).read_text(errors="replace")
        except OSError:
            return ""

    # -- lifecycle ----------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._state["channel"] is not None

    def start(self) -> "TcpCluster":
        if self._state["channel"] is not None:
            return self
        tls = self._client_tls()
        self.session = secrets.token_hex(8)
        self._broken = None
        try:
            if self.spawn:
                self._spawn()
            channel = SocketChannel(CLIENT, self.timeout, session=self.session, max_frame_bytes=self.max_frame_bytes)
            self._state["channel"] = channel
            deadline = time.monotonic() + self.startup_timeout
            for i in PARTIES:
                try:
                    stream = connect_peer(self.hosts[i], CLIENT, i, session=self.session, tls=tls,
                                          timeout=max(0.1, deadline - time.monotonic()),
                                          max_frame_bytes=self.max_frame_bytes,
                                          check=lambda i=i: self._check_alive(i),
                                          extra={"heartbeat": self.timeout / 4})
                except ChannelError as exc:
                    raise ClusterError(f"cannot connect to P{i} at {_fmt(self.hosts[i])}: {exc}"
                                       f"{self._exit_report(i)}") from None
                channel.attach(i, stream)
            for i in PARTIES:
                tag, payload = self._wait(i, deadline, "startup")
                if tag == "ctl:error":
                    raise ClusterError(f"P{i} could not join the session: {bytes(payload).decode(errors='replace')}"
                                       f"{self._exit_report(i, wait=2.0)}")
                if tag != "ctl:ready":
                    raise ClusterError(f"P{i} sent '{tag}' instead of 'ready' during startup")
        except BaseException as exc:
            self.stop()
            if isinstance(exc, ChannelError):
                raise ClusterError(f"the cluster failed to start: {exc}") from exc
            raise
        self.client_channel = channel
        return self

    def _spawn(self) -> None:
        """Bind the three listening sockets here (so a busy port fails now), then start the workers.

        The sockets stay open here until stop(): a restarted worker gets the
        same one, so its port cannot be taken meanwhile and clients that
        connect while it starts wait in the socket's backlog.
        """
        listeners = self._state["listeners"]
        try:
            for i in PARTIES:
                if i in listeners:
                    continue
                host, port = self.hosts[i]
                try:
                    listeners[i] = socket.create_server((host, 0 if self.ephemeral_ports else port))
                except OSError as exc:
                    raise ClusterError(f"cannot listen on {host}:{port} for P{i}: {exc.strerror or exc} "
                                       "(port busy? pass other hosts=, or stop whatever uses it)") from None
                self.hosts[i] = (host, listeners[i].getsockname()[1])
            hosts = ",".join(_fmt(h) for h in self.hosts)
            # The directory holding this pysmpc package (runtime/tcp.py is two levels down):
            # no import of the package's top level, which imports this module.
            package_root = str(Path(__file__).resolve().parents[2])
            env = dict(os.environ)
            # Run the workers on the same pysmpc as this process, whatever their cwd.
            env["PYTHONPATH"] = os.pathsep.join([package_root, *filter(None, [env.get("PYTHONPATH")])])
            env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see pysmpc.ring
            env["PYTHONUNBUFFERED"] = "1"
            # Workers must load this interpreter's libpython even when a host
            # program (R, via reticulate) put its own library path first.
            libdir = sysconfig.get_config_var("LIBDIR")
            if libdir:
                env["LD_LIBRARY_PATH"] = os.pathsep.join([libdir, *filter(None, [env.get("LD_LIBRARY_PATH")])])
            for i in PARTIES:
                fd, log_path = tempfile.mkstemp(prefix=f"pysmpc-P{i}-", suffix=".log")
                self._state["logs"][i] = log_path
                cmd = [sys.executable, "-m", "pysmpc.runtime.worker", "--party", str(i), "--hosts", hosts,
                       "--timeout", str(self.timeout), "--startup-timeout", str(self.startup_timeout + 5),
                       "--max-frame-bytes", str(self.max_frame_bytes),
                       "--listen-fd", str(listeners[i].fileno()), "--exit-with-parent", str(os.getpid()),
                       *self.worker_args.get(i, ())]
                if self.tls_dir is not None:
                    cmd += ["--tls-dir", str(self.tls_dir)]
                if self.allow_cleartext:
                    cmd += ["--allow-cleartext"]
                try:
                    self._state["processes"][i] = subprocess.Popen(
                        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=fd,
                        pass_fds=(listeners[i].fileno(),), cwd=package_root, env=env)
                finally:
                    os.close(fd)
        except BaseException:
            _close_listeners(self._state)
            raise

    def stop(self) -> None:
        """Say goodbye to the workers, close the connections, end spawned workers."""
        _cleanup(self._state)

    def restart(self) -> "TcpCluster":
        """Replace the spawned workers with fresh ones, then let shared models load again.

        For a cluster that lost a worker (see ClusterError.lost): the old
        workers are ended (their session and shares are of no more use),
        three new ones start on the same listening sockets in a new session
        with new seeds, and each callback registered with `on_restart` runs
        (a SharedModel re-shares its weights from the owner's plaintext
        copy: they reach the new workers as fresh shares, never in the
        clear). Tensors shared before are gone. Needs spawn=True: workers
        started by hand serve one session and must be restarted by hand.
        """
        if not self.spawn:
            raise ClusterError("restart() needs workers spawned by the cluster (auto_managed); "
                               "restart hand-started workers by hand, then call start()")
        _stop_workers(self._state, patience=0.0)
        _remove_logs(self._state)  # what they said is in the error that led here
        self.start()
        for hook in list(self._restart_hooks):
            callback = hook()
            if callback is None:
                self._restart_hooks.remove(hook)
            else:
                callback()
        self.restarts += 1
        return self

    def on_restart(self, callback) -> None:
        """Call `callback()` after each restart(); a bound method is held weakly (its object may go)."""
        if hasattr(callback, "__self__"):
            self._restart_hooks.append(weakref.WeakMethod(callback))
        else:
            self._restart_hooks.append(lambda: callback)

    def forget_restart(self, callback) -> None:
        """Stop calling `callback` after restarts."""
        self._restart_hooks = [h for h in self._restart_hooks if h() not in (None, callback)]

    # -- serving client queries ----------------------------------------------------------
    def serve_model(self, shared_model, num_requests: int | None = None, max_batch: int = 16, max_rows: int = 256,
                    idle_timeout: float | None = None, query_timeout: float | None = None,
                    max_restarts: int = 3, reveal: str = "logits") -> int:
        """Have the workers answer client queries; block until `num_requests` were answered, or until stopped.

        Clients connect to the workers directly (`submit_query`, from any
        process), so their inputs and outputs never pass through here. Queries
        that arrive together are batched. A client that sends nothing is
        given up after `query_timeout` s (default: the timeout). Returns how
        many were answered; a refused query (malformed, or outside the
        server's policy) gets an error, counts as failed and does not use
        up a request. `last_serve` has the counts, restarts and why serving
        stopped; each query is logged (logger "pysmpc.serve": rows, reveal
        mode, online milliseconds, or why it was refused).

        num_requests=None serves until `stop_serving()` (from another
        thread), Ctrl-C or SIGTERM (when called from the main thread: the
        batch in hand is answered first; a second signal interrupts at
        once), or until `idle_timeout` seconds pass with no query.

        If a worker is lost while serving (its process died or it stalled)
        and the cluster spawned its workers, the queries in flight fail with
        an error their clients see, the workers are restarted (`restart`:
        the model is re-shared) and serving goes on with the requests left,
        up to `max_restarts` times; the queries lost in flight count as
        failed (queued ones were not started: their clients get an error and
        do not count). Any other error, or one restart too many, is raised.

        `reveal` is the most a client may learn: "logits" (the default:
        logits, truncated to the model's fractional bits, or labels) or
        "argmax" (labels only: a logits query is refused with an error to
        its client).
        """
        allowed_reveals(reveal)  # a bad policy fails here, not on the workers
        if num_requests is not None and (isinstance(num_requests, bool) or int(num_requests) < 1):
            raise ValueError(f"num_requests must be a positive int, or None to serve until stopped; "
                             f"got {num_requests!r}")
        served = failed = restarts = 0
        self._stop_reason = None
        self._serving.set()
        stopped = "done"
        try:
            with stop_on_signals(self.stop_serving) as signals:
                while num_requests is None or served < int(num_requests):
                    if self._stop_reason is not None:
                        break
                    self.progress = {}
                    left = None if num_requests is None else int(num_requests) - served
                    try:
                        results, _ = self.call("serve", shared_model.key, left, shared_model.frac_bits,
                                               list(shared_model.graph.input_shape), max_batch=max_batch,
                                               max_rows=max_rows, idle_timeout=idle_timeout,
                                               query_timeout=query_timeout, reveal=reveal, wait=math.inf)
                    except ClusterError as exc:
                        if not exc.lost or not self.spawn or restarts >= max_restarts:
                            self.last_serve = {"served": served, "failed": failed, "restarts": restarts,
                                               "stopped": f"error: {exc}"}
                            raise
                        done = self.progress.get(P0, {})
                        served += done.get("served", 0)
                        failed += done.get("failed", 0) + done.get("in_flight", 0)
                        restarts += 1
                        log.warning("serving lost P%s (%s); restarting the workers (%d of at most %d)",
                                    ", P".join(map(str, exc.lost)), exc, restarts, max_restarts)
                        self.restart()
                        continue
                    served += results[0]["served"]
                    failed += results[0]["failed"]
                    stopped = results[0]["stopped"]
                    if stopped != "done":
                        break  # idle_timeout passed, or a stop came
                if self._stop_reason is not None:
                    stopped = self._stop_reason if not signals else signals[0]
        finally:
            self._serving.clear()
        self.last_serve = {"served": served, "failed": failed, "restarts": restarts, "stopped": stopped}
        return served

    def stop_serving(self, reason: str = "stop_serving()") -> None:
        """End a serve_model running in another thread: the workers finish the batch in hand, then it returns.

        Does nothing when no serve_model runs. Safe from any thread (not
        from a signal handler: stop_on_signals calls it from a thread).
        """
        if not self._serving.is_set():
            return
        if self._stop_reason is None:
            self._stop_reason = reason
        channel = self._state["channel"]
        if channel is not None:
            try:
                channel.send_control(P0, STOP_SERVING_TAG, b"")
            except ChannelError as exc:  # P0 is gone: serve_model hears of it anyway
                log.warning("could not ask P0 to stop serving: %s", exc)

    @property
    def serving(self) -> bool:
        """Whether a serve_model call runs now."""
        return self._serving.is_set()

    def describe_model(self, wait: float = 0.0) -> dict | None:
        """What the workers serve: {"input_shape", "output_shape", "input_range", "frac_bits", "reveal"}.

        Asks each of the three workers (a "describe" hello; this cluster
        need not be started), so it also checks that all three are
        reachable. One that is not fails at once with its address and the
        reason (a ClusterError), or, with `wait` seconds, is waited for
        with a message (logger "pysmpc.cluster", a warning: shown on
        stderr without any logging setup). Returns None when the workers
        run but serve no model yet (no session, the owner has not shared
        one, or some worker has not loaded it yet): the shapes cannot be
        checked then.
        """
        tls = self._client_tls()
        deadline = time.monotonic() + max(0.0, float(wait))
        descriptions = []
        for i in PARTIES:
            attempt = _REACH_TIMEOUT  # the first try: a worker that is up answers well within it
            while True:
                answer: dict = {}
                try:
                    stream = connect_peer(self.hosts[i], CLIENT, i, session=secrets.token_hex(8), tls=tls,
                                          timeout=attempt, max_frame_bytes=self.max_frame_bytes,
                                          extra={"describe": True}, reply=answer)
                    stream.close()
                    break
                except ChannelError as exc:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        hint = "" if wait else " (is the worker running? connect with wait=SECONDS to wait for it)"
                        raise ClusterError(f"cannot reach P{i} at {_fmt(self.hosts[i])}: {exc}{hint}") from None
                    if attempt == _REACH_TIMEOUT:
                        log.warning("waiting up to %.0f s for P%d at %s: %s", left, i, _fmt(self.hosts[i]), exc)
                    attempt = max(0.1, left)  # connect_peer retries until the worker listens
            descriptions.append(answer.get("model"))
        # The reveal policy may be set on one worker a moment before another (serving starting): compare the model.
        models = [None if d is None else {k: v for k, v in d.items() if k != "reveal"} for d in descriptions]
        if any(m is None for m in models):  # loading: the workers take the model one after another
            return None
        if any(m != models[0] for m in models):
            raise ClusterError(f"the workers describe different models (P0: {models[0]}, P1: {models[1]}, "
                               f"P2: {models[2]}): are these the three workers of one cluster?")
        return {**models[0], "reveal": next((d["reveal"] for d in descriptions if d.get("reveal")), None)}

    def submit_query(self, x, reveal: str = "logits", timeout: float = 60.0) -> np.ndarray:
        """Query the model the workers serve: share x to P0 and P1, reconstruct the answer here.

        Works from any process that knows the workers' hosts (and holds a
        client certificate when the cluster uses TLS); this cluster need not
        be started. Returns float logits, or int labels with reveal="argmax".
        """
        if reveal not in ("logits", "argmax"):
            raise ValueError(f"reveal must be 'logits' or 'argmax', got {reveal!r}")
        x = np.asarray(x, dtype=np.float64)
        encoded = self.fixed_point.encode(x)
        share_0, share_1 = share(encoded, self._client_prg)
        query_id = secrets.token_hex(16)
        request = {"shape": list(encoded.shape), "reveal": reveal, "frac_bits": self.frac_bits}
        tls = self._client_tls()
        channel = SocketChannel(CLIENT, timeout, session=query_id, max_frame_bytes=self.max_frame_bytes)
        try:
            for i in PARTIES:
                try:
                    stream = connect_peer(self.hosts[i], CLIENT, i, session=query_id, tls=tls, timeout=timeout,
                                          max_frame_bytes=self.max_frame_bytes, extra={"query": request})
                except ChannelError as exc:
                    raise ClusterError(f"cannot reach P{i} at {_fmt(self.hosts[i])} to query the model: {exc}") from None
                channel.attach(i, stream)
            channel.send(P0, share_0, tag="input")
            channel.send(P1, share_1, tag="input")
            outputs = []
            for i in (P0, P1):
                tag, payload = channel.recv_control(i, timeout=timeout)
                channel._count_received(i, "query:" + tag, payload, rounds=1)
                if tag == "query:error":
                    raise ClusterError(f"the cluster could not answer the query: "
                                       f"{bytes(payload).decode(errors='replace')}")
                if (tag != "output" or not isinstance(payload, list) or len(payload) != 2
                        or any(not isinstance(a, np.ndarray) or a.dtype != np.uint64 for a in payload)
                        or payload[1].shape != (1,)):
                    raise ClusterError(f"P{i} answered the query with an unexpected '{tag}' message")
                outputs.append(payload)
        except PeerTimeout:
            raise ClusterError(f"no answer to the query within {timeout:g} s (is the model being served?)") from None
        except ChannelError as exc:  # a worker hung up or sent garbage: say so, not a transport error
            raise ClusterError(f"the query failed: {exc}") from exc
        finally:
            self.last_query_stats = channel.stats()
            channel.close()
        (share_0, bits_0), (share_1, bits_1) = outputs
        if share_0.shape != share_1.shape or bits_0[0] != bits_1[0] or not 0 <= int(bits_0[0]) < 62:
            raise ClusterError(f"P0 and P1 answered inconsistently (shapes {share_0.shape}, {share_1.shape}; "
                               f"scales {bits_0[0]}, {bits_1[0]})")
        ring_value = share_0 + share_1
        if reveal == "argmax":
            return ring_value.view(np.int64).argmax(axis=1)
        return ring_value.view(np.int64) / float(1 << int(bits_0[0]))

    def _client_tls(self) -> TlsConfig | None:
        """This endpoint's TLS contexts, loaded once (reading keys and certificates takes ~6 ms a query)."""
        if self.tls_dir is None:
            return None
        if self._tls is None:
            self._tls = TlsConfig(self.tls_dir, CLIENT)
        return self._tls

    # -- liveness of spawned workers --------------------------------------------------
    def _check_alive(self, i: int) -> None:
        proc = self._state["processes"].get(i)
        if proc is not None and proc.poll() is not None:
            raise PeerDisconnected(f"P{i} worker exited with code {proc.returncode}")

    def _exit_report(self, i: int, wait: float = 0.0) -> str:
        """'; worker exited with code N; its log ends with: ...' for a spawned worker."""
        proc = self._state["processes"].get(i)
        if proc is None:
            return ""
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            pass
        status = "is still running" if proc.returncode is None else f"exited with code {proc.returncode}"
        tail = self.worker_log(i)[-_TAIL:].strip()
        return f"; the P{i} worker {status}" + (f"; its log ends with:\n{tail}" if tail else "")

    def _wait(self, i: int, deadline: float, what: str) -> tuple[str, object]:
        """Next control message from P{i}, checking meanwhile that its process lives."""
        channel = self._state["channel"]
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise PeerTimeout(f"P{i} did not answer {what} within the timeout{self._exit_report(i)}")
            try:
                return channel.recv_control(i, timeout=min(_POLL, left))
            except PeerTimeout:
                proc = self._state["processes"].get(i)
                if proc is not None and proc.poll() is not None:
                    raise PeerDisconnected(f"P{i} is gone while the client waited for {what}"
                                           f"{self._exit_report(i)}") from None
            except PeerDisconnected as exc:
                raise PeerDisconnected(f"{exc}{self._exit_report(i, wait=1.0)}") from None

    # -- transport for BaseCluster -------------------------------------------------------
    def _dispatch(self, name: str, args: tuple, kwargs: dict, inputs: dict) -> None:
        channel = self._state["channel"]
        if channel is None:
            raise ClusterError("the cluster is not running: call start() or use it as a context manager")
        message = wire.encode_call(name, args, kwargs)  # WireError here: nothing was sent
        first, rest = input_frames(inputs)
        for i, value in [*first.items(), *rest]:
            if value.nbytes + FRAME_HEADER_ROOM > self.max_frame_bytes:  # refused before any call leaves
                raise FrameTooLarge(f"the input for P{i} is {value.nbytes} bytes, over the frame limit of "
                                    f"{self.max_frame_bytes} bytes (max_frame_bytes): send a smaller batch")
        self._failed_dispatch = {}
        for i in PARTIES:
            try:
                channel.send_control(i, "ctl:call", message)
                if i in first:  # right behind the call: the worker reads both in one wake-up
                    channel.send(i, first[i], tag="input")
            except ChannelError as exc:
                self._failed_dispatch[i] = PeerDisconnected(f"P{i}: cannot send '{name}': {exc}"
                                                            f"{self._exit_report(i, wait=1.0)}")
        for i, value in rest:  # a batch's later parts, while the workers start on the first
            if i in self._failed_dispatch:
                continue
            try:
                channel.send(i, value, tag="input")
            except ChannelError as exc:
                self._failed_dispatch[i] = PeerDisconnected(f"P{i}: cannot send the input of '{name}': {exc}"
                                                            f"{self._exit_report(i, wait=1.0)}")

    def _collect(self, name: str, wait: float | None) -> list:
        """Wait for the three replies to `name` at once; raise a ClusterError naming who failed.

        A party is lost when its process exits, its connection drops, or it
        sends nothing, not even a heartbeat, for `timeout` seconds (it is
        stopped or hung). Once one party failed, the others get `grace`
        seconds to report (their own peer timeouts fire on a stalled party at
        most a heartbeat period after ours). `wait` (None: no limit) bounds
        the whole op.
        """
        start = time.monotonic()
        deadline = math.inf if wait is None else start + wait
        grace = 1.0 + self.timeout / 4
        outcomes: dict[int, tuple[bool, object]] = {}
        lost: list[int] = []  # parties this side saw vanish: they are the root cause
        for i, exc in self._failed_dispatch.items():
            outcomes[i] = (False, exc)
            lost.append(i)
        first_failed = lost[0] if lost else None
        pending = [i for i in PARTIES if i not in outcomes]
        heard = dict.fromkeys(pending, start)
        give_up = start + grace if outcomes else math.inf
        while pending:
            now = time.monotonic()
            if now > min(deadline, give_up):
                for i in pending:
                    why = (f"within {wait:g} s" if now > deadline else f"within {grace:g} s of P{first_failed} failing")
                    outcomes[i] = (False, PeerTimeout(f"P{i} did not answer '{name}' {why}"))
                break
            for i in list(pending):
                outcome = self._poll(i, name, heard, _POLL / len(pending))
                if outcome is None:
                    continue
                ok, value, vanished = outcome
                outcomes[i] = (ok, value)
                pending.remove(i)
                if vanished:
                    lost.append(i)
                if not ok and first_failed is None:
                    first_failed, give_up = i, time.monotonic() + grace
        errors = {i: out for i, (ok, out) in outcomes.items() if not ok}
        if errors:
            root = errors[lost[0]] if lost else _root_error(errors)
            others = "; ".join(f"P{i}: {str(e)[:300]}" for i, e in sorted(errors.items()) if e is not root)
            self._broken = f"'{name}' failed: {root}"
            raise ClusterError(f"operation '{name}' failed on party {', '.join(str(i) for i in sorted(errors))}: "
                               f"{root}" + (f" (also {others})" if others else ""), lost=lost) from root
        return [outcomes[i][1] for i in PARTIES]

    def _poll(self, i: int, name: str, heard: dict, slice_: float):
        """One look at P{i}'s link: None (still running), or (ok, result or error, whether P{i} is lost)."""
        channel = self._state["channel"]
        try:
            tag, payload = channel.recv_control(i, timeout=slice_)
        except PeerTimeout:
            proc = self._state["processes"].get(i)
            if proc is not None and proc.poll() is not None:
                return False, PeerDisconnected(f"P{i} is gone while running '{name}'{self._exit_report(i)}"), True
            if time.monotonic() - heard[i] > self.timeout:
                return False, PeerTimeout(f"P{i} stopped responding while running '{name}': nothing from it, "
                                          f"not even a heartbeat, for {self.timeout:g} s (the process is stopped, "
                                          f"hung or starved of CPU){self._exit_report(i)}"), True
            return None
        except PeerDisconnected:
            return False, PeerDisconnected(f"P{i} disconnected while running '{name}'"
                                           f"{self._exit_report(i, wait=1.0)}"), True
        except ChannelError as exc:
            return False, ChannelError(f"P{i} failed while running '{name}': {exc}{self._exit_report(i)}"), True
        heard[i] = time.monotonic()
        if tag == HEARTBEAT_TAG:
            return None
        if tag == "ctl:progress":
            try:
                progress = json.loads(bytes(payload))
                for record in progress.pop("queries", ()):
                    _log_query(record)
                self.progress[i] = progress
            except (TypeError, ValueError, AttributeError, KeyError):
                log.warning("P%s sent an unreadable progress report", i)
            return None
        if tag != "ctl:result":
            return False, ChannelError(f"P{i} answered '{name}' with a '{tag}' message"), True
        try:
            return True, wire.decode_reply(payload), False
        except wire.WireError as exc:
            return False, ChannelError(f"P{i} sent an unreadable reply to '{name}': {exc}"), True
        except Exception as exc:  # noqa: BLE001 - the error the party raised, rebuilt
            return False, exc, False


def _log_query(record: dict) -> None:
    """Log one served query, as P0 reported it (logger "pysmpc.serve")."""
    if record["refused"] is None:
        serve_log.info("query %s: %d row(s), %s, %.1f ms online", record["query"], record["rows"], record["reveal"],
                       record["online_ms"])
    else:
        serve_log.info("query %s refused (%d row(s), %s): %s", record["query"], record["rows"], record["reveal"],
                       record["refused"])


def _root_error(errors: dict[int, BaseException]) -> BaseException:
    """The error that caused the others: prefer one that is not a channel abort."""
    for exc in errors.values():
        if not isinstance(exc, ChannelError):
            return exc
    return next(iter(errors.values()))


def _fmt(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _cleanup(state: dict) -> None:
    """Stop a cluster: end the workers, close the listening sockets, remove the logs."""
    _stop_workers(state)
    _close_listeners(state)
    _remove_logs(state)


def _remove_logs(state: dict) -> None:
    for path in state.get("logs", {}).values():
        try:
            os.unlink(path)
        except OSError:
            pass
    state.get("logs", {}).clear()


def _close_listeners(state: dict) -> None:
    for listener in state.get("listeners", {}).values():
        listener.close()
    state.get("listeners", {}).clear()


def _stop_workers(state: dict, patience: float = 3.0) -> None:
    """Goodbye, close, then wait for, terminate or kill each spawned worker.

    `patience`: seconds a worker that joined gets to exit by itself after the
    goodbye (0: a failed session, terminate at once).
    """
    channel = state.get("channel")
    state["channel"] = None
    joined = set(channel.peers) if channel is not None else set()
    if channel is not None:
        for i in channel.peers:
            try:
                channel.send_control(i, "ctl:shutdown", b"")
            except ChannelError:
                pass
        channel.close()
    processes = state.get("processes", {})
    for i, proc in processes.items():
        if i not in joined or patience <= 0:  # nothing to finish cleanly
            proc.terminate()
    deadline = time.monotonic() + patience
    for proc in processes.values():
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.terminate()
    for proc in processes.values():
        try:
            proc.wait(timeout=2.0)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    processes.clear()
