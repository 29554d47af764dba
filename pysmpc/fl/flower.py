"""Flower with secure aggregation: clients share their updates straight to a pysmpc cluster (``pip install 'pysmpc[flower]'``).

Two halves, one on each side of Flower's transport:

* ``SecureAggClient`` wraps a Flower ``NumPyClient`` on the client's
  machine. After the wrapped client trains, it weights its parameters by
  its example count, secret-shares them straight to P0 and P1 as a
  ``pysmpc.fl.Owner`` (for the round id the strategy put in the fit
  config), and returns to the Flower server only its example count and
  metrics: an empty parameter list, never its update.
* ``SecureAggFedAvg`` is Flower's ``FedAvg`` on the server: ``configure_fit``
  opens a round in the cluster and tells the clients its id;
  ``aggregate_fit`` asks the cluster for that round's sum, which P0 and P1
  reveal to it alone, and divides by the summed example weights.

So the Flower server process sees each client's example count (public in
Flower anyway) and the weighted mean, never one client's parameters. The
workers enforce the round's rules (at least ``min_owners`` clients, each
counted once, one reveal): see docs/FL.md.
"""

from __future__ import annotations

import numpy as np

from pysmpc.fl.aggregate import Aggregator, RoundRefused
from pysmpc.fl.owner import Owner

try:
    from flwr.client import NumPyClient
    from flwr.common import FitIns, ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.server.strategy import FedAvg
except ImportError as exc:  # pragma: no cover - exercised only without flwr
    raise ImportError("pysmpc.fl.flower needs Flower: pip install 'pysmpc[flower]'") from exc

__all__ = ["SecureAggClient", "SecureAggFedAvg", "ROUND_KEY", "SCALE_KEY"]

ROUND_KEY = "pysmpc_round"          # fit config: the cluster's round id for this Flower round
SCALE_KEY = "pysmpc_example_scale"  # fit config: updates are weighted by num_examples / scale


class SecureAggClient(NumPyClient):
    """A Flower client whose update goes to the cluster as shares, not to the Flower server.

    Args:
        client: the client's own ``NumPyClient`` (its ``fit`` trains as usual).
        owner: a ``pysmpc.fl.Owner`` for this client (its name is counted
            once per round; with TLS, its certificate).
    """

    def __init__(self, client: NumPyClient, owner: Owner):
        self.client = client
        self.owner = owner

    def get_parameters(self, config):
        return self.client.get_parameters(config)

    def evaluate(self, parameters, config):
        return self.client.evaluate(parameters, config)

    def fit(self, parameters, config):
        """Train, then submit (parameters * n / scale, n / scale) to the round as shares; return no parameters."""
        if ROUND_KEY not in config:
            raise RuntimeError("the fit config names no pysmpc round: run the server with SecureAggFedAvg")
        params, num_examples, metrics = self.client.fit(parameters, config)
        weight = float(num_examples) / float(config.get(SCALE_KEY, 1.0))
        update = [np.asarray(p, dtype=np.float64) * weight for p in params] + [np.array([weight])]
        receipt = self.owner.submit(str(config[ROUND_KEY]), update)
        metrics = {**(metrics or {}), "pysmpc_bytes_sent": int(sum(receipt.bytes_sent.values()))}
        return [], num_examples, metrics


class SecureAggFedAvg(FedAvg):
    """FedAvg whose weighted mean the cluster computes from the clients' shares (see the module).

    Args:
        cluster: a started pysmpc LocalCluster or TcpCluster; this strategy
            is its aggregator.
        min_owners: clients that must have submitted before a round's sum is
            revealed (at least 2; the workers enforce it).
        example_scale: public normaliser of the example weights, so that
            parameters times num_examples / example_scale stay within the
            fixed-point range (magnitudes below 2^15 with the defaults).
        reveal_wait: seconds the reveal waits for every client that
            reported a result to have reached both workers.
        **kwargs: FedAvg's arguments (fraction_fit, min_fit_clients, ...).

    After each round ``last_result`` holds the ``RoundResult`` (who was
    counted, bytes, time); its figures are also returned as fit metrics.
    """

    def __init__(self, cluster, *, min_owners: int = 2, example_scale: float = 1000.0, reveal_wait: float = 5.0,
                 **kwargs):
        super().__init__(**kwargs)
        self.aggregator = Aggregator(cluster)
        self.min_owners = min_owners
        self.example_scale = float(example_scale)
        self.reveal_wait = float(reveal_wait)
        self.last_result = None
        self._round_ids: dict[int, str] = {}

    def __repr__(self) -> str:
        return f"SecureAggFedAvg(accept_failures={self.accept_failures})"

    def configure_fit(self, server_round, parameters, client_manager):
        """FedAvg's client selection, plus a cluster round whose id every selected client gets."""
        instructions = super().configure_fit(server_round, parameters, client_manager)
        shapes = [a.shape for a in parameters_to_ndarrays(parameters)] + [(1,)]
        round_id = self.aggregator.open_round(shapes, min_owners=self.min_owners)
        self._round_ids[server_round] = round_id
        extra = {ROUND_KEY: round_id, SCALE_KEY: self.example_scale}
        return [(client, FitIns(fit_ins.parameters, {**fit_ins.config, **extra})) for client, fit_ins in instructions]

    def aggregate_fit(self, server_round, results, failures):
        """Reveal the round's sum from the cluster: sum(n_k p_k) / sum(n_k); the results carry no parameters."""
        round_id = self._round_ids.pop(server_round, None)
        if round_id is None or not results or (not self.accept_failures and failures):
            return None, {}
        try:
            result = self.aggregator.reveal(round_id, expect=len(results), wait=self.reveal_wait)
        except RoundRefused:
            return None, {}
        self.last_result = result
        *weighted, total_weight = result.total
        mean = [w / float(total_weight[0]) for w in weighted]
        metrics = {
            "secure_aggregation_owners": len(result.counted),
            "secure_aggregation_bytes_per_owner": int(2 * max(result.bytes_per_owner.values())),
            "secure_aggregation_ms": float(result.seconds * 1e3),
        }
        if self.fit_metrics_aggregation_fn:
            metrics.update(self.fit_metrics_aggregation_fn([(r.num_examples, r.metrics) for _, r in results]))
        return ndarrays_to_parameters([m.astype(np.float32) for m in mean]), metrics
