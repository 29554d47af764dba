"""Secure aggregation: the cluster sums the data owners' updates and reveals only the sum."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from pysmpc.runtime.tensor import SharedTensor

__all__ = ["AggregationReport", "secure_aggregate"]


@dataclass
class AggregationReport:
    """What one aggregation round did and cost.

    ``counted`` and ``dropped`` are owner indices (positions in ``updates``).
    ``bytes_per_owner`` maps each counted owner to the bytes it sent (its two
    shares, to P0 and P1); ``bytes_to_receiver`` is what P0 and P1 sent the
    receiver of the sum. ``seconds`` is the round's wall time, sharing to
    reveal, without ``owner_seconds`` (time spent in owners' callables
    computing their updates). ``noise_std`` is the std of the noise each of P0 and P1 added (0:
    none).
    """

    counted: list = field(default_factory=list)
    dropped: list = field(default_factory=list)
    bytes_per_owner: dict = field(default_factory=dict)
    bytes_to_receiver: int = 0
    seconds: float = 0.0
    noise_std: float = 0.0
    elements: int = 0
    owner_seconds: float = 0.0

    def summary(self) -> str:
        per_owner = max(self.bytes_per_owner.values(), default=0)
        text = (f"counted owners {self.counted}" + (f", dropped {self.dropped}" if self.dropped else "")
                + f"; {per_owner / 1e3:.1f} kB sent per owner; {self.seconds * 1e3:.0f} ms")
        return text


def _resolve(update, index: int, rep: "AggregationReport"):
    """Return the owner's list of float64 arrays, or None if it dropped out."""
    if callable(update):
        start = time.perf_counter()
        try:
            update = update()
        except Exception:  # noqa: BLE001 - an owner that fails before sending has dropped out
            return None
        finally:
            rep.owner_seconds += time.perf_counter() - start
    if update is None:
        return None
    arrays = [np.asarray(a, dtype=np.float64) for a in update]
    for k, a in enumerate(arrays):
        if not np.all(np.isfinite(a)):
            raise ValueError(f"owner {index}: array {k} of its update contains NaN or infinity")
    return arrays


def _client_bytes(cluster) -> int:
    return sum(s.bytes_sent for s in cluster.client_channel.stats().values())


def _client_bytes_received(cluster) -> int:
    return sum(s.bytes_received for s in cluster.client_channel.stats().values())


def secure_aggregate(updates, cluster, *, mean: bool = False, noise_std: float = 0.0, report: bool = False,
                     min_owners: int = 1):
    """Sum the owners' updates inside the cluster and reveal only the sum to the caller.

    1. Each present owner flattens its update (a list of float arrays) into
       one vector, encodes it in the cluster's fixed point (F fractional
       bits, round to nearest) and secret-shares it: a uniform share to P0,
       the difference to P1 (communicates: 8 bytes per element to each).
    2. P0 and P1 add the owners' shares: local, no communication.
    3. With ``noise_std`` > 0, P0 and P1 each add Gaussian noise of that std
       drawn from their own CSPRNG (op ``add_gaussian``): local. The sum
       then carries both noises (variance 2 noise_std^2); either alone has
       std noise_std, so a party that removes its own leaves the other's.
    4. P0 and P1 send their shares of the sum to the caller, who adds them
       (communicates: 8 bytes per element from each). No party opens
       anything: P0 and P1 each see uniform shares only, P2 sees nothing.

    Dropouts: an entry of ``updates`` that is None, or a callable (called
    here, in order) that returns None or raises, is an owner that dropped
    out before sending; the round completes with the others. An owner that
    has sent its shares is counted. With ``mean`` the sum is divided by the
    number of owners counted (public) after it is revealed.

    Cost per round: each owner sends 16 bytes per element; the caller
    receives 16 bytes per element; 0 rounds between P0 and P1.

    Args:
        updates: one entry per data owner: a list of float arrays (the same
            shapes for every owner), None, or a callable returning either.
        cluster: a started LocalCluster or TcpCluster.
        mean: divide the revealed sum by the number of owners counted.
        noise_std: std of the Gaussian noise each of P0 and P1 adds (DP).
        report: also return an ``AggregationReport``.
        min_owners: refuse to reveal a sum of fewer owners (a "sum" of one
            owner is its update); nothing is revealed then.

    Returns:
        The sum (or mean) as a list of float64 arrays shaped like an owner's
        update, or (that list, AggregationReport) with ``report``.

    Raises:
        ValueError: fewer than ``min_owners`` (or no) owners are present, or
            updates differ in structure.
        OverflowError: an update has a value beyond the fixed-point range.
    """
    start = time.perf_counter()
    rep = AggregationReport(noise_std=float(noise_std))
    shapes = None
    shared = []
    for index, update in enumerate(updates):
        arrays = _resolve(update, index, rep)
        if arrays is None:
            rep.dropped.append(index)
            continue
        these = [a.shape for a in arrays]
        if shapes is None:
            shapes = these
        elif these != shapes:
            raise ValueError(f"owner {index} sent arrays of shapes {these}; earlier owners sent {shapes}")
        vector = np.concatenate([a.reshape(-1) for a in arrays]) if arrays else np.zeros(0)
        try:
            encoded = cluster.encode(vector, cluster.frac_bits)
        except OverflowError as exc:
            raise OverflowError(f"owner {index}: {exc}") from None
        before = _client_bytes(cluster)
        shared.append(cluster.share_ring(encoded, cluster.frac_bits))
        rep.bytes_per_owner[index] = _client_bytes(cluster) - before
        rep.counted.append(index)
    if not shared:
        raise ValueError(f"no data owner sent an update ({len(rep.dropped)} dropped out)")
    if len(shared) < min_owners:
        cluster.call("free", [t.tid for t in shared])
        raise ValueError(f"only {len(shared)} data owner(s) sent an update ({rep.counted}); at least {min_owners} "
                         f"are needed to reveal a sum")
    rep.elements = shared[0].size
    total = shared[0]
    temporaries = [t.tid for t in shared]
    for tensor in shared[1:]:
        total = total + tensor
        temporaries.append(total.tid)
    if noise_std > 0:
        tid = cluster.new_id()
        cluster.call("add_gaussian", tid, total.tid, float(noise_std), total.frac_bits)
        total = SharedTensor(cluster, tid, total.shape, total.frac_bits)
        temporaries.append(tid)
    before = _client_bytes_received(cluster)
    vector = total.reveal()
    rep.bytes_to_receiver = _client_bytes_received(cluster) - before
    cluster.call("free", sorted(set(temporaries)))
    if mean:
        vector = vector / len(rep.counted)
    out, offset = [], 0
    assert shapes is not None  # set by the first update; no update at all raised above
    for shape in shapes:
        size = int(np.prod(shape, dtype=np.int64))
        out.append(vector[offset : offset + size].reshape(shape))
        offset += size
    rep.seconds = time.perf_counter() - start - rep.owner_seconds
    return (out, rep) if report else out
