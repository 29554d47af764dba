"""Serving client queries on the workers (TCP): the loop behind the op "serve".

A query client connects to each worker with a hello that carries its
request (runtime/queries.py), so each worker holds its own copy, and a
client may tell the three workers different things. Whatever it tells
them, one client must neither change another client's answer nor stop the
server. So every batch runs on the layout P0 announces, and every party
checks its own copy of each request against that layout: a query whose
copies disagree is refused on all three parties (its client is told why)
and the rest of the batch is answered.

1. Agree on a batch (control message "serve:next"). P0 takes the oldest
   queued query and those that batch with it and announces, in order,
   each one's id and layout (its rows, reveal mode and fractional bits
   as P0 was told them) and the batch's one reveal mode. P1 and P2 take
   the same queries from their own inboxes.
2. Check, then agree (control message "serve:ok"). Each party checks each
   query: it reached this party, this party's copy of the request has the
   announced layout, the layout fits the model and the server's limits
   (rows, fractional bits, the reveal modes it allows), and on P0 and P1
   the client's input share has that shape. Each party sends the other two
   its refusals with their reasons, so all three drop the same queries;
   each refused client gets the reasons, and the loop goes on.
3. Run the model once on the remaining queries, in the announced order:
   logits are truncated to F fractional bits (ops.reveal_output_truncated),
   argmax queries get the secure argmax; P0 and P1 send each client its
   rows of the output shares and their fractional bits.

Client input is read within one deadline per batch (`query_timeout`, also
when a client trickles its share byte by byte), so the parties' waits on
each other stay bounded whatever the clients do.

Only P0 counts answered queries and decides when serving ends (the count
is reached, `idle_timeout` passed, or the caller sent "ctl:stop-serving"):
it then announces an empty batch, and P1 and P2 return with it.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass

import numpy as np

from pysmpc.parties.channel import ChannelError, PeerDisconnected, PeerTimeout
from pysmpc.parties.frames import ABORT_TAG
from pysmpc.parties.party import CLIENT, DEALER, P0, P1, Party
from pysmpc.protocols import argmax as argmax_protocol
from pysmpc.runtime.ops import _run_model, _stock, op_prepare, reveal_output_truncated
from pysmpc.runtime.queries import allowed_reveals, request_layout
from pysmpc.sharing.shares import AShare, concat_shares

__all__ = ["serve", "STOP_SERVING_TAG"]

_log = logging.getLogger("pysmpc.serving")
PARTIES = (P0, P1, DEALER)
# A refusal reason travels between workers and to the client: keep it short.
_MAX_REASON = 500
# Seconds past the input deadline after which a client still sending its share is hung up on.
_HANG_UP_AFTER = 1.0
# How often P0, waiting for queries, looks whether the caller asked it to stop.
_STOP_POLL = 0.25
# The control message a caller sends P0 to end serving (TcpCluster.stop_serving).
STOP_SERVING_TAG = "ctl:stop-serving"


@dataclass(frozen=True)
class _Limits:
    """What a query must fit, the same on all three parties."""

    frac_bits: int
    input_shape: tuple
    max_rows: int
    allowed: tuple


@dataclass
class _Batch:
    """One batch as P0 announced it: its reveal mode, each query's layout, and this party's copy of each."""

    reveal: str
    layouts: list  # [{"shape", "reveal", "frac_bits"}] in the announced order
    queries: list  # this party's Query for each, or None when it never reached this party


def serve(party: Party, model_key: str, num_requests: int | None, frac_bits: int, input_shape: list,
          max_batch: int = 16, max_rows: int = 256, idle_timeout: float | None = None,
          prepare_ahead: bool = True, query_timeout: float | None = None, reveal: str = "logits") -> dict:
    """Answer client queries that arrive at the workers (TCP): steps in the module docstring.

    Serving ends once `num_requests` queries were answered (refused ones do
    not count), when `idle_timeout` seconds pass with no query, or when the
    caller sends P0 "ctl:stop-serving" (None: serve until then; P0 looks
    for it whenever it waits for queries, and stops between batches).

    `reveal` is the most a client may learn: "logits" (logits or labels)
    or "argmax" (labels only; a logits query is refused with an error).

    P0 tells the caller how far it got before and after each batch (a
    "ctl:progress" control message: served, failed, in flight, and after a
    batch one record per query: its rows, reveal mode, online
    milliseconds, or why it was refused), and logs each query. With
    prepare_ahead, the dealer's material for a batch of one is made before
    the first query and, after each batch, for the next batch of the same
    size and reveal mode (offline, while waiting for queries; op_prepare).

    A client only ever costs its own query: one that sends nothing, or not
    all of its share, is given up `query_timeout` seconds after its batch
    was announced (default: the channel's timeout); one that hangs up,
    sends garbage or tells the workers different things gets an error. If
    the serving itself fails (a peer is lost), the batch's clients and
    every queued one are told why before the error propagates, and this
    worker takes no more queries.

    Query traffic is added to the party's stats under "query:<tag>".
    Returns {"served": answered, "failed": refused or not delivered,
    "stopped": why serving ended}, as P0 counts them ("done", "idle",
    "stop requested" or "caller gone"; P1 and P2 follow P0).
    """
    inbox = party.store.get("query_inbox")
    if inbox is None or not hasattr(party.channel, "send_control"):
        raise RuntimeError("this cluster takes no client queries: serving needs workers over TCP")
    limits = _Limits(int(frac_bits), tuple(int(s) for s in input_shape), int(max_rows), allowed_reveals(reveal))
    query_timeout = party.channel.timeout if query_timeout is None else float(query_timeout)
    served_models = party.store.get("served_models")
    if served_models is not None:
        served_models.serving(model_key, reveal)
    try:
        return _serve_loop(party, model_key, inbox, num_requests, limits, max_batch, max_rows, idle_timeout,
                           prepare_ahead, query_timeout)
    finally:
        if served_models is not None:
            served_models.serving(model_key, None)


def _serve_loop(party, model_key, inbox, num_requests, limits: _Limits, max_batch, max_rows, idle_timeout,
                prepare_ahead, query_timeout) -> dict:
    """serve()'s loop over batches."""
    served = failed = 0
    stopped = "done"
    if prepare_ahead:
        _prepare(party, model_key, 1, limits, limits.allowed[0])
    while True:
        batch = None
        try:
            # Only P0 counts answers (only it knows which reached their client):
            # it announces an empty batch when done, and P1 and P2 follow it.
            wanted = max_batch if num_requests is None else min(max_batch, num_requests - served)
            batch, why = _agree_on_batch(party, inbox, wanted, max_rows, idle_timeout, query_timeout)
            if batch is None:
                stopped = why
                break
            _report_progress(party, served, failed, in_flight=len(batch.queries))
            start = time.perf_counter()
            outcomes, rows = _serve_batch(party, model_key, batch, limits, query_timeout)
            online_ms = 1000 * (time.perf_counter() - start)
        except BaseException as exc:
            reason = f"party {party.index} stopped serving: {type(exc).__name__}: {exc}"
            for query in batch.queries if batch is not None else ():
                if query is not None and party.index in (P0, P1):
                    query.fail(f"the cluster failed while answering this query ({reason})")
            inbox.close(f"this worker no longer serves ({reason})")
            raise
        finally:
            for query in batch.queries if batch is not None else ():
                if query is not None:
                    party.channel.absorb(query.channel, "query")
                    query.channel.close()
        answered = sum(outcome is None for outcome in outcomes)
        served += answered
        failed += len(outcomes) - answered
        records = _query_records(party, batch, outcomes, online_ms)
        _report_progress(party, served, failed, in_flight=0, queries=records)
        if prepare_ahead and rows:
            # Idle until the next query: make its material now (offline), for
            # the batch size and reveal mode just seen, so it runs without waiting
            # on P2. After every batch that ran, also the last: the three parties
            # must make the same material, and only P0 knows which batch is last.
            _prepare(party, model_key, rows, limits, batch.reveal)
    return {"served": served, "failed": failed, "stopped": stopped}


def _query_records(party, batch: _Batch, outcomes: list, online_ms: float) -> list[dict]:
    """One record per query of a batch for the caller's log (P0; also logged here)."""
    if party.index != P0:
        return []
    records = []
    for query, layout, outcome in zip(batch.queries, batch.layouts, outcomes):
        record = {"query": query.id[:8], "rows": layout["shape"][0], "reveal": layout["reveal"],
                  "online_ms": round(online_ms, 1), "refused": outcome}
        records.append(record)
        if outcome is None:
            _log.info("query %s: %d row(s), %s, %.1f ms online", record["query"], record["rows"], record["reveal"],
                      online_ms)
        else:
            _log.info("query %s refused: %s", record["query"], outcome)
    return records


def _prepare(party, model_key, rows: int, limits: _Limits, reveal: str) -> None:
    shape = (rows, *limits.input_shape)
    truncate_output = reveal_output_truncated(reveal)
    if not _stock(party, model_key, shape, truncate_output):
        op_prepare(party, model_key, list(shape), limits.frac_bits, truncate_output=truncate_output)


def _report_progress(party, served: int, failed: int, in_flight: int, queries: list = ()) -> None:
    """P0 tells the caller how far serving got, so it can count what a lost worker cut short, and log each query."""
    if party.index == P0:
        progress = {"served": served, "failed": failed, "in_flight": in_flight, "queries": list(queries)}
        party.channel.send_control(CLIENT, "ctl:progress", json.dumps(progress).encode())


def _recv_from_party(party, frm: int, expected: str, timeout):
    """The next control message from party `frm`, which must be tagged `expected`."""
    tag, payload = party.channel.recv_control(frm, timeout=timeout)
    if tag == ABORT_TAG:
        raise PeerDisconnected(f"{party.name}: party {frm} gave up ({bytes(payload).decode(errors='replace')}) "
                               f"while we waited for '{expected}'")
    if tag != expected:
        raise RuntimeError(f"{party.name}: expected '{expected}' from party {frm}, got '{tag}'")
    return payload


# -- step 1 -----------------------------------------------------------------------------
def _agree_on_batch(party, inbox, max_batch, max_rows, idle_timeout, query_timeout) -> tuple[_Batch | None, str]:
    """The same batch, in the same order and layout, on all three parties; (None, why) to stop serving."""
    if party.index == P0:
        queries, why = _wait_for_queries(party, inbox, max_batch, max_rows, idle_timeout) if max_batch else ([], "done")
        layouts = [request_layout(q.request) for q in queries]
        # next_batch batches queries of one key only, reveal mode included.
        reveal = layouts[0]["reveal"] if queries else None
        announcement = {"reveal": reveal, "queries": [[q.id, layout] for q, layout in zip(queries, layouts)]}
        for j in (P1, DEALER):
            party.channel.send_control(j, "serve:next", json.dumps(announcement).encode())
        return (_Batch(reveal, layouts, queries), "") if queries else (None, why)
    # Waiting for P0 has no time limit: serving may idle for hours. If P0
    # dies the connection drops; if it stalls, the caller's liveness check
    # (heartbeats) notices and ends the session.
    announcement = json.loads(bytes(_recv_from_party(party, P0, "serve:next", timeout=None)))
    entries = announcement["queries"]
    if not entries:
        return None, "P0 stopped"
    # One deadline for the batch: a client that reached P0 only costs one wait, not one per query.
    deadline = time.monotonic() + query_timeout
    queries = [inbox.take(query_id, timeout=max(0.0, deadline - time.monotonic())) for query_id, _ in entries]
    return _Batch(announcement["reveal"], [layout for _, layout in entries], queries), ""


def _wait_for_queries(party, inbox, max_batch, max_rows, idle_timeout) -> tuple[list, str]:
    """P0: the next batch from the inbox, or ([], why) when idle_timeout passes or the caller says stop.

    The caller sends "ctl:stop-serving" on its connection to P0 (stop_serving,
    Ctrl-C, SIGTERM), which nothing else reads while this op runs: look at
    it every _STOP_POLL seconds while no query waits.
    """
    deadline = None if idle_timeout is None else time.monotonic() + idle_timeout
    while True:
        wait = _STOP_POLL if deadline is None else max(0.0, min(_STOP_POLL, deadline - time.monotonic()))
        queries = inbox.next_batch(max_batch, max_rows, timeout=wait)
        if queries:
            return queries, ""
        why = _caller_says_stop(party)
        if why:
            return [], why
        if deadline is not None and time.monotonic() >= deadline:
            return [], "idle"


def _caller_says_stop(party) -> str:
    """"stop requested" or "caller gone" if the caller asked P0 to stop serving or left; "" otherwise."""
    try:
        tag, _ = party.channel.recv_control(CLIENT, timeout=0.01)
    except PeerTimeout:
        return ""
    except ChannelError:  # the caller is gone: nobody would read our result
        return "caller gone"
    if tag == STOP_SERVING_TAG:
        return "stop requested"
    _log.warning("%s: ignored a '%s' message from the caller while serving", party.name, tag)
    return ""


# -- step 2 -----------------------------------------------------------------------------
def _serve_batch(party, model_key, batch: _Batch, limits: _Limits, query_timeout) -> tuple[list, int]:
    """Steps 2-3 for one agreed batch: each query's outcome (None: answered, else why not), and the rows run.

    The rows run are the same on every party (they follow the announced
    layouts and the agreed refusals); the outcomes may differ (a client
    gone before its answer).
    """
    deadline = time.monotonic() + query_timeout
    shares, reasons = [], []
    for layout, query in zip(batch.layouts, batch.queries):
        share, reason = _check_query(party, query, layout, batch.reveal, limits, deadline)
        shares.append(share)
        reasons.append(reason)
    refusals = _agree_on_refusals(party, reasons, query_timeout)
    outcomes: list = [None] * len(refusals)
    for k, (query, refused) in enumerate(zip(batch.queries, refusals)):
        if refused:
            outcomes[k] = _refusal_message(refused)
            if query is not None and party.index in (P0, P1):
                query.fail(outcomes[k])
    good = [k for k, refused in enumerate(refusals) if not refused]
    if not good:
        return outcomes, 0
    undelivered = _answer(party, model_key, batch.reveal, [(batch.queries[k], shares[k]) for k in good],
                          limits.frac_bits)
    for k, problem in zip(good, undelivered):
        outcomes[k] = problem
    return outcomes, sum(shares[k].shape[0] for k in good)


def _check_query(party, query, layout: dict, batch_reveal: str, limits: _Limits, deadline: float):
    """This party's input share of one announced query (an empty share on P2), or why it refuses the query."""
    if query is None:
        return None, "this query never reached that worker (send a query to all three)"
    mine = request_layout(query.request)
    if mine != layout:
        # The client told P0 one thing and this party another: running on
        # either copy would misplace other clients' rows or desynchronise
        # the dealer, so nobody runs it.
        return None, (f"the workers were told different things about this query (P0: {_describe(layout)}; "
                      f"P{party.index}: {_describe(mine)}): send every worker the same request")
    problem = _layout_problem(layout, batch_reveal, limits)
    if problem is not None:
        return None, problem
    shape = (layout["shape"][0], *limits.input_shape)
    if party.index == DEALER:
        return AShare(None, party.index, shape), None
    value, problem = _read_input(query, deadline)
    if problem is not None:
        return None, problem
    if not isinstance(value, np.ndarray) or value.dtype != np.uint64 or value.shape != shape:
        got = (f"a {value.dtype} array of shape {value.shape}" if isinstance(value, np.ndarray)
               else f"a {type(value).__name__}")
        return None, f"the input share is {got}; expected a uint64 array of shape {shape} (ring elements)"
    return AShare(value, party.index), None


def _describe(layout: dict) -> str:
    return f"shape {layout['shape']}, reveal {layout['reveal']!r}, frac_bits {layout['frac_bits']}"


def _layout_problem(layout: dict, batch_reveal: str, limits: _Limits) -> str | None:
    """What keeps an (agreed) layout from running with this model and server; the same answer on every party."""
    shape = tuple(layout["shape"])
    if len(shape) != len(limits.input_shape) + 1 or shape[1:] != limits.input_shape:
        return (f"query shape {shape} does not fit the model's input "
                f"(batch, {', '.join(map(str, limits.input_shape))})")
    if shape[0] > limits.max_rows:
        return (f"the query has a batch of {shape[0]} inputs; this server takes at most {limits.max_rows} per query "
                "(max_rows): split it")
    if layout["frac_bits"] != limits.frac_bits:
        return (f"the query is encoded with {layout['frac_bits']} fractional bits, the model with "
                f"{limits.frac_bits}")
    if layout["reveal"] not in limits.allowed:
        return (f"this server reveals only {' or '.join(limits.allowed)} (the model owner's policy); "
                f"a {layout['reveal']!r} query is refused: ask for reveal='argmax'")
    if layout["reveal"] != batch_reveal:  # P0 batches one reveal mode at a time; never mix them
        return f"the query asks for {layout['reveal']!r} in a batch announced as {batch_reveal!r}"
    return None


def _read_input(query, deadline: float):
    """The client's input share, or why there is none, by `deadline` (plus a second) at the latest.

    The channel's timeout bounds the wait for a frame to begin and each
    pause inside it; a client that trickles its share a byte at a time
    would pass both, so a timer hangs up on it a little after the
    deadline (after the timeout of a client that sent nothing, which is
    still told why).
    """
    wait = max(0.05, deadline - time.monotonic())
    query.channel.timeout = wait
    gave_up = threading.Event()

    def give_up():
        gave_up.set()
        query.channel.close()

    timer = threading.Timer(wait + _HANG_UP_AFTER, give_up)
    timer.daemon = True
    timer.start()
    try:
        value = query.channel.recv(CLIENT, tag="input")
    except Exception as exc:  # noqa: BLE001 - a bad client must not stop the server
        if gave_up.is_set() or isinstance(exc, PeerTimeout):
            return None, "no input share from the client within the server's query_timeout"
        return None, f"no input share from the client: {exc}"
    finally:
        timer.cancel()
    return value, None


def _agree_on_refusals(party, reasons: list, query_timeout: float) -> list[dict]:
    """All three parties learn every party's refusals (control messages "serve:ok").

    Returns, per query, {party: reason} for the parties that refused it
    (empty: answer it).
    """
    payload = json.dumps([None if r is None else r[:_MAX_REASON] for r in reasons]).encode()
    others = [j for j in PARTIES if j != party.index]
    for j in others:
        party.channel.send_control(j, "serve:ok", payload)
    refusals = [{} if r is None else {party.index: r} for r in reasons]
    for j in others:
        # A peer may still be taking the batch's queries and reading their input (query_timeout).
        wait = party.channel.timeout + query_timeout
        theirs = json.loads(bytes(_recv_from_party(party, j, "serve:ok", timeout=wait)))
        if not isinstance(theirs, list) or len(theirs) != len(reasons):
            raise RuntimeError(f"{party.name}: party {j} sent {str(theirs)[:80]} as refusals for a batch of "
                               f"{len(reasons)}")
        for k, reason in enumerate(theirs):
            if reason is not None:
                refusals[k][j] = str(reason)
    return refusals


def _refusal_message(refused: dict) -> str:
    """What a refused client is told: the reason, prefixed by the parties that gave it unless all three did."""
    if len(refused) == len(PARTIES) and len(set(refused.values())) == 1:
        return next(iter(refused.values()))
    by_reason: dict[str, list[int]] = {}
    for j in sorted(refused):
        by_reason.setdefault(refused[j], []).append(j)
    return "; ".join(f"{', '.join(f'P{j}' for j in parties)}: {reason}" for reason, parties in by_reason.items())


# -- step 3 -----------------------------------------------------------------------------
def _answer(party, model_key, reveal: str, good: list, frac_bits: int) -> list:
    """One run of the model for the batch; each client gets its rows. Returns, per query, None or why it got none."""
    x = concat_shares([share for _, share in good], axis=0)
    y, out_bits = _run_model(party, model_key, x, frac_bits, truncate_output=reveal_output_truncated(reveal))
    if reveal == "argmax":
        y, out_bits = argmax_protocol.argmax(party, y), 0
    if party.index == DEALER:
        return [None] * len(good)
    row, outcomes = 0, []
    scale = np.array([out_bits], dtype=np.uint64)
    for query, share in good:
        n = share.shape[0]
        try:
            query.channel.send(CLIENT, [np.ascontiguousarray(y.value[row : row + n]), scale], tag="output")
            outcomes.append(None)
        except ChannelError as exc:  # the client hung up: its loss, not the other clients'
            _log.warning("%s: could not send query %s its answer: %s", party.name, query.id, exc)
            outcomes.append(f"the answer could not be delivered: {exc}")
        row += n
    return outcomes
