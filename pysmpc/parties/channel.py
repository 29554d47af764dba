"""Channels between parties: one object per party that counts every message.

A `Channel` carries numpy arrays between the parties of one cluster. The base
class does the counting (bytes, messages, rounds, per tag) and then calls the
transport's `_send_raw` / `_recv_raw`, so no transport can skip counting.

A *round* is one receive a party waits on: `exchange` (send, then wait for the
peer's message) and a bare `recv` each count one round; a bare `send` counts
none. Tags that start with ``"dealer"`` or ``"setup"`` are offline traffic
(correlated randomness and seeds); everything else is online.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "Channel",
    "ChannelError",
    "PeerTimeout",
    "PeerDisconnected",
    "TagStats",
    "is_offline_tag",
    "payload_nbytes",
]


class ChannelError(RuntimeError):
    """A message could not be delivered or was not what the protocol expected."""


class PeerTimeout(ChannelError):
    """A peer did not send within the channel's timeout."""


class PeerDisconnected(ChannelError):
    """A peer closed its connection or the cluster was aborted."""


OFFLINE_PREFIXES = ("dealer", "setup")


def is_offline_tag(tag: str) -> bool:
    return tag.startswith(OFFLINE_PREFIXES)


@dataclass
class TagStats:
    """Traffic of one party under one tag."""

    bytes_sent: int = 0
    bytes_received: int = 0
    messages_sent: int = 0
    messages_received: int = 0
    rounds: int = 0

    def add(self, other: "TagStats") -> None:
        self.bytes_sent += other.bytes_sent
        self.bytes_received += other.bytes_received
        self.messages_sent += other.messages_sent
        self.messages_received += other.messages_received
        self.rounds += other.rounds

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def payload_nbytes(data) -> int:
    """Bytes a payload occupies on the wire: the arrays' buffers, nothing else."""
    if data is None:
        return 0
    if isinstance(data, np.ndarray):
        return data.nbytes
    if isinstance(data, (bytes, bytearray, memoryview)):
        return len(data)
    if isinstance(data, (list, tuple)):
        total = 0
        for d in data:
            # The usual payload is a list of arrays: count those inline.
            total += d.nbytes if type(d) is np.ndarray else payload_nbytes(d)
        return total
    raise TypeError(f"cannot send a {type(data).__name__}: channels carry numpy arrays and bytes")


@dataclass
class _Recorder:
    """Optional transcript of everything a party received (for security tests)."""

    messages: list = field(default_factory=list)

    def record(self, frm: int, tag: str, data) -> None:
        self.messages.append((frm, tag, data))


class Channel:
    """One party's endpoint: counts, then hands payloads to the transport.

    Payloads are a numpy array, bytes, or a list/tuple of those. Subclasses
    implement `_send_raw(to, tag, data)` and `_recv_raw(frm, tag)`; both get
    the tag so a transport can check that messages arrive in program order.
    """

    # Whether run_plan splits a large batch into pipelined parts over this channel
    # (graph.plan.pipeline_parts): only where messages take time to cross.
    pipelines_batches = False

    def __init__(self, party: int, timeout: float = 30.0):
        self.party = party
        self.timeout = timeout
        self._stats: dict[str, TagStats] = defaultdict(TagStats)
        # Running sums of the online and offline tags, so totals() (taken
        # per layer by the executor) costs no walk over every tag.
        self._sums = {True: TagStats(), False: TagStats()}
        # tag -> (its TagStats, the running sum it adds to): one dict lookup
        # per message instead of a prefix test and two (cleared with the stats).
        self._counters: dict[str, tuple[TagStats, TagStats]] = {}
        self._lock = threading.Lock()
        self.recorder: _Recorder | None = None

    def _counters_of(self, tag: str) -> tuple[TagStats, TagStats]:
        counters = self._counters.get(tag)
        if counters is None:
            counters = self._counters[tag] = (self._stats[tag], self._sums[not is_offline_tag(tag)])
        return counters

    # -- counting front end -------------------------------------------------
    def send(self, to: int, data, tag: str) -> None:
        nbytes = payload_nbytes(data)
        self._send_raw(to, tag, data)
        with self._lock:
            for s in self._counters_of(tag):
                s.bytes_sent += nbytes
                s.messages_sent += 1

    def recv(self, frm: int, tag: str, rounds: int = 1):
        """The next message from `frm`; it counts as `rounds` rounds (0: it travelled within another's round)."""
        data = self._recv_raw(frm, tag)
        self._count_received(frm, tag, data, rounds=rounds)
        return data

    def exchange(self, to: int, data, tag: str):
        """Send `data` to `to` and wait for its message under the same tag: one round."""
        self.send(to, data, tag)
        return self.recv(to, tag)

    def _count_received(self, frm: int, tag: str, data, rounds: int) -> None:
        nbytes = payload_nbytes(data)
        with self._lock:
            for s in self._counters_of(tag):
                s.bytes_received += nbytes
                s.messages_received += 1
                s.rounds += rounds
        if self.recorder is not None:
            self.recorder.record(frm, tag, data)

    # -- stats ---------------------------------------------------------------
    def stats(self) -> dict[str, TagStats]:
        with self._lock:
            return {t: TagStats(**s.as_dict()) for t, s in self._stats.items()}

    def totals(self, online: bool | None = None) -> TagStats:
        """Sum over tags: all (None), online only (True) or offline only (False)."""
        total = TagStats()
        with self._lock:
            for kind in ((True, False) if online is None else (online,)):
                total.add(self._sums[kind])
        return total

    def absorb(self, other: "Channel", prefix: str) -> None:
        """Add another channel's counts to ours under `prefix:<tag>` (e.g. one client query)."""
        for tag, s in other.stats().items():
            tag = f"{prefix}:{tag}"
            with self._lock:
                self._stats[tag].add(s)
                self._sums[not is_offline_tag(tag)].add(s)

    def reset_stats(self) -> None:
        with self._lock:
            self._stats.clear()
            self._sums = {True: TagStats(), False: TagStats()}
            self._counters = {}

    def start_recording(self) -> _Recorder:
        self.recorder = _Recorder()
        return self.recorder

    # -- transport -----------------------------------------------------------
    def _send_raw(self, to: int, tag: str, data) -> None:  # pragma: no cover
        raise NotImplementedError

    def _recv_raw(self, frm: int, tag: str):  # pragma: no cover
        raise NotImplementedError

    def close(self) -> None:
        pass
