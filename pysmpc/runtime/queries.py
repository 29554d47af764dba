"""Client queries waiting at a worker to be served (TCP serving).

A query client connects to each worker with a hello that carries
`query = {"shape": [...], "reveal": "logits"|"argmax", "frac_bits": F}` and
a random query id as its session. The worker's listener puts each such
connection here; P0 picks which queries run next and tells P1 and P2 their
ids, so all three serve the same queries in the same order.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict

__all__ = ["QueryInbox", "Query", "query_frame_limit"]

# Room for a frame's JSON header around a query's input share.
_FRAME_OVERHEAD = 1 << 16


class Query:
    """One client query at one worker: its id, what it asked for, its own channel."""

    def __init__(self, query_id: str, request: dict, channel):
        self.id = query_id
        self.request = request
        self.channel = channel

    def key(self) -> tuple:
        """Queries with equal keys can be batched together."""
        return (tuple(self.request.get("shape", ())[1:]), self.request.get("reveal"), self.request.get("frac_bits"))


class QueryInbox:
    """Thread-safe queue of arrived queries, bounded; oldest first."""

    def __init__(self, capacity: int = 1024):
        self.capacity = capacity
        self._queries: OrderedDict[str, Query] = OrderedDict()
        self._cond = threading.Condition()

    def add(self, query: Query) -> bool:
        """Queue a query; False if the inbox is full or the id is already here."""
        with self._cond:
            if len(self._queries) >= self.capacity or query.id in self._queries:
                return False
            self._queries[query.id] = query
            self._cond.notify_all()
            return True

    def next_batch(self, max_batch: int, max_rows: int, timeout: float | None = None) -> list[Query]:
        """Wait for a query, then take it and the queued ones that batch with it.

        The oldest query decides the batch key; later ones with the same key
        join while the batch stays within `max_batch` queries and `max_rows`
        input rows. Returns [] if `timeout` passes with no query.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._queries:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return []
                self._cond.wait(left)
            first = next(iter(self._queries.values()))
            batch, rows = [], 0
            for query in list(self._queries.values()):
                n = int(query.request["shape"][0])
                if query.key() != first.key() or len(batch) >= max_batch or (batch and rows + n > max_rows):
                    continue
                batch.append(query)
                rows += n
                del self._queries[query.id]
            return batch

    def take(self, query_id: str, timeout: float) -> Query | None:
        """Wait up to `timeout` for the query with this id (P1, P2); None if it never came."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while query_id not in self._queries:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)
            return self._queries.pop(query_id)


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
        return min(max_frame_bytes, _FRAME_OVERHEAD)
    elements = 1
    for s in shape:
        elements *= s
    return min(max_frame_bytes, 8 * elements + _FRAME_OVERHEAD)
