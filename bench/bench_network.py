"""The shipped CNN with its workers on three simulated hosts (bench/network.py), over LAN and WAN links.

Run (root, iproute2): pytest bench/bench_network.py --benchmark-only -p no:randomly
Skipped without Linux, root or `ip`. One topology for the module: five
network namespaces, the three workers behind latency/bandwidth relays and
the model owner in its own namespace, driven over a pipe
(network.OwnerSession). Each point switches every relay to the profile,
then times predictions on material made ahead (pedantic's untimed setup
prepares it: offline, recorded apart). A plaintext numpy baseline of the
same batch runs in the same session. extra_info: system ("pysmpc lan" /
"pysmpc wan"), relu protocol, online bytes per image (P0 + P1), dealer
bytes per image, rounds, wire bytes per link (TLS included), the median
offline time and the analytic model's prediction (network_measure).
Batch 256 with the FSS relu moves 2.4 GB of dealer keys per batch: about
3 minutes per prepare at 100 Mbit/s, so that point runs once.
"""

import os
import shutil
import statistics
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import network  # noqa: E402  (bench/network.py: the topology)
from network_measure import predict_latency  # noqa: E402

pytestmark = pytest.mark.skipif(
    sys.platform != "linux" or os.geteuid() != 0 or shutil.which("ip") is None,
    reason="needs Linux, root and iproute2 (network namespaces)")

BATCHES = [1, 256]
PROFILES = ["lan", "wan"]
RELU = ["bitplane", "fss", "fss-bounded"]  # network.RELU_LABELS


@pytest.fixture(scope="module")
def owner():
    network.check_environment()
    network.remove_stale_namespaces()
    topo = network.Topology()
    try:
        topo.build()
        tls = network.make_certs(topo)
        hosts, controls, _ = network.start_workers(topo, tls)
        yield network.OwnerSession(topo, tls, hosts, controls)
    finally:
        topo.close()


@pytest.fixture(scope="module")
def counted():
    """(relu, batch) -> the traffic of one prepared prediction and its unshaped latency (the model's compute)."""
    return {}


def _share(owner, relu, counted, batch):
    if counted.get("shared") != relu:
        owner.ask(share=relu)
        counted["shared"] = relu
    key = (relu, batch)
    if key not in counted:
        owner.ask(link=[0.0, None])
        owner.ask(predict=batch)  # warm-up, material dealt online
        counted[key] = owner.ask(count=batch)
        times = []
        for _ in range(3):
            owner.ask(prepare=batch)
            times.append(owner.ask(predict=batch)["seconds"])
        counted[key]["compute_ms"] = 1000 * statistics.median(times)
    return counted[key]


@pytest.mark.parametrize("batch", BATCHES)
def test_plaintext_numpy(benchmark, batch):
    import pysmpc as sy
    from pysmpc.models import load_samples, shipped_model_path

    model = sy.load_model(shipped_model_path())
    x = np.concatenate([load_samples()[0]] * 16)[:batch]
    benchmark.group = f"network batch {batch}"
    benchmark.extra_info.update(system="plaintext numpy (float64)", batch=batch)
    benchmark(model.predict, x)


@pytest.mark.parametrize("relu", RELU)
@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("batch", BATCHES)
def test_private_inference(benchmark, owner, counted, batch, profile, relu):
    traffic = _share(owner, relu, counted, batch)
    delay, rate = network.PROFILES[profile]
    owner.ask(link=[delay, rate])
    offline = []
    try:
        benchmark.group = f"network batch {batch}"
        rounds = 1 if (batch >= 256 and relu.startswith("fss") and profile == "wan") else 3
        benchmark.pedantic(lambda: owner.ask(predict=batch),
                           setup=lambda: offline.append(owner.ask(prepare=batch)["seconds"]),
                           rounds=rounds, iterations=1, warmup_rounds=0)
    finally:
        owner.ask(link=[0.0, None])
    row = dict(traffic, worker_rounds=traffic["rounds"], latency_ms=1000 * benchmark.stats.stats.median)
    model = predict_latency(row, {"latency_ms": traffic["compute_ms"]}, delay, rate)
    benchmark.extra_info.update(
        system=f"pysmpc {profile}", relu_protocol=relu, batch=batch,
        images_per_s=batch / benchmark.stats.stats.median, offline_ms=1000 * statistics.median(offline),
        online_bytes_per_image=traffic["online_bytes_per_image"],
        dealer_bytes_per_image=traffic["dealer_bytes_per_image"], rounds=traffic["rounds"],
        link_bytes=traffic["link_bytes"], offline_link_bytes=traffic["offline_link_bytes"],
        compute_ms=traffic["compute_ms"], model_one_way_ms=model["one_way_ms"],
        model_overlap_ms=model["overlap_ms"], model_one_way_error=model["one_way_error"])
