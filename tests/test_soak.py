"""Load: 8 concurrent clients query a model served over mutual TLS; no query fails, memory stays flat.

Clients ask for logits (the secure-argmax answer costs some 30 more rounds
a batch and is covered by tests/test_serve_tcp.py and test_faults.py); every
answer's argmax must equal the plaintext model's, and the logits be close.

The full soak (10,000 queries) is marked slow; run it by hand:

    python -m pytest -m slow tests/test_soak.py -s

(PYSMPC_SOAK_QUERIES changes the total). The normal suite runs 8 x 25 queries.
"""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest

import pysmpc as sy
from pysmpc.models import load_samples
from pysmpc.runtime.certs import make_cluster_certs

pytestmark = pytest.mark.tcp

MODEL_PATH = os.path.join(os.path.dirname(sy.__file__), "data", "mnist_cnn.h5")
CLIENTS = 8
# Worker memory may grow this much between warm-up and the end of a soak.
# Allocator arenas and Python's free lists settle within the warm-up; what
# is left is noise of a few MiB. A leak of one query's state (its input
# share, 6 KiB, a thread, a socket buffer) over 10,000 queries would exceed it.
RSS_GROWTH_BOUND_MIB = 32


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def _image_pool(model, size: int = 64):
    """The shipped MNIST samples and noisy copies whose plaintext top logit leads by > 0.5: clear answers."""
    images = load_samples()[0]
    rng = np.random.default_rng(0)
    noisy = np.clip(images[rng.integers(0, len(images), 4 * size)] + rng.normal(0, 0.1, (4 * size, 28, 28, 1)), 0, 1)
    candidates = np.concatenate([images, noisy])
    logits = model.predict(candidates)
    top2 = np.sort(logits, axis=1)[:, -2:]
    keep = candidates[top2[:, 1] - top2[:, 0] > 0.5][:size]
    return keep, model.predict(keep)


def soak(tmp_path, queries_each: int, warm_up: int) -> dict:
    """Serve CLIENTS x queries_each queries over TLS; return the figures, after checking every answer."""
    make_cluster_certs(tmp_path)
    model = sy.load_model(MODEL_PATH)
    pool, reference = _image_pool(model)
    total = CLIENTS * queries_each
    done = []  # one entry per answered query, appended by the client threads
    errors: list = []
    wrong: list = []
    rss: dict = {}
    series: list = []  # (queries answered, worker VmRSS MiB) every tenth of the run
    checkpoint = max(1, CLIENTS * queries_each // 10)
    lock = threading.Lock()
    cluster = sy.Cluster(*(sy.Worker("localhost:0") for _ in range(3)), tls_dir=tmp_path, ephemeral_ports=True)
    with cluster:
        model.share(cluster)
        pids = {i: p.pid for i, p in cluster.processes.items()}
        hosts = [f"localhost:{p}" for p in cluster.ports]

        def client(k: int):
            rng = np.random.default_rng(k)
            handle = sy.Cluster(*(sy.Worker(h, auto_managed=False) for h in hosts), tls_dir=tmp_path)
            user = sy.Client(timeout=60).connect_to_model((1, 28, 28, 1), (1, 10), handle)
            for _ in range(queries_each):
                j = int(rng.integers(len(pool)))
                try:
                    logits = user.query_model(pool[j])
                except Exception as exc:  # noqa: BLE001 - counted, reported below
                    errors.append(f"client {k}: {exc!r}")
                    continue
                if logits[0].argmax() != reference[j].argmax() or not np.allclose(logits[0], reference[j], atol=5e-2):
                    wrong.append((k, j, logits[0], reference[j]))
                with lock:
                    done.append(1)
                    count = len(done)
                if count == warm_up:
                    rss["warm"] = {i: _rss_mib(pid) for i, pid in pids.items()}
                if count % checkpoint == 0:
                    series.append((count, {i: round(_rss_mib(pid), 1) for i, pid in pids.items()}))

        served = {}
        serving = threading.Thread(target=lambda: served.setdefault("n", model.serve(num_requests=total,
                                                                                     max_restarts=0)))
        start = time.monotonic()
        serving.start()
        threads = [threading.Thread(target=client, args=(k,)) for k in range(CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        serving.join(120)
        elapsed = time.monotonic() - start
        assert not serving.is_alive(), "the serving loop did not end"
        rss["end"] = {i: _rss_mib(pid) for i, pid in pids.items()}
        last_serve = cluster.last_serve
    assert not errors, f"{len(errors)} of {total} queries failed, e.g. {errors[:3]}"
    assert not wrong, f"{len(wrong)} answers differ from the plaintext model, e.g. {wrong[:2]}"
    assert len(done) == total and served.get("n") == total
    assert last_serve == {"served": total, "failed": 0, "restarts": 0, "stopped": "done"}
    growth = {i: rss["end"][i] - rss["warm"][i] for i in pids}
    figures = {"queries": total, "seconds": elapsed, "queries_per_second": total / elapsed,
               "rss_warm_mib": rss["warm"], "rss_end_mib": rss["end"], "rss_growth_mib": growth,
               "rss_series_mib": series}
    print(f"\nsoak: {total} queries from {CLIENTS} TLS clients in {elapsed:.1f} s ({total / elapsed:.1f} queries/s); "
          "worker VmRSS MiB after warm-up -> end: "
          + ", ".join(f"P{i} {rss['warm'][i]:.1f} -> {rss['end'][i]:.1f}" for i in sorted(pids))
          + "\nVmRSS MiB by queries answered: " + "; ".join(f"{n}: {m}" for n, m in series))
    return figures


def test_short_soak(tmp_path):
    start = time.monotonic()
    figures = soak(tmp_path, queries_each=25, warm_up=50)
    # Memory is only reported here: 150 queries after warm-up are too few to tell growth from noise.
    assert time.monotonic() - start < 30, figures


@pytest.mark.slow
def test_soak(tmp_path):
    total = int(os.environ.get("PYSMPC_SOAK_QUERIES", 10_000))
    figures = soak(tmp_path, queries_each=max(1, total // CLIENTS), warm_up=max(50, total // 10))
    for i, growth in figures["rss_growth_mib"].items():
        assert growth < RSS_GROWTH_BOUND_MIB, f"P{i} grew by {growth:.1f} MiB: {figures}"
