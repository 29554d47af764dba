"""Secure aggregation, the aggregator's side: open a round, ask for its sum; never see an update.

The data owners send their updates' shares to P0 and P1 themselves
(``pysmpc.fl.Owner``); the workers keep them in a round whose rules are
fixed when it opens (``pysmpc.runtime.rounds``). The aggregator can only
open rounds and DP series and ask for a round's sum, which P0 and P1
reveal to it alone, once, if enough owners took part.

    aggregator = Aggregator(cluster)
    round_id = aggregator.open_round(shapes, min_owners=3)
    ... each owner: Owner(hosts, name).submit(round_id, update) ...
    result = aggregator.reveal(round_id, mean=True)   # result.total, result.counted
"""

from __future__ import annotations

import math
import secrets
import time
from dataclasses import dataclass, field

import numpy as np

from pysmpc.parties.party import P0, P1
from pysmpc.runtime.rounds import MIN_OWNERS_FLOOR

__all__ = ["Aggregator", "RoundRefused", "RoundResult"]


class RoundRefused(ValueError):
    """The workers refused: a rule of the round or series forbids it (too few owners, budget spent, ...)."""


def _verdict(results: list, what: str):
    """P0's answer, after checking that P1 agrees; RoundRefused if they refused."""
    answer_0, answer_1 = results[P0], results[P1]
    if answer_0 != answer_1 and not (isinstance(answer_0, dict) and isinstance(answer_1, dict)
                                     and answer_0.get("refused") and answer_1.get("refused")):
        raise RuntimeError(f"P0 and P1 disagree on {what}: {answer_0} vs {answer_1}")
    if isinstance(answer_0, dict) and "refused" in answer_0:
        raise RoundRefused(answer_0["refused"])
    return answer_0


@dataclass
class RoundResult:
    """What the aggregator learns from one round.

    ``total``: the sum (or mean) of the counted owners' updates, noisy in a
    DP round, shaped like an update. ``counted``: the owners' names.
    ``epsilon``: in a DP series, the privacy spent by the series so far
    (the workers' accountant) at its delta; None otherwise. ``noise_std``:
    the std of the noise each of P0 and P1 added. ``bytes_per_owner``: the
    share bytes each counted owner sent to each worker (8 per element);
    ``bytes_to_receiver``: what P0 and P1 sent the aggregator.
    """

    round_id: str
    total: list
    counted: list = field(default_factory=list)
    epsilon: float | None = None
    noise_std: float = 0.0
    elements: int = 0
    bytes_per_owner: dict = field(default_factory=dict)
    bytes_to_receiver: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        per_owner = 2 * max(self.bytes_per_owner.values(), default=0)
        text = (f"counted owners {', '.join(self.counted)}; {per_owner / 1e3:.1f} kB sent per owner; "
                f"{self.seconds * 1e3:.0f} ms")
        if self.epsilon is not None:
            text += f"; epsilon spent {self.epsilon:.3f}"
        return text


class Aggregator:
    """Opens secure-aggregation rounds on a cluster and receives their sums (and nothing else).

    Args:
        cluster: a started LocalCluster or TcpCluster that this aggregator
            drives (its ``client_channel`` is the only endpoint it reads).
    """

    def __init__(self, cluster):
        self.cluster = cluster
        self._shapes: dict[str, list] = {}

    def open_dp_series(self, *, noise_multiplier: float, clip_norm: float, sample_rate: float, epsilon: float,
                       delta: float, series_id: str | None = None) -> str:
        """Open a DP series: rounds in it get noise N(0, (noise_multiplier * clip_norm)^2) from P0 and P1 each.

        The parameters and the budget (epsilon, delta) are fixed on the
        workers now; the workers' accountant refuses a round that would
        spend more than ``epsilon``. Returns the series id.
        """
        series_id = series_id or f"series-{secrets.token_hex(8)}"
        results, _ = self.cluster.call("fl_open_series", series_id, float(noise_multiplier), float(clip_norm),
                                       float(sample_rate), float(epsilon), float(delta))
        _verdict(results, f"opening DP series {series_id!r}")
        return series_id

    def open_round(self, shapes, *, min_owners: int = MIN_OWNERS_FLOOR, series: str | None = None,
                   round_id: str | None = None) -> str:
        """Open a round for updates of ``shapes`` (a list of array shapes); return its id.

        ``min_owners`` (at least 2) owners must have submitted to both P0 and
        P1 before the sum is revealed. ``series``: a DP series id
        (``open_dp_series``); the sum is then revealed only with the
        workers' noise.
        """
        shapes = [[int(d) for d in s] for s in shapes]
        round_id = round_id or f"round-{secrets.token_hex(8)}"
        if isinstance(min_owners, bool) or not isinstance(min_owners, int) or min_owners < MIN_OWNERS_FLOOR:
            raise ValueError(f"min_owners must be an int >= {MIN_OWNERS_FLOOR} (a sum of one owner is its "
                             f"update), got {min_owners!r}")
        results, _ = self.cluster.call("fl_open_round", round_id, shapes, self.cluster.frac_bits, min_owners, series)
        _verdict(results, f"opening round {round_id!r}")
        self._shapes[round_id] = shapes
        return round_id

    def reveal(self, round_id: str, *, mean: bool = False, expect: int | None = None,
               wait: float = 0.0) -> RoundResult:
        """Have P0 and P1 reveal the round's sum to this aggregator; return it with who was counted.

        ``expect``/``wait``: wait up to ``wait`` seconds for ``expect``
        owners to have submitted first (owners that have not by then are
        left out, as dropouts). With ``mean`` the sum is divided by the
        number of owners counted (public). Raises RoundRefused naming the
        rule when the workers refuse (too few owners: the round then stays
        open for more; DP budget spent; round revealed already).
        """
        start = time.perf_counter()
        shapes = self._shapes.get(round_id)
        if shapes is None:
            raise ValueError(f"round {round_id!r} was not opened by this aggregator (or was revealed already)")
        channel = self.cluster.client_channel
        before = sum(s.bytes_received for s in channel.stats().values())
        results, _ = self.cluster.call("fl_close", round_id, expect, float(wait),
                                       wait=float(wait) + self.cluster.timeout + 5)
        report = _verdict(results, f"closing round {round_id!r}")
        del self._shapes[round_id]
        _, total_ring = self.cluster.call("fl_send_sum", round_id, client=self.cluster._receive_output)
        received = sum(s.bytes_received for s in channel.stats().values()) - before
        vector = total_ring.view(np.int64) / float(1 << self.cluster.frac_bits)
        counted = list(report["counted"])
        if mean:
            vector = vector / len(counted)
        total, offset = [], 0
        for shape in shapes:
            size = math.prod(shape)
            total.append(vector[offset : offset + size].reshape(shape))
            offset += size
        return RoundResult(round_id, total, counted, report["epsilon"], float(report["noise_std"]),
                           int(report["elements"]), dict(report["bytes_received"]), received,
                           time.perf_counter() - start)

    def series(self, series_id: str) -> dict:
        """A DP series' parameters, rounds revealed and epsilon spent, as the workers keep them."""
        results, _ = self.cluster.call("fl_series", series_id)
        return _verdict(results, f"DP series {series_id!r}")
