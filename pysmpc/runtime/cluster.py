"""What every cluster (in-process or over TCP) offers its caller."""

from __future__ import annotations

import itertools
import signal
import threading
from contextlib import contextmanager

import numpy as np

from pysmpc.parties.party import CLIENT, P0, P1
from pysmpc.sharing.fixedpoint import FixedPoint
from pysmpc.sharing.prg import PRG
from pysmpc.sharing.shares import share

__all__ = ["BaseCluster", "ClusterError", "PARTY_KEYS", "DEFAULT_TIMEOUT", "stop_on_signals"]

PARTY_KEYS = {0: "P0", 1: "P1", 2: "P2", CLIENT: "client"}

# Over TCP: seconds a party waits for a peer's next message, and the client
# for a worker's heartbeat, before it calls the peer lost. Batch-256
# inference of the MNIST CNN on 2 cores, kernels loaded: the longest wait
# for any message is 0.16 s on an idle machine and 0.6 s with three CPU
# hogs running. 10 s leaves a 15x margin for bigger models, slower machines
# and GC pauses, and still reports a dead or stopped party within seconds.
DEFAULT_TIMEOUT = 10.0


class ClusterError(RuntimeError):
    """An operation failed on one or more parties; the message names them.

    `lost` lists the parties that were lost rather than failing cleanly:
    their process ended, their connection dropped or they stopped
    responding. A cluster that manages its workers can restart them.
    """

    def __init__(self, message: str, lost=()):
        super().__init__(message)
        self.lost = tuple(lost)


class BaseCluster:
    """Drives three parties: shares inputs, runs operations, reveals outputs.

    Subclasses provide the transport: `_dispatch(name, args, kwargs, inputs)`
    starts an operation on all three parties (and sends each party its
    input, if it has one, right after), `_collect(name)` waits for their
    results, and `client_channel` carries inputs and outputs.
    """

    def __init__(self, frac_bits: int = 16, int_bits: int = 15, timeout: float = 30.0):
        self.fixed_point = FixedPoint(frac_bits=frac_bits, int_bits=int_bits)
        self.timeout = timeout
        self._ids = itertools.count()
        self._broken: str | None = None
        self._client_prg = PRG.fresh()  # reseeded in a forked child: no two children deal the same shares
        self.client_channel = None

    @property
    def frac_bits(self) -> int:
        return self.fixed_point.frac_bits

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False

    def start(self):  # pragma: no cover - abstract
        raise NotImplementedError

    def stop(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- running operations -------------------------------------------------
    def call(self, name: str, *args, client=None, wait: float | None = None, inputs: dict | None = None,
             **kwargs):
        """Run operation `name` on every party; `client()` runs meanwhile here.

        `inputs` ({party: array, or a list of arrays}) go to those parties
        (tag "input") each right after its call, so a party starts with its
        input at hand instead of waiting while the call reaches the others;
        a list goes as one message per array, the first behind the call and
        the rest after every party's first (a batch arriving in pipelined
        parts: the parties start on the first while the others travel).

        `wait` bounds how long to wait for the parties (default None: the
        transport's own bound: over TCP none while every worker shows it is
        alive, in-process the cluster's timeout plus a margin; math.inf for
        long-running ops such as serving). Returns (per-party results,
        client result).
        """
        if self._broken:
            raise ClusterError(f"the cluster stopped working after an error ({self._broken}); start a new one")
        self._dispatch(name, args, kwargs, inputs or {})
        client_result, client_error = None, None
        if client is not None:
            try:
                client_result = client()
            except BaseException as exc:  # noqa: BLE001 - raised after the parties report
                client_error = exc
        results = self._collect(name, wait)
        if client_error is not None:
            raise client_error
        return results, client_result

    def new_id(self) -> int:
        return next(self._ids)

    # -- inputs and outputs ----------------------------------------------------
    def share(self, array, frac_bits: int | None = None):
        """Secret-share a plaintext array held here: P0 and P1 get one share each.

        Floats are encoded with the cluster's fixed-point format (a value out
        of its range raises OverflowError); integer arrays are shared as
        integers (frac_bits 0) unless `frac_bits` says otherwise.
        """
        array = np.asarray(array)
        if frac_bits is None:
            frac_bits = 0 if np.issubdtype(array.dtype, np.integer) else self.frac_bits
        encoded = self.encode(array, frac_bits)
        return self.share_ring(encoded, frac_bits)

    def share_ring(self, encoded: np.ndarray, frac_bits: int):
        """Secret-share an already ring-encoded uint64 array."""
        from pysmpc.runtime.tensor import SharedTensor

        share_0, share_1 = share(encoded, self._client_prg)
        tid = self.new_id()
        self.call("input", tid, encoded.shape, inputs={P0: share_0, P1: share_1})
        return SharedTensor(self, tid, encoded.shape, frac_bits)

    def encode(self, array, frac_bits: int) -> np.ndarray:
        fmt = FixedPoint(frac_bits=frac_bits, int_bits=self.fixed_point.int_bits)
        return fmt.encode(array)

    def call_on_input(self, name: str, encoded: np.ndarray, *args, input_parts: list[int] | None = None, **kwargs):
        """Run `name` on a fresh sharing of `encoded` and reveal its output here, in one call.

        P0 and P1 receive their input shares (tag "input") and send their
        output shares back (tag "output") inside the op, so a query costs
        one call instead of input, run, reveal and free. With `input_parts`
        (row counts), the shares go as one message per part, as the op
        receives them (graph.plan.pipeline_parts). Returns (per-party
        results, the output as a flat ring array).
        """
        share_0, share_1 = share(encoded, self._client_prg)
        inputs = {P0: _in_parts(share_0, input_parts), P1: _in_parts(share_1, input_parts)}
        return self.call(name, *args, client=self._receive_output, inputs=inputs, **kwargs)

    def call_on_masked_input(self, name: str, masked: np.ndarray, *args, input_parts: list[int] | None = None,
                             **kwargs):
        """As call_on_input, but P0 and P1 both get `masked` = x - A (A: a mask P2 gave this caller)."""
        parts = _in_parts(masked, input_parts)
        return self.call(name, *args, client=self._receive_output, inputs={P0: parts, P1: parts}, **kwargs)

    def _receive_output(self) -> np.ndarray:
        return self.client_channel.recv(P0, tag="output") + self.client_channel.recv(P1, tag="output")

    def reveal_ring(self, tensor) -> np.ndarray:
        """Reveal to this caller alone: P0 and P1 send their shares here."""

        _, value = self.call("reveal", tensor.tid, client=self._receive_output)
        return value.reshape(tensor.shape)

    # -- communication statistics ------------------------------------------------
    def stats(self) -> dict:
        """Traffic per party and tag: {"P0": {tag: {...}}, ..., "client": {...}}."""
        results, _ = self.call("stats")
        out = {PARTY_KEYS[i]: r for i, r in enumerate(results)}
        out["client"] = {t: s.as_dict() for t, s in self.client_channel.stats().items()}
        return out

    def reset_stats(self) -> None:
        self.call("reset_stats")
        self.client_channel.reset_stats()


@contextmanager
def stop_on_signals(stop):
    """While serving: Ctrl-C (SIGINT) and SIGTERM call stop(signal name) instead of ending the process.

    So a server stops between batches, answers the batch in hand and
    returns, and its caller exits cleanly (the workers are stopped as
    usual). stop() runs in a thread of its own: a signal handler runs
    between two bytecodes of the main thread, which may hold a lock that
    stop() needs. A second signal raises KeyboardInterrupt (stop now). Only
    in the main thread (where Python runs signal handlers); elsewhere it
    does nothing. Yields the list of the signals' names received.
    """
    received: list[str] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def handler(signum, frame):
        if received:
            raise KeyboardInterrupt
        received.append(signal.Signals(signum).name)
        threading.Thread(target=stop, args=(received[0],), daemon=True, name="pysmpc-stop-serving").start()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _in_parts(array: np.ndarray, parts: list[int] | None):
    """`array` split along its first axis into `parts` rows each (None or one part: the array itself)."""
    if parts is None or len(parts) == 1:
        return array
    if sum(parts) != len(array):
        raise ValueError(f"input parts {parts} do not add up to the batch of {len(array)} rows")
    return np.split(array, np.cumsum(parts)[:-1])


def input_frames(inputs: dict) -> tuple[dict, list]:
    """The messages a dispatch sends: ({party: the one right behind its call}, [(party, array) after all calls]).

    A list of parts sends its first part behind the call and the others
    afterwards, part by part, alternating between the parties, so each
    party's first part is not held up behind another party's whole input.
    """
    first, rest = {}, []
    lists = {i: v if isinstance(v, list) else [v] for i, v in inputs.items()}
    for i, values in lists.items():
        first[i] = values[0]
    for k in range(1, max((len(v) for v in lists.values()), default=0)):
        rest += [(i, values[k]) for i, values in lists.items() if k < len(values)]
    return first, rest
