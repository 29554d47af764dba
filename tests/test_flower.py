"""Flower: a small federated run on loopback whose aggregation goes through a pysmpc cluster.

Skipped when flwr is not installed (it is the optional extra pysmpc[flower],
not part of the test extra). Uses Flower's gRPC server and clients
(``start_server`` / ``start_client``, deprecated in Flower 1.13 but still
shipped in 1.42) on 127.0.0.1 with three clients and two rounds.
"""

from __future__ import annotations

import socket
import threading
import time
import warnings

import numpy as np
import pytest

flwr = pytest.importorskip("flwr")

pytestmark = pytest.mark.tcp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(address: str, timeout: float = 60.0) -> None:
    host, port = address.rsplit(":", 1)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, int(port)), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)


class _Client(flwr.client.NumPyClient):
    """A client whose 'training' adds a known offset, so the mean is predictable."""

    def __init__(self, k: int):
        self.k = k

    def get_parameters(self, config):
        return [np.zeros((2, 3), np.float32), np.zeros(3, np.float32)]

    def fit(self, parameters, config):
        return [p + np.float32(self.k + 1) for p in parameters], 10 * (self.k + 1), {}

    def evaluate(self, parameters, config):
        return 0.0, 1, {}


def test_flower_round_trip_through_the_cluster():
    """Three Flower clients share their updates straight to the cluster; the Flower server gets no parameters."""
    from flwr.common import parameters_to_ndarrays
    from flwr.compat.client.app import start_client
    from flwr.server import ServerConfig, start_server

    from pysmpc import LocalCluster
    from pysmpc.fl import Owner
    from pysmpc.fl.flower import SecureAggClient, SecureAggFedAvg

    address = f"127.0.0.1:{_free_port()}"
    rounds, seen_by_server = [], []
    with LocalCluster() as cluster:

        class Recording(SecureAggFedAvg):
            def aggregate_fit(self, server_round, results, failures):
                # What reached the Flower server from each client: no parameters at all.
                seen_by_server.extend(parameters_to_ndarrays(r.parameters) for _, r in results)
                params, metrics = super().aggregate_fit(server_round, results, failures)
                rounds.append((parameters_to_ndarrays(params), metrics, self.last_result))
                return params, metrics

        strategy = Recording(cluster, min_fit_clients=3, min_available_clients=3, fraction_evaluate=0.0,
                             min_evaluate_clients=0)
        def client(k):
            _wait_for(address)  # a client that finds no server gives up, and the server would wait forever
            secure = SecureAggClient(_Client(k), Owner(cluster, f"client-{k}"))
            start_client(server_address=address, client=secure.to_client(), insecure=True)

        clients = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(3)]
        for c in clients:
            c.start()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # start_server installs signal handlers, so it runs in the main thread.
            history = start_server(server_address=address, strategy=strategy,
                                   config=ServerConfig(num_rounds=2, round_timeout=60))
        for c in clients:
            c.join(timeout=30)
    assert history is not None
    assert len(rounds) == 2
    assert len(seen_by_server) == 6 and all(len(p) == 0 for p in seen_by_server), "the server saw parameters"
    # Weighted mean of offsets 1, 2, 3 with weights 10, 20, 30: (10 + 40 + 90) / 60 = 7/3 per round.
    step = (10 * 1 + 20 * 2 + 30 * 3) / 60
    for r, (params, metrics, result) in enumerate(rounds, start=1):
        np.testing.assert_allclose(params[0], np.full((2, 3), r * step), atol=1e-3)
        np.testing.assert_allclose(params[1], np.full(3, r * step), atol=1e-3)
        assert result.counted == ["client-0", "client-1", "client-2"]
        assert metrics["secure_aggregation_owners"] == 3
        assert metrics["secure_aggregation_bytes_per_owner"] == 16 * 10  # 9 weights and the example weight
