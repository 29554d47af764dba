"""The measuring half of bench/network.py: time the seed CNN on a cluster, read each link's traffic, model it.

`measure(...)` runs where the model owner runs (its own network
namespace) and returns one row per link profile and batch size;
`predict_latency(row, compute_row, delay, rate)` is the analytic model.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import time

import numpy as np

from pysmpc.parties.channel import is_offline_tag
from pysmpc.serve.benchmark import peak_rss_mb, traffic_per_image

__all__ = ["RelayCounters", "CpuClock", "measure", "predict_latency", "ADDRESS_NAMES"]

# Who sits at each address of bench/network.py's topology (the model owner is "MO").
ADDRESS_NAMES = {"10.77.0.10": "P0", "10.77.0.11": "P1", "10.77.0.12": "P2", "10.77.0.20": "MO"}
# The links of the topology, each (a, b): bytes are reported as "a>b" and "b>a".
LINKS = (("P0", "P1"), ("P0", "P2"), ("P1", "P2"), ("MO", "P0"), ("MO", "P1"), ("MO", "P2"))


class RelayCounters:
    """The three workers' relays, read and reset over their control sockets.

    Each relay sits in front of one worker, so every connection crosses the
    relay of the party it connects to; together they see every link.
    """

    def __init__(self, control_paths: dict[str, str]):
        self.control_paths = control_paths  # party name -> Unix socket path

    def reset(self) -> None:
        self._tell_all("reset")

    def set_link(self, delay: float, rate_bits_per_s: float | None) -> None:
        """Give every link this one-way delay (s) and rate (bit/s, None: no cap), both directions."""
        self._tell_all(f"set {delay * 1000!r} {'none' if rate_bits_per_s is None else repr(rate_bits_per_s / 1e6)}")

    def _tell_all(self, command: str) -> None:
        for path in self.control_paths.values():
            reply = _ask(path, command)
            if reply != {"ok": True}:
                raise RuntimeError(f"the relay at {path} refused {command!r}: {reply}")

    def link_bytes(self) -> dict[str, int]:
        """Wire bytes (TLS records included) of each direction of each link since the last reset."""
        sent = {f"{a}>{b}": 0 for link in LINKS for a, b in (link, link[::-1])}
        for party, path in self.control_paths.items():
            for conn in _ask(path, "stats")["connections"]:
                peer = ADDRESS_NAMES.get(conn["peer"].rsplit(":", 1)[0].strip("[]"))
                if peer is None:
                    raise RuntimeError(f"the relay of {party} carried a connection from unknown {conn['peer']}")
                sent[f"{peer}>{party}"] += conn["peer_to_target"]["bytes"]
                sent[f"{party}>{peer}"] += conn["target_to_peer"]["bytes"]
        return sent


class CpuClock:
    """CPU seconds (user + system, all threads, 10 ms ticks) that named processes have used: /proc/PID/stat."""

    def __init__(self, pids: dict[str, int]):
        self.pids = pids
        self._tick = os.sysconf("SC_CLK_TCK")

    def read(self) -> dict[str, float]:
        used = {}
        for name, pid in self.pids.items():
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()  # after "pid (comm)": state is fields[0]
            used[name] = (int(fields[11]) + int(fields[12])) / self._tick  # utime, stime
        return used


def _ask(path: str, command: str) -> dict:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(path)
        sock.sendall(command.encode() + b"\n")
        return json.loads(sock.makefile("rb").readline())


def measure(cluster, model, images: np.ndarray, batches, repeats: int, relays: RelayCounters,
            profiles: dict[str, tuple[float, float | None]], cpu: CpuClock | None = None,
            progress=print) -> list[dict]:
    """Time private predictions on prepared material as `pysmpc bench` does, under each link profile in turn.

    Per batch: one warm-up prediction and one whose traffic is counted,
    both on unshaped links (channel stats: rounds and payload bytes;
    relays: wire bytes per link, of the prediction and of making its
    material; neither depends on the link). Then `repeats` cycles through
    `profiles` ({name: (one-way delay s, rate bit/s or None)}): switch
    every relay to the profile, prepare the material (offline, timed
    apart), predict (online, timed). Cycling, rather than one profile after
    the other, spreads the load of a shared host evenly over the profiles,
    so their differences are the network's. One row per (profile, batch);
    latency is the median online time. With `cpu`, each row also has the
    CPU seconds each process used per online prediction (their mean).
    """
    shared = model.share(cluster)
    rows = []
    try:
        for batch in batches:
            x = np.concatenate([images] * (batch // len(images) + 1))[:batch]
            relays.set_link(0.0, None)
            shared.predict(x)  # warm-up: allocator, Numba dispatch
            counted = {"batch": batch}
            _reset(cluster, relays)
            shared.prepare(batch)
            dealer = traffic_per_image(cluster.stats(), batch)["dealer_bytes_per_image"]
            counted["offline_link_bytes"] = relays.link_bytes()
            _reset(cluster, relays)
            shared.predict(x)
            stats = cluster.stats()
            counted.update(traffic_per_image(stats, batch), dealer_bytes_per_image=dealer,
                           worker_rounds=_protocol_rounds(stats["P0"]), worker_rounds_p1=_protocol_rounds(stats["P1"]),
                           planned_rounds=sum(c.rounds for _, c in shared.cost(batch, prepared=True)),
                           link_bytes=relays.link_bytes())
            online = {name: [] for name in profiles}
            offline = {name: [] for name in profiles}
            cpu_used = {name: {} for name in profiles}
            for _ in range(repeats):
                for name, (delay, rate) in profiles.items():
                    relays.set_link(delay, rate)
                    offline[name].append(shared.prepare(batch)["seconds"])
                    cpu_before = cpu.read() if cpu else {}
                    start = time.perf_counter()
                    shared.predict(x)
                    online[name].append(time.perf_counter() - start)
                    for process, seconds in (cpu.read() if cpu else {}).items():
                        cpu_used[name][process] = cpu_used[name].get(process, 0.0) + seconds - cpu_before[process]
            for name in profiles:
                latency = statistics.median(online[name])
                rows.append(dict(counted, profile=name, latency_ms=1000 * latency, peak_rss_mb=peak_rss_mb("self"),
                                 worker_peak_rss_mb=max(peak_rss_mb(pid) for p, pid in (cpu.pids if cpu else {}).items()
                                                        if p in ("P0", "P1", "P2")) if cpu else None,
                                 latency_ms_all=[1000 * t for t in online[name]], images_per_s=batch / latency,
                                 offline_ms=1000 * statistics.median(offline[name]),
                                 cpu_ms={p: 1000 * t / repeats for p, t in cpu_used[name].items()}))
                progress(f"  {name} batch {batch}: {1000 * latency:.1f} ms online (median of {repeats}), "
                         f"{batch / latency:,.0f} images/s, {counted['worker_rounds']} rounds")
    finally:
        relays.set_link(0.0, None)
        shared.stop()
    return rows


def _reset(cluster, relays: RelayCounters) -> None:
    cluster.reset_stats()
    relays.reset()


def _protocol_rounds(tags: dict) -> int:
    """Rounds a worker waited on its peers: online tags, less the input it waits for from the model owner."""
    return sum(s["rounds"] for t, s in tags.items() if not is_offline_tag(t) and t not in ("input", "output"))


def predict_latency(row: dict, compute_row: dict, delay: float, rate_bits_per_s: float) -> dict:
    """The analytic model of one online prediction over links of one-way `delay` and rate `rate_bits_per_s`.

    rtt model:      compute + round trips x RTT + bytes / rate, where
      compute     = the latency measured with no delay and no rate cap
                    (`compute_row`: same processes, TLS and relays);
      round trips = the workers' protocol rounds (P0 <-> P1) + 1 (the
                    model owner's call out and the reply back), RTT = 2 x delay;
      bytes       = what the three sequential phases put on their busiest
                    link direction: the input (MO>P0 or MO>P1, sent in
                    parallel), the protocol (P0>P1 or P1>P0: both send at
                    once on a full-duplex link), the output (P0>MO or P1>MO).
    one-way model:  the same with each protocol round costing one one-way
                    delay: in an exchange both parties send at once, so a
                    round waits for one crossing, not a question and its
                    answer (the model owner's call and reply stay one RTT).
    overlap model:  the one-way model with max(compute, bytes / rate) for
                    compute + bytes / rate: the lower bound when moving the
                    bytes (TLS, copies), which the unshaped run counts as
                    compute, happens while they cross the slower link.
    """
    link = row["link_bytes"]
    phase_bytes = (max(link["MO>P0"], link["MO>P1"]) + max(link["P0>P1"], link["P1>P0"])
                   + max(link["P0>MO"], link["P1>MO"]))
    transfer = phase_bytes * 8 / rate_bits_per_s
    compute = compute_row["latency_ms"] / 1000
    round_trips = row["worker_rounds"] + 1
    one_way_latency = row["worker_rounds"] * delay + 2 * delay
    models = {"rtt": compute + round_trips * 2 * delay + transfer,
              "one_way": compute + one_way_latency + transfer,
              "overlap": max(compute, transfer) + one_way_latency}
    measured = row["latency_ms"] / 1000
    return {"compute_ms": 1000 * compute, "round_trips": round_trips, "transfer_ms": 1000 * transfer,
            **{f"{name}_ms": 1000 * t for name, t in models.items()},
            **{f"{name}_error": measured / t - 1 for name, t in models.items()}}
