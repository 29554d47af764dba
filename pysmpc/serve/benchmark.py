"""Measure private inference of a model: latency, throughput, traffic and rounds per image."""

from __future__ import annotations

import resource
import time

import numpy as np

from pysmpc.parties.channel import is_offline_tag

__all__ = ["traffic_per_image", "prepared_traffic_per_image", "measure_inference"]


def traffic_per_image(stats: dict, images: int) -> dict:
    """Online bytes (P0 + P1, sent) and dealer bytes (P2, sent) per image from cluster.stats()."""
    online = sum(s["bytes_sent"] for p in ("P0", "P1") for t, s in stats[p].items()
                 if not is_offline_tag(t) and t not in ("input", "output"))
    dealer = sum(s["bytes_sent"] for s in stats["P2"].values())
    return {"online_bytes_per_image": online / images, "dealer_bytes_per_image": dealer / images}


def prepared_traffic_per_image(cluster, shared_model, x: np.ndarray) -> dict:
    """traffic_per_image of one prediction of x on prepared material, dealer bytes from its preparing.

    With the material made ahead P2 sends nothing during the query, so its
    bytes are counted while the material is made.
    """
    batch = len(x)
    cluster.reset_stats()
    shared_model.prepare(batch)
    dealer = traffic_per_image(cluster.stats(), batch)["dealer_bytes_per_image"]
    cluster.reset_stats()
    shared_model.predict(x)
    traffic = traffic_per_image(cluster.stats(), batch)
    traffic["dealer_bytes_per_image"] = dealer
    return traffic


def measure_inference(model, images: np.ndarray, batches=(1, 64, 256), clusters=("plaintext", "in-process", "tcp"),
                      repeats: int = 3, progress=None) -> list[dict]:
    """Time model.predict (plaintext) and private predictions per cluster kind and batch size.

    Private predictions run as a server runs them: the dealer's material
    for each query is made ahead (SharedModel.prepare, offline, untimed
    in the latency) and the query then runs online on it. Each row:
    system, batch, latency_ms (online; median of `repeats` runs after one
    warm-up), images_per_s, offline_ms (median time to prepare one batch's
    material), online and dealer bytes per image (cluster.stats() of one
    prepared run), rounds per inference (the cost plan, which the tests
    check against the channels), the peak RSS of this process and, over
    TCP, the largest peak RSS of the three workers.
    """
    from pysmpc.runtime.local import LocalCluster
    from pysmpc.runtime.tcp import TcpCluster

    rows = []
    need = max(batches)
    x_all = np.concatenate([images] * (need // len(images) + 1))[:need]
    for kind in clusters:
        if kind == "plaintext":
            for batch in batches:
                rows.append(_timed("plaintext numpy (float64)", batch, lambda b=batch: model.predict(x_all[:b]), repeats))
                _tick(progress)
            continue
        cluster = LocalCluster() if kind == "in-process" else TcpCluster(ephemeral_ports=True)
        with cluster:
            shared = model.share(cluster)
            for batch in batches:
                x = x_all[:batch]
                shared.predict(x)  # warm-up, material dealt online
                traffic = prepared_traffic_per_image(cluster, shared, x)
                online, offline = [], []
                for _ in range(repeats):
                    offline.append(shared.prepare(batch)["seconds"])
                    start = time.perf_counter()
                    shared.predict(x)
                    online.append(time.perf_counter() - start)
                latency = float(np.median(online))
                row = {"system": f"pysmpc {kind}", "batch": batch, "latency_ms": 1000 * latency,
                       "images_per_s": batch / latency, "offline_ms": 1000 * float(np.median(offline)),
                       "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
                row.update(traffic)
                if kind == "tcp":
                    row["worker_peak_rss_mb"] = max(_peak_rss_mb(p.pid) for p in cluster.processes.values())
                row["rounds"] = sum(c.rounds for _, c in shared.cost(batch, prepared=True))
                rows.append(row)
                _tick(progress)
            shared.stop()
    return rows


def _timed(system: str, batch: int, fn, repeats: int) -> dict:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    latency = float(np.median(times))
    return {"system": system, "batch": batch, "latency_ms": 1000 * latency, "images_per_s": batch / latency,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _tick(progress) -> None:
    if progress is not None:
        progress.update(1)


def _peak_rss_mb(pid: int) -> float:
    """Peak resident memory of a process (Linux /proc; 0 where unavailable)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0
