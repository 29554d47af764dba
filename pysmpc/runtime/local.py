"""Three parties as threads of one process."""

from __future__ import annotations

import logging
import math
import queue
import threading
import time

import numpy as np

from pysmpc.parties.channel import ChannelError
from pysmpc.parties.local import LocalNetwork
from pysmpc.parties.party import CLIENT, DEALER, P0, P1, Party, exchange_seeds
from pysmpc.runtime.cluster import BaseCluster, ClusterError, input_frames, stop_on_signals
from pysmpc.runtime.ops import run_op
from pysmpc.runtime.queries import allowed_reveals
from pysmpc.runtime.rounds import book_of

__all__ = ["LocalCluster", "run_parties"]

PARTIES = (P0, P1, DEALER)
serve_log = logging.getLogger("pysmpc.serve")  # one line per served query
# How often an idle serve_model looks whether it was asked to stop.
_STOP_POLL = 0.25


def run_parties(program, *, seeds: dict | None = None, timeout: float = 30.0, record: bool = False):
    """Run `program(party)` on three fresh in-process parties; return (results, parties).

    For protocol tests: `seeds` maps pairs (i, j), i < j, to 16-byte seeds
    so runs are repeatable; by default fresh seeds are agreed. With `record`,
    each channel records what its party receives.
    """
    network = LocalNetwork(4)
    channels = {i: network.channel(i, timeout) for i in PARTIES}
    parties: dict[int, Party] = {}
    results: dict[int, object] = {}
    errors: dict[int, BaseException] = {}

    def body(i):
        try:
            if seeds is None:
                own = exchange_seeds(i, channels[i])
            else:
                own = {j: seeds[(min(i, j), max(i, j))] for j in PARTIES if j != i}
            party = Party(i, channels[i], own)
            parties[i] = party
            if record:
                channels[i].start_recording()
            results[i] = program(party)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            errors[i] = exc
            network.abort()

    threads = [threading.Thread(target=body, args=(i,), name=f"pysmpc-party-{i}") for i in PARTIES]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        first = _root_error(errors)
        raise first
    return [results[i] for i in PARTIES], [parties[i] for i in PARTIES]


def _root_error(errors: dict[int, BaseException]) -> BaseException:
    """The error that caused the others: prefer one that is not a channel abort."""
    for exc in errors.values():
        if not isinstance(exc, ChannelError):
            return exc
    return next(iter(errors.values()))


class LocalCluster(BaseCluster):
    """Three in-process parties (threads) linked by queues; also a context manager.

    >>> with LocalCluster() as cluster:
    ...     x = cluster.share(np.array([1.5, -2.0]))
    ...     (x * x).reveal()
    """

    def __init__(self, frac_bits: int = 16, int_bits: int = 15, timeout: float = 30.0,
                 seeds: dict | None = None):
        super().__init__(frac_bits=frac_bits, int_bits=int_bits, timeout=timeout)
        self._seeds = seeds
        self._network: LocalNetwork | None = None
        self._threads: list[threading.Thread] = []
        self._tasks = {i: queue.SimpleQueue() for i in PARTIES}
        self._results = {i: queue.SimpleQueue() for i in PARTIES}
        self.parties: dict[int, Party] = {}
        self._queries: queue.Queue = queue.Queue()
        self._serving = threading.Event()  # set while serve_model runs
        self._stop_reason: str | None = None

    # -- lifecycle ------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._network is not None

    def start(self) -> "LocalCluster":
        if self._network is not None:
            return self
        self._network = LocalNetwork(4)
        self.client_channel = self._network.channel(CLIENT, self.timeout)
        ready = {i: queue.Queue() for i in PARTIES}
        for i in PARTIES:
            t = threading.Thread(target=self._serve, args=(i, ready[i]), name=f"pysmpc-party-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        for i in PARTIES:
            status = ready[i].get(timeout=self.timeout)
            if isinstance(status, BaseException):
                self.stop()
                raise ClusterError(f"party {i} failed to start: {status}") from status
        return self

    def stop(self) -> None:
        for i in PARTIES:
            self._tasks[i].put(None)
        if self._network is not None:
            self._network.abort()
        for t in self._threads:
            t.join(timeout=5)
        self._threads = []
        self._network = None

    def _serve(self, i: int, ready: queue.Queue) -> None:
        channel = self._network.channel(i, self.timeout)
        try:
            if self._seeds is None:
                seeds = exchange_seeds(i, channel)
            else:
                seeds = {j: self._seeds[(min(i, j), max(i, j))] for j in PARTIES if j != i}
            self.parties[i] = Party(i, channel, seeds)
            book_of(self.parties[i])  # made now: owners reach it from other threads
        except BaseException as exc:  # noqa: BLE001
            ready.put(exc)
            return
        ready.put(True)
        party = self.parties[i]
        while True:
            task = self._tasks[i].get()
            if task is None:
                return
            name, args, kwargs = task
            try:
                self._results[i].put((True, run_op(party, name, args, kwargs)))
            except BaseException as exc:  # noqa: BLE001 - reported to the caller
                self._network.abort()
                self._results[i].put((False, exc))

    # -- transport for BaseCluster ----------------------------------------------
    def _dispatch(self, name: str, args: tuple, kwargs: dict, inputs: dict) -> None:
        if self._network is None:
            raise ClusterError("the cluster is not running: call start() or use it as a context manager")
        first, rest = input_frames(inputs)
        for i in PARTIES:
            self._tasks[i].put((name, args, kwargs))
            if i in first:
                self.client_channel.send(i, first[i], tag="input")
        for i, value in rest:
            self.client_channel.send(i, value, tag="input")

    def _collect(self, name: str, wait: float | None) -> list:
        if wait is None:
            wait = self.timeout + 5
        outcomes = {}
        for i in PARTIES:
            try:
                outcomes[i] = self._results[i].get(timeout=None if wait == math.inf else wait)
            except queue.Empty:
                outcomes[i] = (False, ClusterError(f"party {i} did not finish '{name}' in time"))
        errors = {i: out for i, (ok, out) in outcomes.items() if not ok}
        if errors:
            self._broken = f"'{name}' failed: {_root_error(errors)}"
            raise ClusterError(f"operation '{name}' failed on party "
                               f"{', '.join(str(i) for i in errors)}: {_root_error(errors)}") from _root_error(errors)
        return [outcomes[i][1] for i in PARTIES]

    # -- serving in-process clients ----------------------------------------------
    def describe_model(self, wait: float = 0.0) -> dict | None:
        """What the parties serve (as TcpCluster.describe_model); None if not started or no model is shared."""
        party = self.parties.get(P0)
        served = None if party is None else party.store.get("served_models")
        return None if served is None else served.describe()

    def submit_query(self, x, reveal: str = "logits", timeout: float = 60.0):
        """Queue a client query for `serve_model` and wait for its answer."""
        reply: queue.Queue = queue.Queue(maxsize=1)
        self._queries.put((x, reveal, reply))
        try:
            ok, value = reply.get(timeout=timeout)
        except queue.Empty:
            raise ClusterError(f"no model served the query within {timeout:g} s (is model.serve() running?)") from None
        if not ok:
            raise value
        return value

    def serve_model(self, shared_model, num_requests: int | None = None, timeout: float | None = None,
                    progress: bool = False, reveal: str = "logits") -> int:
        """Answer queued client queries with `shared_model`; returns how many were answered.

        Blocks until `num_requests` queries were answered (None: until
        `stop_serving()`, Ctrl-C or SIGTERM, or until `timeout` passes with
        no query). A failed or refused query is answered with its error,
        does not use up a request and does not stop the loop. `reveal` is
        the most a client may learn, as TcpCluster.serve_model: "argmax"
        refuses logits queries. Each query is logged (logger "pysmpc.serve").
        """
        allowed = allowed_reveals(reveal)
        served = failed = 0
        self._stop_reason = None
        self._serving.set()
        stopped = "done"
        idle_since = time.monotonic()
        try:
            with stop_on_signals(self.stop_serving) as signals:
                while num_requests is None or served < num_requests:
                    if self._stop_reason is not None:
                        stopped = signals[0] if signals else self._stop_reason
                        break
                    if timeout is not None and time.monotonic() - idle_since >= timeout:
                        stopped = "idle"
                        break
                    try:
                        x, asked, reply = self._queries.get(timeout=_STOP_POLL)
                    except queue.Empty:
                        continue
                    start = time.perf_counter()
                    rows = int(np.shape(x)[0]) if np.ndim(x) > len(shared_model.graph.input_shape) else 1
                    try:
                        if asked not in allowed:
                            raise ClusterError(f"this server reveals only {' or '.join(allowed)} (the model owner's "
                                               f"policy); a {asked!r} query is refused: ask for reveal='argmax'")
                        reply.put((True, shared_model.predict(x, reveal=asked)))
                        served += 1
                        serve_log.info("query: %d row(s), %s, %.1f ms", rows, asked,
                                       1000 * (time.perf_counter() - start))
                    except Exception as exc:  # noqa: BLE001 - the client gets the error
                        reply.put((False, exc))
                        failed += 1
                        serve_log.info("query refused (%d row(s), %s): %s", rows, asked, exc)
                        if self._broken:
                            raise
                    idle_since = time.monotonic()
        finally:
            self._serving.clear()
        self.last_serve = {"served": served, "failed": failed, "restarts": 0, "stopped": stopped}
        return served

    def stop_serving(self, reason: str = "stop_serving()") -> None:
        """End a serve_model running in another thread after the query in hand (no-op when none runs)."""
        if self._serving.is_set() and self._stop_reason is None:
            self._stop_reason = reason

    @property
    def serving(self) -> bool:
        """Whether a serve_model call runs now."""
        return self._serving.is_set()

    def round_books(self) -> dict:
        """P0's and P1's secure-aggregation round books: in-process data owners submit their shares there.

        (Over TCP an owner connects to the workers itself; in one process
        this is its stand-in for that connection. Nothing submitted passes
        through `client_channel`, the aggregator's endpoint.)
        """
        if self._network is None:
            raise ClusterError("the cluster is not running: call start() or use it as a context manager")
        return {i: book_of(self.parties[i]) for i in (P0, P1)}

    def dataset_books(self) -> dict:
        """P0's and P1's training-data books: in-process data owners hand their shares there (fl.data_owner)."""
        from pysmpc.runtime.datasets import dataset_book_of

        if self._network is None:
            raise ClusterError("the cluster is not running: call start() or use it as a context manager")
        return {i: dataset_book_of(self.parties[i]) for i in (P0, P1)}

    def party_channels(self) -> dict:
        return {i: self.parties[i].channel for i in PARTIES}
