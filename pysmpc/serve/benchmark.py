"""Measure private inference of a model: latency, throughput, traffic and rounds per image."""

from __future__ import annotations

import resource
import time

import numpy as np

from pysmpc.parties.channel import is_offline_tag

__all__ = ["measure_inference", "measure_layers", "peak_rss_mb", "prepared_traffic_per_image", "speed_ratios",
           "torch_available", "traffic_per_image"]

# The system name of each plaintext baseline row.
NUMPY_BASELINE = "plaintext numpy (float64)"
TORCH_BASELINE = "pytorch"


def torch_available() -> bool:
    """Whether PyTorch can be imported (the "pytorch" baseline needs it)."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


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
    """Time model.predict (plaintext), PyTorch and private predictions per cluster kind and batch size.

    clusters: "plaintext" (the float64 numpy executor, model.predict),
    "pytorch" (the same weights as a float32 PyTorch module on one thread,
    graph.to_torch: what a PyTorch user would run; needs torch), and the
    private runs "in-process" and "tcp".

    Private predictions run as a server runs them: the dealer's material
    for each query is made ahead (SharedModel.prepare, offline, untimed
    in the latency) and the query then runs online on it. Each row:
    system, batch, latency_ms (online; median of `repeats` runs after one
    warm-up), images_per_s and the peak RSS of this process. The "pytorch"
    rows add dtype, threads and torch_version. The private rows add
    offline_ms (median time to prepare one batch's material), online and
    dealer bytes per image (cluster.stats() of one prepared run), rounds
    per inference (the cost plan, which the tests check against the
    channels) and, over TCP, the largest peak RSS of the three workers.
    """
    from pysmpc.runtime.local import LocalCluster
    from pysmpc.runtime.tcp import TcpCluster

    rows = []
    need = max(batches)
    x_all = np.concatenate([images] * (need // len(images) + 1))[:need]
    for kind in clusters:
        if kind == "plaintext":
            for batch in batches:
                rows.append(_timed(NUMPY_BASELINE, batch, lambda b=batch: model.predict(x_all[:b]), repeats))
                _tick(progress)
            continue
        if kind == "pytorch":
            rows.extend(_torch_rows(model.graph, x_all, batches, repeats, progress))
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
                    row["worker_peak_rss_mb"] = max(peak_rss_mb(p.pid) for p in cluster.processes.values())
                row["rounds"] = sum(c.rounds for _, c in shared.cost(batch, prepared=True))
                rows.append(row)
                _tick(progress)
            shared.stop()
    return rows


def _torch_rows(graph, x_all: np.ndarray, batches, repeats: int, progress):
    """Time the graph as a float32 PyTorch module on one thread (the setting is restored afterwards)."""
    import torch

    from pysmpc.graph import to_torch

    try:
        module = to_torch(graph)
    except NotImplementedError:  # a layer kind to_torch has no module for: no PyTorch rows (the caller says so)
        return
    # NCHW float32, made once: the layout and type a PyTorch user feeds in (not part of the timing).
    nhwc = x_all.ndim == 4 and getattr(graph, "input_layout", "NHWC") != "NCHW"
    x_torch = torch.from_numpy(np.ascontiguousarray(x_all.transpose(0, 3, 1, 2) if nhwc else x_all,
                                                    dtype=np.float32))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            for batch in batches:
                row = _timed(TORCH_BASELINE, batch, lambda b=batch: module(x_torch[:b]), repeats)
                row.update(dtype="float32", threads=1, torch_version=torch.__version__)
                yield row
                _tick(progress)
    finally:
        torch.set_num_threads(threads)


def speed_ratios(rows: list[dict]) -> list[dict]:
    """How many times slower each private row is than each plaintext baseline row of the same batch.

    One dict per (private row, baseline): system, batch, baseline,
    latency_ratio (private / baseline latency) and throughput_ratio
    (baseline / private images per second; the same number, as both come
    from one median).
    """
    baselines = [r for r in rows if r["system"] in (NUMPY_BASELINE, TORCH_BASELINE)]
    ratios = []
    for row in rows:
        if not row["system"].startswith("pysmpc"):
            continue
        for base in baselines:
            if base["batch"] == row["batch"]:
                ratios.append({"system": row["system"], "batch": row["batch"], "baseline": base["system"],
                               "latency_ratio": row["latency_ms"] / base["latency_ms"],
                               "throughput_ratio": base["images_per_s"] / row["images_per_s"]})
    return ratios


def measure_layers(model, batch: int = 1, repeats: int = 5, images: np.ndarray | None = None) -> list[dict]:
    """Per-layer online cost of private predictions in-process, on material made ahead (as a server runs them).

    Runs one untimed prediction, then `repeats` predictions of `batch`
    inputs (`images`, or uniform random ones in [0, 1]), each on material
    prepared just before it. Returns one dict per layer of P0's profile:
    name, kind, seconds (median over the runs), bytes_sent and rounds (P0
    online, what each computing party sends; the same on every run).
    """
    from pysmpc.runtime.local import LocalCluster

    if batch < 1 or repeats < 1:
        raise ValueError(f"batch and repeats must be positive, got {batch} and {repeats}")
    if images is None:
        images = np.random.default_rng(0).random((batch, *model.input_shape))
    x = np.asarray(images, dtype=np.float64)[:batch]
    profiles = []
    with LocalCluster() as cluster:
        shared = model.share(cluster)
        shared.predict(x)  # warm-up: first-call costs (allocator, lazy imports) are not the layers'
        for _ in range(repeats):
            shared.prepare(batch)
            shared.predict(x)
            profiles.append(shared.profile)
        shared.stop()
    layers = []
    for i, first in enumerate(profiles[0]):
        layers.append({"name": first["name"], "kind": first["kind"],
                       "seconds": float(np.median([p[i]["seconds"] for p in profiles])),
                       "bytes_sent": int(first["bytes_sent"]), "rounds": int(first["rounds"])})
    return layers


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


def peak_rss_mb(pid: int | str) -> float:
    """Peak resident memory in MB of process `pid` ("self": this one) from Linux /proc VmHWM; 0 where unreadable."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0
