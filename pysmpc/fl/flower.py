"""A Flower strategy whose aggregation runs in a pysmpc cluster (``pip install 'pysmpc[flower]'``).

``SecureAggFedAvg`` is Flower's ``FedAvg`` with ``aggregate_fit`` replaced:
the clients' weighted parameters are summed by ``secure_aggregate`` in a
three-party cluster (LocalCluster or TcpCluster) and only the sum is
revealed, to the strategy. Clients that failed in a round are reported as
dropped and the round completes with the others, as in FedAvg.

Limitation (what this does and does not hide): with Flower's own
transport, each client's ``FitRes`` travels to the Flower server process
in the clear, and reaches ``aggregate_fit`` before it is shared. The
strategy therefore runs the aggregation, its cost and its dropout handling
through the cluster, but it does not hide an individual update from the
process that runs the Flower server. Hiding it requires the clients to
secret-share their updates to the cluster themselves (the
``secure_aggregate`` path of ``pysmpc.fl``, which the owners in
``run_federated`` use) and send Flower only a reference: a client-side mod
that is not written yet.
"""

from __future__ import annotations

import numpy as np

from pysmpc.fl.aggregate import secure_aggregate

try:
    from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.server.strategy import FedAvg
except ImportError as exc:  # pragma: no cover - exercised only without flwr
    raise ImportError("pysmpc.fl.flower needs Flower: pip install 'pysmpc[flower]'") from exc

__all__ = ["SecureAggFedAvg"]


class SecureAggFedAvg(FedAvg):
    """FedAvg whose weighted mean is computed by a pysmpc cluster (see the module's limitation).

    Args:
        cluster: a started pysmpc LocalCluster or TcpCluster.
        **kwargs: FedAvg's arguments (fraction_fit, min_fit_clients, ...).

    After each round ``last_report`` holds the ``AggregationReport`` (owners
    counted, bytes per owner, time); its figures are also returned as fit
    metrics.
    """

    def __init__(self, cluster, **kwargs):
        super().__init__(**kwargs)
        self.cluster = cluster
        self.last_report = None

    def __repr__(self) -> str:
        return f"SecureAggFedAvg(accept_failures={self.accept_failures})"

    def aggregate_fit(self, server_round, results, failures):
        """Return the examples-weighted mean of the clients' parameters, summed in the cluster.

        1. Weight client k's parameters by n_k / sum(n) (n_k: its reported
           number of examples, public in Flower).
        2. ``secure_aggregate``: each weighted update is fixed-point encoded
           and secret-shared to P0 and P1, which add the shares; the sum is
           revealed to this strategy only.
        """
        if not results:
            return None, {}
        if not self.accept_failures and failures:
            return None, {}
        total = sum(fit_res.num_examples for _, fit_res in results)
        arrays = [parameters_to_ndarrays(fit_res.parameters) for _, fit_res in results]
        dtypes = [a.dtype for a in arrays[0]]
        updates = [[np.asarray(a, dtype=np.float64) * (fit_res.num_examples / total) for a in client]
                   for client, (_, fit_res) in zip(arrays, results)]
        # Failed clients are listed as dropped owners so the report names them.
        updates += [None] * len(failures)
        summed, report = secure_aggregate(updates, self.cluster, report=True)
        self.last_report = report
        parameters = ndarrays_to_parameters([s.astype(d) for s, d in zip(summed, dtypes)])
        metrics = {
            "secure_aggregation_owners": len(report.counted),
            "secure_aggregation_dropped": len(report.dropped),
            "secure_aggregation_bytes_per_owner": int(max(report.bytes_per_owner.values())),
            "secure_aggregation_ms": float(report.seconds * 1e3),
        }
        if self.fit_metrics_aggregation_fn:
            metrics.update(self.fit_metrics_aggregation_fn([(r.num_examples, r.metrics) for _, r in results]))
        return parameters, metrics
