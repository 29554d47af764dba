"""Client queries waiting at a worker to be served (TCP serving).

A query client connects to each worker with a hello that carries
`query = {"shape": [...], "reveal": "logits"|"argmax", "frac_bits": F}` and
a random query id as its session. The worker's listener puts each such
connection here; P0 picks which queries run next and tells P1 and P2 their
ids and layouts, so all three serve the same queries in the same order, and
each checks its own copy of every request against P0's (runtime/serving.py).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict

from pysmpc.parties.channel import ChannelError
from pysmpc.parties.frames import FRAME_HEADER_ROOM
from pysmpc.parties.party import CLIENT

__all__ = ["QueryInbox", "Query", "ServedModels", "DEFAULT_MAX_AGE", "REVEAL_MODES", "allowed_reveals",
           "check_request", "request_layout", "query_frame_limit"]

log = logging.getLogger("pysmpc.queries")

# A query that waited this long was never named by P0 (its client reached
# only some workers) or its client gave up long ago (Client's default
# timeout is 60 s): drop it, so such queries cannot fill the inbox for good.
DEFAULT_MAX_AGE = 120.0


_MAX_RANK = 8
# Larger sizes fit no model; the bound keeps every later product of sizes small.
_MAX_SIZE = (1 << 31) - 1
# What a query may ask to see, from most revealed to least.
REVEAL_MODES = ("logits", "argmax")


def check_request(request) -> str | None:
    """What is malformed in a query's request (None: well-formed; whether it fits the model is checked later)."""
    if not isinstance(request, dict):
        return "the query request is not a JSON object"
    shape = request.get("shape")
    if (not isinstance(shape, list) or not 1 <= len(shape) <= _MAX_RANK
            or not all(isinstance(s, int) and not isinstance(s, bool) and 1 <= s <= _MAX_SIZE for s in shape)):
        return f"the query shape must be a list of 1 to {_MAX_RANK} ints in 1..{_MAX_SIZE}, got {str(shape)[:80]}"
    if request.get("reveal") not in REVEAL_MODES:
        return f"reveal must be 'logits' or 'argmax', got {str(request.get('reveal'))[:40]!r}"
    frac_bits = request.get("frac_bits")
    if not isinstance(frac_bits, int) or isinstance(frac_bits, bool):
        return "frac_bits must be an int"
    return None


def allowed_reveals(reveal: str) -> tuple[str, ...]:
    """The reveal modes a server with policy `reveal` answers: "logits" allows both, "argmax" labels only."""
    if reveal not in REVEAL_MODES:
        raise ValueError(f"reveal must be 'logits' or 'argmax', got {reveal!r}")
    return REVEAL_MODES if reveal == "logits" else ("argmax",)


def request_layout(request: dict) -> dict:
    """The fields of a (well-formed) request that decide where its rows sit in a batch and how they are run.

    Each worker holds its own copy of a request; the serving loop runs a
    batch only on layouts all three agree on (runtime/serving.py).
    """
    return {"shape": list(request["shape"]), "reveal": request["reveal"], "frac_bits": request["frac_bits"]}


class Query:
    """One client query at one worker: its id, what it asked for, its own channel."""

    def __init__(self, query_id: str, request: dict, channel):
        self.id = query_id
        self.request = request
        self.channel = channel
        self.arrived = time.monotonic()

    def key(self) -> tuple:
        """Queries with equal keys can be batched together."""
        return (tuple(self.request.get("shape", ())[1:]), self.request.get("reveal"), self.request.get("frac_bits"))

    def fail(self, reason: str) -> None:
        """Tell the client why its query gets no answer (if it still listens), then hang up."""
        try:
            self.channel.send_control(CLIENT, "query:error", reason.encode()[:2000])
        except ChannelError as exc:
            log.info("query %s: could not tell the client (%s) that: %s", self.id, exc, reason)
        self.channel.close()


class QueryInbox:
    """Thread-safe queue of arrived queries, bounded in size and age; oldest first.

    `close(reason)` (the serving loop failed: the cluster is going down)
    fails every queued query with `reason` and refuses later ones with it.
    """

    def __init__(self, capacity: int = 1024, max_age: float = DEFAULT_MAX_AGE):
        self.capacity = capacity
        self.max_age = max_age
        self._queries: OrderedDict[str, Query] = OrderedDict()
        self._cond = threading.Condition()
        self._closed: str | None = None

    def add(self, query: Query) -> str | None:
        """Queue a query; return why it was refused, or None when it is queued."""
        with self._cond:
            expired = self._expire()
            if self._closed is not None:
                reason = self._closed
            elif len(self._queries) >= self.capacity:
                reason = f"the worker's query queue is full ({self.capacity} queries)"
            elif query.id in self._queries:
                reason = "a query with this id is already queued"
            else:
                reason = None
                self._queries[query.id] = query
                self._cond.notify_all()
        _fail_expired(expired, self.max_age)
        return reason

    def close(self, reason: str) -> None:
        """Fail the queued queries with `reason` and refuse new ones with it."""
        with self._cond:
            self._closed = reason
            queued = list(self._queries.values())
            self._queries.clear()
        for query in queued:
            query.fail(reason)

    def _expire(self) -> list[Query]:
        """Take out the queries older than max_age (the lock is held)."""
        limit = time.monotonic() - self.max_age
        old = [q for q in self._queries.values() if q.arrived < limit]
        for query in old:
            del self._queries[query.id]
        return old

    def next_batch(self, max_batch: int, max_rows: int, timeout: float | None = None) -> list[Query]:
        """Wait for a query, then take it and the queued ones that batch with it.

        The oldest query decides the batch key; later ones with the same key
        join while the batch stays within `max_batch` queries and `max_rows`
        input rows. Returns [] if `timeout` passes with no query.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            expired = self._expire()
            while not self._queries:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                self._cond.wait(left)
                expired += self._expire()
            batch, rows = [], 0
            if self._queries:
                first = next(iter(self._queries.values()))
                for query in list(self._queries.values()):
                    n = int(query.request["shape"][0])
                    if query.key() != first.key() or len(batch) >= max_batch or (batch and rows + n > max_rows):
                        continue
                    batch.append(query)
                    rows += n
                    del self._queries[query.id]
        _fail_expired(expired, self.max_age)
        return batch

    def take(self, query_id: str, timeout: float) -> Query | None:
        """Wait up to `timeout` for the query with this id (P1, P2); None if it never came."""
        deadline = time.monotonic() + timeout
        with self._cond:
            expired = self._expire()
            while query_id not in self._queries:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            query = self._queries.pop(query_id, None)
        _fail_expired(expired, self.max_age)
        return query


def _fail_expired(queries: list[Query], max_age: float) -> None:
    for query in queries:
        log.warning("query %s expired in the queue", query.id)
        query.fail(f"the query waited {max_age:g} s without being served (did it reach every worker?)")


def query_frame_limit(request, max_frame_bytes: int) -> int:
    """The largest frame a query's client may send: its input share of the declared shape (uint64).

    The share is the only frame a query client sends, so a worker refuses
    anything larger as it arrives, before buffering it: a full inbox of
    queries each sending up to the cluster's max_frame_bytes could
    exhaust memory. A malformed request gets room for a header only (the
    query is refused anyway).
    """
    shape = request.get("shape") if isinstance(request, dict) else None
    if not isinstance(shape, list) or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0
                                              for s in shape):
        return min(max_frame_bytes, FRAME_HEADER_ROOM)
    elements = 1
    for s in shape:
        elements *= s
    return min(max_frame_bytes, 8 * elements + FRAME_HEADER_ROOM)


class ServedModels:
    """What a worker tells a client about the model it serves, before any query (thread-safe).

    The model owner describes each model it loads (its input and output
    shapes without the batch axis, its input range, its fractional bits);
    the serving loop adds the reveal policy while it runs. A client's
    "describe" hello is answered from here (runtime/worker.py), so a client
    can check its shapes and scale its input before it sends anything.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._models: dict = {}
        self._serving: tuple | None = None  # (model key, reveal policy)

    def add(self, key, description: dict) -> None:
        with self._lock:
            self._models[key] = dict(description)

    def remove(self, key) -> None:
        with self._lock:
            self._models.pop(key, None)
            if self._serving is not None and self._serving[0] == key:
                self._serving = None

    def serving(self, key, reveal: str | None) -> None:
        """Mark `key` as the model being served with policy `reveal` (None: serving ended)."""
        with self._lock:
            self._serving = None if reveal is None else (key, reveal)

    def describe(self) -> dict | None:
        """The served model's description with its reveal policy; else the only loaded model's; else None."""
        with self._lock:
            if self._serving is not None and self._serving[0] in self._models:
                key, reveal = self._serving
                return {**self._models[key], "reveal": reveal}
            if len(self._models) == 1:
                return {**next(iter(self._models.values())), "reveal": None}
            return None
