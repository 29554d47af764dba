"""What the private-inference benchmarks share: the shared model per cluster kind, timing predictions on
material the dealer made ahead, and the single-thread PyTorch baseline's settings."""

import numpy as np
import pytest

import pysmpc as sy
from pysmpc.serve.benchmark import prepared_traffic_per_image


@pytest.fixture(scope="module", params=["in-process", "tcp"])
def shared(request, model):
    """(cluster kind, cluster, the module's `model` shared on it): in-process, then three TCP workers."""
    cluster = sy.LocalCluster() if request.param == "in-process" else sy.TcpCluster(ephemeral_ports=True)
    with cluster:
        yield request.param, cluster, model.share(cluster)


@pytest.fixture
def time_prepared_predict(benchmark):
    """Time shared_model.predict(x) with pytest-benchmark, each run on material made ahead (offline, untimed).

    Warms up once, measures one prepared run's traffic, then times `rounds`
    predictions, each after its own SharedModel.prepare in pedantic's
    untimed setup. Returns the extra_info both benchmarks record:
    offline_ms_per_batch (median), online and dealer bytes per image and
    rounds_per_inference (the cost plan).
    """
    def run(cluster, shared_model, x, rounds: int) -> dict:
        shared_model.predict(x)  # warm up (Numba caches, allocator)
        traffic = prepared_traffic_per_image(cluster, shared_model, x)
        plan_rounds = sum(c.rounds for _, c in shared_model.cost(len(x), prepared=True))
        offline = []

        def prepare():  # the dealer's material, made ahead: offline, not timed
            offline.append(shared_model.prepare(len(x))["seconds"])
            return (x,), {}

        benchmark.pedantic(shared_model.predict, setup=prepare, rounds=rounds, iterations=1)
        return {"offline_ms_per_batch": 1000 * float(np.median(offline)), **traffic,
                "rounds_per_inference": plan_rounds}

    return run




@pytest.fixture
def time_pytorch(benchmark):
    """Time the graph as a float32 PyTorch module (graph.to_torch) on one thread, the baseline a PyTorch user runs.

    run(graph, x) with x a NumPy batch in the module's NCHW layout: with
    `rounds`, pedantic timing of that many rounds (one warm-up) and
    images/s from the median; without, pytest-benchmark's own calibration
    and the mean. Records images_per_s, dtype and threads; returns the
    median seconds. Skips without torch; the thread count is restored.
    """
    torch = pytest.importorskip("torch")
    from pysmpc.graph import to_torch

    def run(graph, x: np.ndarray, rounds: int | None = None) -> float:
        module = to_torch(graph)
        batch = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with torch.inference_mode():
                if rounds is None:
                    benchmark(module, batch)
                else:
                    benchmark.pedantic(module, args=(batch,), rounds=rounds, iterations=1, warmup_rounds=1)
        finally:
            torch.set_num_threads(threads)
        stats = benchmark.stats.stats
        per_batch = stats.mean if rounds is None else stats.median
        benchmark.extra_info.update(images_per_s=len(x) / per_batch, dtype="float32", threads=1)
        return stats.median

    return run
