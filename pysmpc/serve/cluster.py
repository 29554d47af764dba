"""The user's names for a TCP cluster: Worker and Cluster."""

from __future__ import annotations

from dataclasses import dataclass

from pysmpc.runtime.tcp import DEFAULT_TIMEOUT, TcpCluster

__all__ = ["Worker", "Cluster"]


@dataclass(frozen=True)
class Worker:
    """One party of a cluster: where it listens, and whether the cluster starts it.

    auto_managed=True: `Cluster.start()` launches the worker process itself,
    and restarts it (with the other two) when it is lost while serving.
    auto_managed=False: the worker was started by hand
    (`pysmpc worker --party N --hosts ...`) and the cluster connects to it.
    """

    host: str = "localhost:4000"
    auto_managed: bool = True


class Cluster(TcpCluster):
    """Three workers (P0, P1, P2 in that order) linked over TCP.

    >>> cluster = Cluster(Worker("localhost:4000"), Worker("localhost:4001"), Worker("localhost:4002"))
    >>> cluster.start(); model.share(cluster); model.serve(num_requests=3); cluster.stop()

    A client process builds the same Cluster (without starting it) to query
    the served model: `Client().connect_to_model(..., cluster=cluster)`.

    Workers off loopback need `tls_dir` (certificates from `pysmpc certs`:
    the model owner and each client use ca.pem and client.pem/.key); without
    it the Cluster raises a CleartextError, unless `allow_cleartext=True`
    forces cleartext on a network trusted with the secrets.

    `timeout`: seconds after which a silent worker counts as lost (see
    TcpCluster). With auto_managed workers, `model.serve(...)` survives a
    lost worker: the queries in flight fail, the workers restart, the model
    is re-shared and the next query is answered.
    """

    def __init__(self, *workers: Worker, tls_dir=None, frac_bits: int = 16, int_bits: int = 15,
                 timeout: float = DEFAULT_TIMEOUT, allow_cleartext: bool = False, **kwargs):
        if len(workers) != 3:
            raise ValueError(f"a cluster has exactly three workers (P0, P1, P2), got {len(workers)}")
        for w in workers:
            if not isinstance(w, Worker):
                raise TypeError(f"Cluster takes Worker objects, got {type(w).__name__}")
        managed = {bool(w.auto_managed) for w in workers}
        if len(managed) != 1:
            raise ValueError("either all workers are auto_managed or none is (mixed clusters are not supported)")
        self.workers = tuple(workers)
        super().__init__(hosts=[w.host for w in workers], spawn=managed.pop(), tls_dir=tls_dir,
                         frac_bits=frac_bits, int_bits=int_bits, timeout=timeout,
                         allow_cleartext=allow_cleartext, **kwargs)
