"""Secure-aggregation rounds on the workers: owners' shares in, one (noisy) sum out.

Each data owner sends its update's two shares straight to P0 and P1 (over
its own connection; in-process through `RoundBook.submit`), never through
whoever drives the cluster. The driver (the aggregator) can only open a
round, with rules fixed there, and ask for the round's sum:

* a round is opened once under an id never used before on this worker;
  its shape, fixed-point format, `min_owners` (at least 2) and DP series
  cannot change afterwards;
* each owner (by name: with TLS, the common name of its certificate) is
  counted at most once per round; a round takes no shares once its sum is
  revealed, and is revealed once;
* the sum covers the owners whose shares reached both P0 and P1 (the two
  agree on that set first), and is revealed only if there are at least
  `min_owners` of them;
* in a DP series, P0 and P1 each add their own Gaussian noise and keep the
  series' privacy accountant: a round that would take the series past its
  epsilon budget is refused, and a DP round is never revealed without
  noise;
* per-owner shares live only here, not in the tensor store, so no op can
  reveal or open them; they are dropped once the round is revealed.

P2 takes no part: it holds no share of an update.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from pysmpc.parties.party import CLIENT, Party
from pysmpc.protocols.open import reveal_to
from pysmpc.runtime.owner_shares import computing_book

__all__ = ["RoundBook", "ROUND_OPS", "check_owner_name", "MIN_OWNERS_FLOOR"]

# A "sum" of one owner is that owner's update: no round reveals fewer than two.
MIN_OWNERS_FLOOR = 2
_ID = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
_MAX_ELEMENTS = 1 << 28  # 2 GiB of shares per owner per worker at most


def check_owner_name(name) -> str:
    """Return `name` if it is a valid owner or round id (1-64 of A-Z a-z 0-9 _ . : -); else ValueError."""
    if not isinstance(name, str) or not _ID.fullmatch(name):
        raise ValueError(f"an owner name or round id is 1 to 64 letters, digits, '_', '.', ':' or '-'; "
                         f"got {str(name)[:80]!r}")
    return name


@dataclass
class _Series:
    """A DP round series: its parameters, fixed when opened, and its accountant."""

    noise_multiplier: float
    clip_norm: float
    sample_rate: float
    epsilon_budget: float
    delta: float
    accountant: object
    steps: int = 0
    epsilon_spent: float = 0.0

    def rules(self) -> dict:
        return {"noise_multiplier": self.noise_multiplier, "clip_norm": self.clip_norm,
                "sample_rate": self.sample_rate, "epsilon_budget": self.epsilon_budget, "delta": self.delta}


@dataclass
class _Round:
    shapes: list
    size: int
    frac_bits: int
    min_owners: int
    series: str | None
    shares: dict = field(default_factory=dict)   # owner -> this party's share (uint64, flat)
    bytes_received: dict = field(default_factory=dict)
    closing: bool = False
    total: np.ndarray | None = None  # this party's share of the sum, once closed


class RoundBook:
    """One worker's rounds and DP series; thread-safe (owners submit from accept threads)."""

    def __init__(self, party_index: int):
        self.party_index = party_index
        self._rounds: dict[str, _Round] = {}
        self._series: dict[str, _Series] = {}
        self._used_ids: set[str] = set()
        self._cond = threading.Condition()

    # -- the aggregator's side (through ops) ---------------------------------------------------
    def open_series(self, series_id: str, noise_multiplier, clip_norm, sample_rate, epsilon, delta) -> dict:
        check_owner_name(series_id)
        values = {"noise_multiplier": noise_multiplier, "clip_norm": clip_norm, "sample_rate": sample_rate,
                  "epsilon": epsilon, "delta": delta}
        for key, v in values.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise ValueError(f"DP series: {key} must be a positive number, got {v!r}")
        if sample_rate > 1 or delta >= 1:
            raise ValueError(f"DP series: sample_rate must be in (0, 1] and delta in (0, 1), got {sample_rate}, "
                             f"{delta}")
        from pysmpc.runtime.accounting import StepAccountant

        with self._cond:
            if series_id in self._used_ids:
                raise ValueError(f"P{self.party_index}: id {series_id!r} was used already; a DP series is opened "
                                 "once (its accountant cannot be reset)")
            self._used_ids.add(series_id)
            series = _Series(float(noise_multiplier), float(clip_norm), float(sample_rate), float(epsilon),
                             float(delta), StepAccountant(float(noise_multiplier), float(sample_rate), float(delta)))
            self._series[series_id] = series
            return series.rules()

    def open_round(self, round_id: str, shapes, frac_bits: int, min_owners: int, series: str | None) -> dict:
        check_owner_name(round_id)
        if not isinstance(shapes, list) or not shapes or not all(
                isinstance(s, list) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in s)
                for s in shapes):
            raise ValueError(f"a round's shapes are a non-empty list of shapes (lists of ints), got {str(shapes)[:80]}")
        size = sum(math.prod(s) for s in shapes)
        if not 1 <= size <= _MAX_ELEMENTS:
            raise ValueError(f"a round sums 1 to {_MAX_ELEMENTS} elements per owner, got {size}")
        if isinstance(min_owners, bool) or not isinstance(min_owners, int) or min_owners < MIN_OWNERS_FLOOR:
            raise ValueError(f"min_owners must be an int >= {MIN_OWNERS_FLOOR} (a sum of one owner is its update), "
                             f"got {min_owners!r}")
        if isinstance(frac_bits, bool) or not isinstance(frac_bits, int) or not 0 <= frac_bits <= 40:
            raise ValueError(f"frac_bits must be an int in [0, 40], got {frac_bits!r}")
        with self._cond:
            if series is not None and series not in self._series:
                raise ValueError(f"P{self.party_index}: no DP series {series!r} is open")
            if round_id in self._used_ids:
                raise ValueError(f"P{self.party_index}: id {round_id!r} was used already; round ids are used once")
            self._used_ids.add(round_id)
            self._rounds[round_id] = _Round([list(s) for s in shapes], size, frac_bits, min_owners, series)
            return self._rules(round_id)

    def close(self, party: Party, round_id: str, expect: int | None, wait: float) -> dict:
        """Agree with the peer on the owners counted and make this party's share of the (noisy) sum.

        1. Wait up to `wait` s until `expect` owners have submitted here.
        2. Stop taking shares; exchange the names of the owners whose shares
           arrived with the other computing party (1 round; names only).
        3. Counted = owners on both lists. Refuse fewer than min_owners, or
           a DP round past the series' budget: {"refused": why}, and the
           round takes shares again. P0 and P1 decide alike (same names,
           same accountant).
        4. Sum the counted shares; in a DP round add this party's own
           Gaussian noise and count the round in the accountant: local.
           The sum's share waits for `send_sum`.
        """
        with self._cond:
            rnd = self._round(round_id)
            if rnd.total is not None:
                raise ValueError(f"round {round_id!r} is closed already")
            deadline = time.monotonic() + max(0.0, float(wait))
            while expect is not None and len(rnd.shares) < expect:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            rnd.closing = True
            mine = sorted(rnd.shares)
        theirs = json.loads(bytes(party.channel.exchange(party.peer, json.dumps(mine).encode(), tag="fl:owners")))
        counted = sorted(set(mine) & set(theirs))
        series = self._series.get(rnd.series) if rnd.series is not None else None
        refusal, epsilon = None, None
        if len(counted) < rnd.min_owners:
            refusal = (f"round {round_id!r}: {len(counted)} owner(s) submitted to both P0 and P1 "
                       f"({', '.join(counted) or 'none'}); the round needs at least {rnd.min_owners}: nothing is "
                       "revealed")
        elif series is not None:
            epsilon = _epsilon_after_step(series)
            if epsilon > series.epsilon_budget:
                refusal = (f"DP series {rnd.series!r}: one more round would spend epsilon {epsilon:.4g} > the "
                           f"budget {series.epsilon_budget:g} (delta {series.delta:g}) after {series.steps} rounds; "
                           "refused")
        if refusal is not None:
            with self._cond:
                rnd.closing = False
                self._cond.notify_all()
            return {"refused": refusal}
        total = np.zeros(rnd.size, dtype=np.uint64)
        for owner in counted:
            total += rnd.shares[owner]
        noise_std = 0.0
        if series is not None:
            noise_std = series.noise_multiplier * series.clip_norm
            total += _gaussian_ring(noise_std, rnd.size, rnd.frac_bits)
            series.steps += 1
            series.epsilon_spent = epsilon
        with self._cond:
            rnd.total = total
            bytes_received = {o: rnd.bytes_received.get(o, 0) for o in counted}
            rnd.shares.clear()  # per-owner shares are of no more use
        return {"counted": counted, "epsilon": epsilon, "noise_std": noise_std, "elements": rnd.size,
                "bytes_received": bytes_received, "steps": series.steps if series else None}

    def send_sum(self, party: Party, round_id: str) -> None:
        """Send this party's share of a closed round's sum to the client, once (tag "output"; 8 B per element)."""
        with self._cond:
            rnd = self._round(round_id)
            if rnd.total is None:
                raise ValueError(f"round {round_id!r} is not closed: close it first (its rules are checked there)")
            total = rnd.total
            del self._rounds[round_id]
        reveal_to(party, total, CLIENT, tag="output")

    def series_state(self, series_id: str) -> dict:
        with self._cond:
            series = self._series.get(series_id)
            if series is None:
                raise ValueError(f"P{self.party_index}: no DP series {series_id!r}")
            return {**series.rules(), "steps": series.steps, "epsilon_spent": series.epsilon_spent}

    # -- the owners' side -------------------------------------------------------------------------
    def rules(self, round_id: str) -> dict:
        """What an owner is told before it sends: the round's shapes, format, min_owners and DP series."""
        with self._cond:
            return self._rules(round_id)

    def _rules(self, round_id: str) -> dict:
        rnd = self._round(round_id)
        if rnd.closing:
            raise ValueError(f"round {round_id!r} is being revealed and takes no more shares")
        series = self._series.get(rnd.series) if rnd.series is not None else None
        return {"round": round_id, "shapes": rnd.shapes, "frac_bits": rnd.frac_bits, "min_owners": rnd.min_owners,
                "dp": None if series is None else series.rules()}

    def submit(self, round_id: str, owner: str, share) -> None:
        """Take an owner's share of a round; ValueError (the owner is told why) if it cannot count."""
        check_owner_name(owner)
        with self._cond:
            rnd = self._round(round_id)
            if rnd.closing:
                raise ValueError(f"round {round_id!r} is being revealed and takes no more shares")
            if not isinstance(share, np.ndarray) or share.dtype != np.uint64 or share.shape != (rnd.size,):
                got = (f"a {share.dtype} array of shape {share.shape}" if isinstance(share, np.ndarray)
                       else f"a {type(share).__name__}")
                raise ValueError(f"round {round_id!r} takes a uint64 share of shape ({rnd.size},); got {got}")
            if owner in rnd.shares:
                raise ValueError(f"owner {owner!r} has submitted to round {round_id!r} already: an owner counts "
                                 "once per round")
            rnd.shares[owner] = share.copy()
            rnd.bytes_received[owner] = int(share.nbytes)
            self._cond.notify_all()

    def _round(self, round_id: str) -> _Round:
        if not isinstance(round_id, str):
            raise ValueError(f"a round id is a string, got {type(round_id).__name__}")
        rnd = self._rounds.get(round_id)
        if rnd is None:
            why = "was revealed already" if round_id in self._used_ids else "is not open"
            raise ValueError(f"P{self.party_index}: round {str(round_id)[:64]!r} {why}")
        return rnd


def _epsilon_after_step(series: _Series) -> float:
    """Epsilon at the series' delta if one more round is revealed (RDP accountant over all its rounds)."""
    return series.accountant.epsilon(series.steps + 1)


def _gaussian_ring(std: float, size: int, frac_bits: int) -> np.ndarray:
    """This party's own N(0, std^2) noise, fixed-point encoded (PRG on a fresh seed only it knows)."""
    from pysmpc.sharing.gaussian import standard_normal
    from pysmpc.sharing.prg import PRG, new_seed

    noise = standard_normal(PRG(new_seed()), (size,)) * float(std)
    return np.rint(noise * float(1 << frac_bits)).astype(np.int64).view(np.uint64)


def book_of(party: Party) -> "RoundBook | None":
    """The party's RoundBook (P0, P1), made on first use; None on P2, which holds no shares."""
    return computing_book(party, "fl_book", RoundBook)


def _refusing(method):
    """Run a book method on P0/P1 (P2 holds no shares: None); a broken rule is {"refused": why}.

    P0 and P1 reach the same verdict on the same call (same rounds, same
    names, same accountant), so a refusal leaves them in step and the
    cluster usable; the caller raises it.
    """
    def op(party: Party, *args):
        book = book_of(party)
        if book is None:
            return None
        try:
            return method(book, party, *args)
        except ValueError as exc:
            return {"refused": str(exc)}
    op.__doc__ = method.__doc__
    return op


op_fl_open_series = _refusing(lambda book, party, *args: book.open_series(*args))
op_fl_open_round = _refusing(lambda book, party, *args: book.open_round(*args))
op_fl_close = _refusing(RoundBook.close)
op_fl_send_sum = _refusing(RoundBook.send_sum)
op_fl_series = _refusing(lambda book, party, series_id: book.series_state(series_id))

ROUND_OPS = {"fl_open_series": op_fl_open_series, "fl_open_round": op_fl_open_round, "fl_close": op_fl_close,
             "fl_send_sum": op_fl_send_sum,
             "fl_series": op_fl_series}
