"""Run independent protocol programs of one party together: in lockstep (shared rounds) or pipelined.

Two branches of a network (say the two convolutions of an inception block)
do not depend on each other, so their openings can travel together: when
every running program has reached its next exchange, one message carries
all of their payloads, and each gets its part of the peer's reply. The
branches then cost the rounds of the longest, not the sum, while every
byte is still sent (and counted) once.

Each program runs as a greenlet (a coroutine of the party's own thread);
one runs at a time and the order is fixed (lowest index first), so P0
and P1 make the same merged exchanges in the same order: the merge is
deterministic, and a program sees exactly what it would see alone.

Pipelined (`run_pipelined`), the programs do not wait for each other: an
exchange is sent at once, and while its reply crosses the link the next
program computes. The parts of a batch then overlap one part's
computation with another's transfer, where a link's bandwidth or delay
would otherwise leave the party idle. Replies are taken in the order the
exchanges were sent, which both parties share, and a program's round is
counted once, for program 0: the others travel within its rounds.

The dealer is kept out of the interleaving. The caller first runs every
program's dealer calls alone, in program order, each inside
``Dealer.capturing`` (P2 deals as for a sequential run); here each program
then replays its own bundle through a Dealer of its own, so the order in
which the programs happen to call the dealer does not matter.
"""

from __future__ import annotations

import copy
import time
from collections import deque
from typing import Callable

from greenlet import greenlet

from pysmpc.parties.channel import TagStats, payload_nbytes
from pysmpc.parties.dealer import Bundle, Dealer
from pysmpc.parties.party import Party

__all__ = ["run_in_lockstep", "run_pipelined", "TaskStats"]

# Longest tag a merged exchange gets (the joined tags of its programs, else shortened).
_MAX_TAG = 200


class TaskStats:
    """What one program did online: seconds it ran, bytes it sent, rounds attributed to it.

    A merged round is attributed to the lowest-indexed program in it, so the
    programs' rounds add up to the rounds the party waited on.
    """

    __slots__ = ("seconds", "bytes_sent", "rounds")

    def __init__(self):
        self.seconds = 0.0
        self.bytes_sent = 0
        self.rounds = 0


class _Aborted(Exception):
    """Raised inside a parked program when another one failed: it unwinds without running further."""


class _Task:
    def __init__(self, index: int, fn: Callable, party: Party):
        self.index = index
        self.fn = fn
        self.party = party
        self.stats = TaskStats()
        self.glet: greenlet | None = None
        self.outgoing = None  # (payload, tag) while parked at an exchange
        self.incoming = None
        self.done = False
        self.error: BaseException | None = None
        self.aborted = False


class _ParkingChannel:
    """party.channel inside a program: an exchange parks the program until the merged round."""

    def __init__(self, scheduler: "_Scheduler", task: _Task, channel):
        self._scheduler = scheduler
        self._task = task
        self._channel = channel

    def exchange(self, to: int, data, tag: str):
        if to != self._task.party.peer:
            raise RuntimeError(f"a program in lockstep exchanges with its peer only, not party {to}")
        return self._scheduler.park(self._task, data, tag)

    def send(self, to, data, tag):
        raise RuntimeError(f"a program in lockstep cannot send '{tag}' on its own: only exchanges are merged")

    def recv(self, frm, tag):
        raise RuntimeError(f"a program in lockstep cannot receive '{tag}' on its own: only exchanges are merged")

    def totals(self, online: bool | None = None) -> TagStats:
        """This program's own online traffic so far (what run_plan's per-layer profile reads)."""
        total = TagStats()
        total.bytes_sent, total.rounds = self._task.stats.bytes_sent, self._task.stats.rounds
        return total


class _Scheduler:
    """Hands the turn to one program at a time, each a greenlet of the party's own thread.

    Greenlets switch in about a microsecond and share the thread: no
    operating-system thread per program, no lock, and no contention for
    Python's GIL with the other threads of the process (its links'
    readers, or in-process the other parties), which made threads cost
    about half a millisecond per hand-over.
    """

    def __init__(self, party: Party):
        self.party = party

    # -- program side ------------------------------------------------------------------
    def park(self, task: _Task, data, tag: str):
        task.outgoing = (data, tag)
        task.glet.parent.switch()
        if task.aborted:
            raise _Aborted()
        return task.incoming

    def _body(self, task: _Task) -> None:
        try:
            if not task.aborted:
                task.fn(task.party)
        except _Aborted:
            pass
        except BaseException as exc:  # noqa: BLE001 - handed to the scheduler, which raises it
            task.error = exc
        finally:
            task.done = True

    # -- scheduler side ----------------------------------------------------------------
    def run_slice(self, task: _Task) -> None:
        """Let `task` run until it parks at an exchange or ends."""
        start = time.perf_counter()
        if task.glet is None:
            task.glet = greenlet(lambda: self._body(task))
        task.glet.switch()
        task.stats.seconds += time.perf_counter() - start

    def abort(self, tasks) -> None:
        for task in tasks:
            if task.glet is not None and not task.done:
                task.aborted = True
                self.run_slice(task)


def run_in_lockstep(party: Party, programs: list[Callable[[Party], None]], deps: list[list[int]],
                    bundles: list[Bundle]) -> list[TaskStats]:
    """Run programs[i](its_party) once deps[i] have ended, merging the exchanges of those running together.

    Each program gets a copy of `party` whose channel merges its exchanges
    and whose dealer replays bundles[i] (captured by the caller, in program
    order). Programs may only exchange with the peer (open, select): what
    protocols do online.

    1. Start every program whose dependencies have ended (lowest index
       first), and let each run until it reaches an exchange or ends; an
       ending program may make others ready, which start in turn.
    2. Send the payloads of all parked programs as one message (1 round)
       and give each its part of the peer's message; resume them in order.
    Repeat until every program has ended.

    Returns each program's TaskStats. Raises the first error a program
    raised (the others are unwound first).
    """
    return _run_tasks(party, programs, bundles, lambda scheduler, tasks: _schedule(party, scheduler, tasks, deps))


def run_pipelined(party: Party, programs: list[Callable[[Party], None]], bundles: list[Bundle]) -> list[TaskStats]:
    """Run independent programs[i](its_party), each exchange sent at once: one's transfer overlaps another's work.

    Each program gets a copy of `party` as in run_in_lockstep (its dealer
    replays bundles[i]; exchanges with the peer only). The schedule:

    1. Run the first ready program until it reaches an exchange (its
       message is sent now) or ends.
    2. When no program is ready, take the peer's reply to the oldest
       exchange still unanswered; its program is ready again.

    The peer, running the same programs, sends its messages in the same
    order, so replies arrive in the order they are taken. Every program's
    bytes are counted; its rounds only for program 0 (the others' messages
    cross the link within program 0's rounds), so a party's round count is
    that of one program. Returns each program's TaskStats (rounds: each
    program's own exchanges). Raises the first error a program raised.
    """
    return _run_tasks(party, programs, bundles, lambda scheduler, tasks: _pipeline(party, scheduler, tasks))


def _run_tasks(party: Party, programs: list, bundles: list[Bundle], schedule: Callable) -> list[TaskStats]:
    """Give each program a view of `party` replaying its bundle, run `schedule`, check the material was used up."""
    if not party.computes:
        raise RuntimeError("run_in_lockstep and run_pipelined run the online part: the dealer has none")
    scheduler = _Scheduler(party)
    tasks = []
    for index, fn in enumerate(programs):
        view = copy.copy(party)  # shares the store (weights, opened masks) with the party
        task = _Task(index, fn, view)
        view.channel = _ParkingChannel(scheduler, task, party.channel)
        view._dealer = Dealer(view)
        tasks.append(task)
    contexts = []
    try:
        for task, bundle in zip(tasks, bundles):
            context = task.party._dealer.replaying(bundle)
            context.__enter__()
            contexts.append(context)
        schedule(scheduler, tasks)
    except BaseException:
        # Unwind the programs still parked; their material is dropped with
        # their dealers (a failed run's bundles are used: never replayed).
        scheduler.abort(tasks)
        raise
    for context in contexts:  # each program used exactly its material (else MaterialMismatch)
        context.__exit__(None, None, None)
    return [task.stats for task in tasks]


def _pipeline(party: Party, scheduler: _Scheduler, tasks: list[_Task]) -> None:
    ready = deque(tasks)
    unanswered: deque = deque()  # programs whose exchange is sent, oldest first
    while ready or unanswered:
        if ready:
            task = ready.popleft()
            scheduler.run_slice(task)
            _raise_if_failed(tasks)
            if not task.done:
                data, tag = task.outgoing
                party.channel.send(party.peer, data, tag=tag)
                task.stats.bytes_sent += payload_nbytes(data)
                task.stats.rounds += 1
                unanswered.append(task)
            continue
        task = unanswered.popleft()
        task.incoming = party.channel.recv(party.peer, tag=task.outgoing[1], rounds=int(task.index == 0))
        task.outgoing = None
        ready.append(task)


def _schedule(party: Party, scheduler: _Scheduler, tasks: list[_Task], deps: list[list[int]]) -> None:
    started = [False] * len(tasks)

    def start_ready() -> None:
        progress = True
        while progress:
            progress = False
            for task in tasks:
                if not started[task.index] and all(tasks[d].done for d in deps[task.index]):
                    started[task.index] = True
                    scheduler.run_slice(task)
                    _raise_if_failed(tasks)
                    progress = True

    start_ready()
    while True:
        parked = [t for t in tasks if started[t.index] and not t.done]
        if not parked:
            break
        _merged_exchange(party, parked)
        for task in parked:
            scheduler.run_slice(task)
            _raise_if_failed(tasks)
        start_ready()
    if not all(started):
        raise RuntimeError("lockstep: some programs never became ready (their dependencies form a cycle)")


def _raise_if_failed(tasks: list[_Task]) -> None:
    for task in tasks:
        if task.error is not None:
            raise task.error


def _merged_exchange(party: Party, parked: list[_Task]) -> None:
    """One round: every parked program's payload in one message, the peer's split back the same way."""
    flat, layout = [], []
    for task in parked:
        data, _ = task.outgoing
        parts = list(data) if isinstance(data, (list, tuple)) else [data]
        layout.append((isinstance(data, (list, tuple)), len(parts)))
        flat.extend(parts)
        task.stats.bytes_sent += payload_nbytes(data)
    # One program alone keeps its own tag: a run without parallel branches
    # sends exactly what the sequential executor sends.
    tags = list(dict.fromkeys(task.outgoing[1] for task in parked))
    tag = "+".join(tags)
    if len(tag) > _MAX_TAG:  # many branches at once: name the first, count the rest (the stats group by tag)
        tag = f"{tags[0]}+{len(tags) - 1} more"

    theirs = party.channel.exchange(party.peer, flat, tag=tag)
    if not isinstance(theirs, (list, tuple)) or len(theirs) != len(flat):
        raise RuntimeError(f"{party.name}: merged exchange '{tag}': the peer sent {len(theirs)} parts, "
                           f"expected {len(flat)} (the parties are running different programs)")
    parked[0].stats.rounds += 1
    at = 0
    for task, (is_list, count) in zip(parked, layout):
        part = theirs[at : at + count]
        task.incoming = list(part) if is_list else part[0]
        task.outgoing = None
        at += count

