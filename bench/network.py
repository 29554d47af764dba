"""Measure the seed CNN with its three workers on three simulated hosts, over LAN and WAN links.

    sudo python bench/network.py                      # unshaped, lan, wan; batches 1 and 256
    sudo python bench/network.py --profiles wan --batches 1 --repeats 3 --json wan.json
    sudo python bench/network.py --relu bitplane,fss  # both relu protocols, one after the other

One command sets the topology up, runs the benchmark and takes it all down
again (also on Ctrl-C or an error). Needs root and iproute2 (`ip`).

    netns <tag>-p0  10.77.0.10  relay :4000 -> worker P0 on 127.0.0.1:4100
    netns <tag>-p1  10.77.0.11  relay :4000 -> worker P1 on 127.0.0.1:4100
    netns <tag>-p2  10.77.0.12  relay :4000 -> worker P2 on 127.0.0.1:4100
    netns <tag>-mo  10.77.0.20  the model owner: shares the model, times predictions
    netns <tag>-sw  bridge br0 joining one veth pair from each of the four

The workers' hosts are 10.77.0.1x:4000, their relays (pysmpc.netsim.relay).
P1 connects to P0, P2 to P0 and P1, the model owner to all three, so every
connection crosses exactly one relay, the one in front of the worker it
connects to, and each relay delays both directions of each connection by
the profile's one-way delay and caps each direction at its rate: every
link gets RTT = 2 x delay and `rate` each way. All connections are mutual
TLS with certificates from `pysmpc certs` for those addresses, each
"machine" holding only its own key. The kernel has no netem; the relay
does both delay and rate.

Profiles (one-way delay, rate per direction of each link):
    unshaped   0 ms, no cap         the compute time the analytic model starts from
    lan        0.5 ms, 1 Gbit/s     RTT 1 ms
    wan        20 ms, 100 Mbit/s    RTT 40 ms
The workers start once; for each batch size the model owner cycles
through the profiles `--repeats` times, switching every relay's link over
its control socket (bench/network_measure.py), so a shared host's load
falls on all profiles alike. The unshaped profile always runs. The tables
printed at the end go to bench/NETWORK.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PROFILES = {  # name: (one-way delay in s, rate in bit/s or None)
    "unshaped": (0.0, None),
    "lan": (0.5e-3, 1e9),
    "wan": (20e-3, 100e6),
}
SUBNET = "10.77.0"
HOSTS = {"p0": f"{SUBNET}.10", "p1": f"{SUBNET}.11", "p2": f"{SUBNET}.12", "mo": f"{SUBNET}.20"}
RELAY_PORT, WORKER_PORT = 4000, 4100
NETNS_PREFIX = "pysmpcnet"
# --relu labels: a relu protocol, or "fss-bounded" (fss with Model.bound_relus on the shipped samples).
RELU_LABELS = ("bitplane", "fss", "fss-bounded")
TIMEOUT = 600.0  # s a party waits for a message: with relu_protocol="fss" a batch of 256 moves 1.2 GB of dealer keys to each of P0 and P1, 96 s at 100 Mbit/s


class SetupError(RuntimeError):
    """The topology could not be built (not root, no iproute2, a command failed)."""


# -- topology ---------------------------------------------------------------------------------------------------
class Topology:
    """Five network namespaces (three workers, the model owner, a bridge), the processes in them, a run directory.

    `close()` ends every process this object started (by its pid), deletes
    every namespace it created (their veths go with them) and removes the
    run directory; it is safe to call twice and after a partial setup.
    """

    def __init__(self):
        self.tag = f"{NETNS_PREFIX}{os.getpid()}"
        self.namespaces: list[str] = []
        self.processes: list[tuple[str, subprocess.Popen]] = []
        self.run_dir = Path(tempfile.mkdtemp(prefix="pysmpc-netsim-"))
        self.env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1", OMP_WAIT_POLICY="PASSIVE")

    def ns(self, host: str) -> str:
        return f"{self.tag}-{host}"

    def build(self) -> None:
        switch = self.ns("sw")
        for host in ("sw", *HOSTS):
            _ip("netns", "add", self.ns(host))
            self.namespaces.append(self.ns(host))
        _ip("-n", switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", switch, "link", "set", "br0", "up")
        for host, address in HOSTS.items():
            # The pair is made inside the namespaces, so no name ever appears in the host's own namespace.
            _ip("-n", switch, "link", "add", f"v-{host}", "type", "veth",
                "peer", "name", "eth0", "netns", self.ns(host))
            _ip("-n", switch, "link", "set", f"v-{host}", "master", "br0", "up")
            _ip("-n", self.ns(host), "addr", "add", f"{address}/24", "dev", "eth0")
            _ip("-n", self.ns(host), "link", "set", "eth0", "up")
            _ip("-n", self.ns(host), "link", "set", "lo", "up")

    def start(self, host: str, name: str, argv: list[str]) -> subprocess.Popen:
        """Run `python argv...` in host's namespace, its stderr to a log in the run directory."""
        log = open(self.run_dir / f"{name}.log", "wb")
        proc = subprocess.Popen(["ip", "netns", "exec", self.ns(host), sys.executable, *argv], env=self.env,
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=self.run_dir)
        log.close()
        self.processes.append((name, proc))
        return proc

    def log_tail(self, name: str, chars: int = 2000) -> str:
        try:
            return (self.run_dir / f"{name}.log").read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop_processes(self) -> None:
        for _, proc in self.processes:
            if proc.poll() is None:
                proc.terminate()
        for _, proc in self.processes:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.processes.clear()

    def close(self) -> None:
        self.stop_processes()
        for ns in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self.namespaces.clear()
        shutil.rmtree(self.run_dir, ignore_errors=True)


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise SetupError(f"`ip {' '.join(args)}` failed: {done.stderr.strip() or done.returncode}")


def remove_stale_namespaces() -> list[str]:
    """Delete namespaces left by an earlier run of this script that was killed (its pid is gone)."""
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
    removed = []
    for name in listed:
        owner = name[len(NETNS_PREFIX):].split("-", 1)[0] if name.startswith(NETNS_PREFIX) else ""
        if owner.isdigit() and not Path(f"/proc/{owner}").exists():
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
            removed.append(name)
    return removed


def check_environment() -> None:
    if sys.platform != "linux":
        raise SetupError("network namespaces need Linux")
    if os.geteuid() != 0:
        raise SetupError("network namespaces need root: run as root (sudo python bench/network.py ...)")
    if shutil.which("ip") is None:
        raise SetupError("`ip` (iproute2) is not installed: apt-get install iproute2")
    if not any((ROOT / "pysmpc" / "kernels").glob("_ring*.so")):
        raise SetupError(f"{ROOT}/pysmpc has no built _ring extension: build it, or copy it from an installed pysmpc")


# -- one profile --------------------------------------------------------------------------------------------------
def make_certs(topo: Topology) -> dict[str, Path]:
    """`pysmpc certs` for the workers' addresses; then one directory per machine with only its own files."""
    hosts = ",".join(f"{HOSTS[p]}:{RELAY_PORT}" for p in ("p0", "p1", "p2"))
    made = topo.run_dir / "certs"
    done = subprocess.run([sys.executable, "-m", "pysmpc", "certs", str(made), "--hosts", hosts],
                          env=topo.env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SetupError(f"pysmpc certs failed: {done.stderr.strip()}")
    dirs = {}
    for host, stem in (("p0", "p0"), ("p1", "p1"), ("p2", "p2"), ("mo", "client")):
        d = topo.run_dir / f"tls-{host}"
        d.mkdir(mode=0o700)
        for name in ("ca.pem", f"{stem}.pem", f"{stem}.key"):
            shutil.copy2(made / name, d / name)
        dirs[host] = d
    return dirs


def run(topo: Topology, tls: dict[str, Path], profiles: dict, batches, repeats: int,
        relu_protocols=("bitplane",)) -> list[dict]:
    """Start the three workers and their relays, run the model owner's half, stop them; its rows."""
    hosts, controls, pids = start_workers(topo, tls)
    return _run_owner(topo, hosts, controls, pids, tls, profiles, batches, repeats, relu_protocols)


def start_workers(topo: Topology, tls: dict[str, Path]):
    """Start the three workers, each behind its relay (unshaped); (hosts, relay control paths, pids)."""
    hosts = ",".join(f"{HOSTS[p]}:{RELAY_PORT}" for p in ("p0", "p1", "p2"))
    controls, pids = {}, {}
    for party in range(3):
        host = f"p{party}"
        worker = topo.start(host, f"worker-P{party}",
                            [str(Path(__file__).resolve()), "worker", "--party", str(party), "--hosts", hosts,
                             "--tls-dir", str(tls[host])])
        _wait_listening(topo, worker, f"worker-P{party}", WORKER_PORT)
        pids[f"P{party}"] = worker.pid  # ip netns exec, then the launcher, exec the worker: one pid
        controls[f"P{party}"] = str(topo.run_dir / f"relay-P{party}.sock")
        # Unshaped to start with; the model owner switches every relay to each profile in turn.
        relay = topo.start(host, f"relay-P{party}",
                           ["-m", "pysmpc.netsim.relay", "--listen", f"{HOSTS[host]}:{RELAY_PORT}",
                            "--to", f"127.0.0.1:{WORKER_PORT}", "--control", controls[f"P{party}"]])
        _wait_path(topo, relay, f"relay-P{party}", Path(controls[f"P{party}"]))
        pids[f"relay-P{party}"] = relay.pid
    return hosts, controls, pids


class OwnerSession:
    """The model owner in its namespace, driven one JSON line at a time over a pipe (bench/bench_network.py).

    Commands: {"share": relu_protocol}, {"link": [delay s, rate bit/s or None]},
    {"prepare": batch} -> {"seconds"}, {"predict": batch} -> {"seconds"},
    {"count": batch} -> one prepared prediction's traffic (rounds, bytes per
    image, dealer bytes per image, wire bytes per link). A pipe round trip
    adds well under a millisecond to what the caller times.
    """

    def __init__(self, topo: Topology, tls: dict[str, Path], hosts: str, controls: dict):
        log = open(topo.run_dir / "owner-session.log", "wb")
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", topo.ns("mo"), sys.executable, str(Path(__file__).resolve()), "owner-session",
             "--hosts", hosts, "--tls-dir", str(tls["mo"]), "--relays", json.dumps(controls)],
            env=topo.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, cwd=topo.run_dir)
        log.close()
        topo.processes.append(("owner-session", self.proc))
        self.topo = topo
        self.ask(hello=True)

    def ask(self, **command) -> dict:
        self.proc.stdin.write((json.dumps(command) + "\n").encode())
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the model owner's session ended: {self.topo.log_tail('owner-session')}")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"the model owner's session failed on {command}: {reply['error']}")
        return reply


def shipped_model(relu_label: str, images):
    """The shipped CNN with the relu protocol a RELU_LABELS entry names (imports the namespaces' pysmpc)."""
    import pysmpc as sy
    from pysmpc.models import shipped_model_path

    model = sy.load_model(shipped_model_path(), relu_protocol="bitplane" if relu_label == "bitplane" else "fss")
    if relu_label == "fss-bounded":
        model.bound_relus(images)
    return model


def owner_session_main(args) -> int:
    """The model owner's side of OwnerSession: one reply line per command line, on stdout only."""
    import numpy as np

    import pysmpc as sy
    from network_measure import RelayCounters, _protocol_rounds
    from pysmpc.models import load_samples
    from pysmpc.serve.benchmark import traffic_per_image

    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # anything else printed goes to the log, not into the replies
    images, _ = load_samples()
    relays = RelayCounters(json.loads(args.relays))
    cluster = sy.TcpCluster(args.hosts, spawn=False, tls_dir=args.tls_dir, timeout=TIMEOUT, startup_timeout=120)
    shared = None

    def inputs(batch):
        return np.concatenate([images] * (batch // len(images) + 1))[:batch]

    with cluster:
        for line in sys.stdin:
            command = json.loads(line)
            try:
                reply = {}
                if "share" in command:
                    if shared is not None:
                        shared.stop()
                    shared = shipped_model(command["share"], images).share(cluster)
                elif "link" in command:
                    relays.set_link(*command["link"])
                elif "prepare" in command:
                    reply["seconds"] = shared.prepare(command["prepare"])["seconds"]
                elif "predict" in command:
                    x = inputs(command["predict"])
                    start = time.perf_counter()
                    shared.predict(x)
                    reply["seconds"] = time.perf_counter() - start
                elif "count" in command:
                    batch = command["count"]
                    cluster.reset_stats()
                    relays.reset()
                    shared.prepare(batch)
                    dealer = traffic_per_image(cluster.stats(), batch)["dealer_bytes_per_image"]
                    offline_links = relays.link_bytes()
                    cluster.reset_stats()
                    relays.reset()
                    shared.predict(inputs(batch))
                    stats = cluster.stats()
                    reply.update(traffic_per_image(stats, batch), dealer_bytes_per_image=dealer,
                                 rounds=_protocol_rounds(stats["P0"]), link_bytes=relays.link_bytes(),
                                 offline_link_bytes=offline_links)
            except Exception as exc:  # reported to the caller, which raises it
                reply = {"error": f"{type(exc).__name__}: {exc}"}
            print(json.dumps(reply), file=replies, flush=True)
        if shared is not None:
            shared.stop()
    return 0


def _run_owner(topo: Topology, hosts: str, controls: dict, pids: dict, tls, profiles, batches, repeats,
               relu_protocols) -> list[dict]:
    out = topo.run_dir / "rows.json"
    owner = topo.start("mo", "model-owner",
                       [str(Path(__file__).resolve()), "model-owner", "--hosts", hosts, "--tls-dir", str(tls["mo"]),
                        "--relays", json.dumps(controls), "--pids", json.dumps(pids),
                        "--profiles", json.dumps(profiles),
                        "--batches", ",".join(map(str, batches)), "--repeats", str(repeats), "--out", str(out),
                        "--relu", ",".join(relu_protocols)])
    shown = 0
    while True:  # echo the model owner's progress lines as they come
        done = owner.poll() is not None
        text = topo.log_tail("model-owner", 10**7)
        print(text[shown:], end="", flush=True)
        shown = len(text)
        if done:
            break
        time.sleep(0.5)
    if owner.returncode != 0:
        tails = "\n".join(f"--- {n} ---\n{topo.log_tail(n)}" for n, _ in topo.processes if n != "model-owner")
        raise RuntimeError(f"the model owner failed (exit {owner.returncode}); the other logs end with:\n{tails}")
    topo.stop_processes()  # the workers exit with the session; the relays on SIGTERM
    return json.loads(out.read_text())


def _wait_listening(topo: Topology, proc: subprocess.Popen, name: str, port: int, timeout: float = 30.0) -> None:
    """Wait until the process's namespace has a TCP socket listening on 127.0.0.1:port (/proc/PID/net/tcp)."""
    wanted = f"0100007F:{port:04X}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with code {proc.returncode}: {topo.log_tail(name)}")
        try:
            lines = Path(f"/proc/{proc.pid}/net/tcp").read_text().splitlines()[1:]
        except OSError:
            lines = []
        if any(f.split()[1] == wanted and f.split()[3] == "0A" for f in lines):  # 0A: LISTEN
            return
        time.sleep(0.05)
    raise RuntimeError(f"{name} is not listening on 127.0.0.1:{port} after {timeout:g} s: {topo.log_tail(name)}")


def _wait_path(topo: Topology, proc: subprocess.Popen, name: str, path: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with code {proc.returncode}: {topo.log_tail(name)}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name} did not open {path} within {timeout:g} s: {topo.log_tail(name)}")
        time.sleep(0.05)


# -- the two halves that run inside namespaces ----------------------------------------------------------------------
def worker_main(args) -> int:
    """Listen on 127.0.0.1:WORKER_PORT (behind this namespace's relay), then become `pysmpc.runtime.worker`.

    The worker's host entry is the relay's address, so it is handed its
    listening socket (the worker's --listen-fd, as TcpCluster does) instead
    of binding that entry itself. exec keeps the pid the parent will stop.
    """
    import socket

    listener = socket.create_server(("127.0.0.1", WORKER_PORT))
    os.set_inheritable(listener.fileno(), True)
    os.execv(sys.executable, [sys.executable, "-m", "pysmpc.runtime.worker", "--party", str(args.party),
                              "--hosts", args.hosts, "--tls-dir", args.tls_dir, "--timeout", str(TIMEOUT),
                              "--startup-timeout", "120", "--listen-fd", str(listener.fileno())])
    return 1  # not reached


def model_owner_main(args) -> int:
    """Connect to the three workers through their relays, share the model, measure; write JSON rows."""
    import numpy as np

    import pysmpc as sy
    from network_measure import CpuClock, RelayCounters, measure
    from pysmpc.models import load_samples

    images, _ = load_samples()
    cluster = sy.TcpCluster(args.hosts, spawn=False, tls_dir=args.tls_dir, timeout=TIMEOUT, startup_timeout=120)
    rows = []
    with cluster:
        for relu_protocol in args.relu.split(","):
            print(f"relu protocol {relu_protocol}", flush=True)
            model = shipped_model(relu_protocol, images)
            measured = measure(cluster, model, np.asarray(images), args.batches, args.repeats,
                               RelayCounters(json.loads(args.relays)), json.loads(args.profiles),
                               cpu=CpuClock(dict(json.loads(args.pids), MO=os.getpid())),
                               progress=lambda s: print(s, flush=True))
            rows += [dict(row, relu_protocol=relu_protocol) for row in measured]
    Path(args.out).write_text(json.dumps(rows))
    return 0


# -- report ----------------------------------------------------------------------------------------------------------
def report(rows: list[dict]) -> str:
    """Markdown tables: measured beside the analytic models, CPU per prediction, each link's rounds and bytes."""
    from network_measure import predict_latency

    rows = sorted(rows, key=lambda r: (r.get("relu_protocol", "bitplane"), r["batch"],
                                       list(PROFILES).index(r["profile"])))
    compute = {(row.get("relu_protocol", "bitplane"), row["batch"]): row for row in rows if row["profile"] == "unshaped"}
    lines = ["| relu | profile | batch | online latency (median) | images/s | rtt model: compute + round trips x RTT + "
             "bytes / rate | error | one-way model | error | overlap model | error | offline (prepare) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        relu = row.get("relu_protocol", "bitplane")
        delay, rate = PROFILES[row["profile"]]
        cells = [relu, row["profile"], str(row["batch"]), f"{row['latency_ms']:.1f} ms",
                 f"{row['images_per_s']:,.0f}"]
        if rate is None:
            cells += ["(the compute time)", "", "", "", "", ""]
        else:
            m = predict_latency(row, compute[(relu, row["batch"])], delay, rate)
            cells += [f"{m['rtt_ms']:.1f} ms = {m['compute_ms']:.1f} + {m['round_trips']} x {2 * delay * 1e3:g} + "
                      f"{m['transfer_ms']:.1f}", f"{m['rtt_error']:+.0%}",
                      f"{m['one_way_ms']:.1f} ms", f"{m['one_way_error']:+.0%}",
                      f"{m['overlap_ms']:.1f} ms", f"{m['overlap_error']:+.0%}"]
        cells.append(f"{row['offline_ms']:.0f} ms")
        lines.append("| " + " | ".join(cells) + " |")
    processes = ["P0", "P1", "P2", "relay-P0", "relay-P1", "relay-P2", "MO"]
    lines += ["", "CPU time per online prediction (ms, user + system, all threads):", "",
              "| relu | profile | batch | " + " | ".join(processes) + " |",
              "|---|---|---|" + "---|" * len(processes)]
    for row in rows:
        cpu = row.get("cpu_ms", {})
        lines.append(f"| {row.get('relu_protocol', 'bitplane')} | {row['profile']} | {row['batch']} | "
                     + " | ".join(f"{cpu[p]:.0f}" if p in cpu else "-" for p in processes) + " |")
    online_links = ("P0>P1", "P1>P0", "MO>P0", "P0>MO", "MO>P1", "P1>MO")
    offline_links = ("P2>P0", "P2>P1", "P2>MO")
    lines += ["", "Wire bytes (TLS records included) per link direction, counted by the relays; rounds from P0's "
              "channel (the plan's in brackets):", "",
              "| relu | batch | rounds P0-P1 | " + " | ".join(online_links) + " | P2's links | while preparing: "
              + " | ".join(offline_links) + " |",
              "|---|---|---|" + "---|" * (len(online_links) + 1 + len(offline_links))]
    for (relu, _batch), row in compute.items():
        b, off = row["link_bytes"], row["offline_link_bytes"]
        p2 = sum(v for k, v in b.items() if "P2" in k)
        lines.append(f"| {relu} | {row['batch']} | {row['worker_rounds']} ({row['planned_rounds']}) | "
                     + " | ".join(_mb(b[k]) for k in online_links) + f" | {_mb(p2)} | "
                     + " | ".join(_mb(off[k]) for k in offline_links) + " |")
    spread = [f"{r.get('relu_protocol', 'bitplane')} {r['profile']} batch {r['batch']}: {min(r['latency_ms_all']):.1f}-{max(r['latency_ms_all']):.1f} ms"
              for r in rows]
    lines += ["", "Range of the timed runs: " + "; ".join(spread) + "."]
    return "\n".join(lines)


def _mb(n: int) -> str:
    if n == 0:
        return "0"
    return f"{n / 1e6:.3f} MB" if n < 1e7 else f"{n / 1e6:.1f} MB"


# -- command line ----------------------------------------------------------------------------------------------------
def _batches(text: str) -> list[int]:
    try:
        batches = [int(b) for b in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected batch sizes like 1,256, got {text!r}") from None
    if any(b < 1 for b in batches):
        raise argparse.ArgumentTypeError(f"batch sizes must be >= 1, got {text!r}")
    return batches


def _interrupt(signum, _frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="bench/network.py", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command")
    worker = sub.add_parser("worker", help=argparse.SUPPRESS)  # run inside a worker's namespace
    worker.add_argument("--party", type=int, required=True)
    worker.add_argument("--hosts", required=True)
    worker.add_argument("--tls-dir", required=True)
    owner = sub.add_parser("model-owner", help=argparse.SUPPRESS)  # run inside the model owner's namespace
    owner.add_argument("--hosts", required=True)
    owner.add_argument("--tls-dir", required=True)
    owner.add_argument("--relays", required=True)
    owner.add_argument("--profiles", required=True)
    owner.add_argument("--pids", required=True)
    owner.add_argument("--batches", type=_batches, required=True)
    owner.add_argument("--repeats", type=int, required=True)
    owner.add_argument("--out", required=True)
    owner.add_argument("--relu", default="bitplane")
    session = sub.add_parser("owner-session", help=argparse.SUPPRESS)  # OwnerSession's process
    session.add_argument("--hosts", required=True)
    session.add_argument("--tls-dir", required=True)
    session.add_argument("--relays", required=True)
    parser.add_argument("--profiles", default="lan,wan",
                        help=f"comma-separated, of {', '.join(PROFILES)} "
                             "(unshaped always runs: the models take their compute time from it)")
    parser.add_argument("--batches", type=_batches, default=[1, 256])
    parser.add_argument("--repeats", type=int, default=9, help="timed predictions per profile and batch size (median)")
    parser.add_argument("--json", default=None, help="also write every row to this file")
    parser.add_argument("--relu", default="bitplane",
                        help="comma-separated relu protocols (bitplane, fss, fss-bounded: fss with each relu's "
                             "bound measured on the shipped samples, Model.bound_relus), one after the other")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))  # this tree's pysmpc (with its netsim relay), as the namespaces' PYTHONPATH
    if args.command == "worker":
        return worker_main(args)
    if args.command == "model-owner":
        return model_owner_main(args)
    if args.command == "owner-session":
        return owner_session_main(args)

    profiles = ["unshaped"] + [p for p in args.profiles.split(",") if p and p != "unshaped"]
    unknown = [p for p in profiles if p not in PROFILES]
    if unknown:
        parser.error(f"unknown profile(s) {', '.join(unknown)}: choose from {', '.join(PROFILES)}")
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    relu_protocols = [r for r in args.relu.split(",") if r]
    if not relu_protocols or any(r not in RELU_LABELS for r in relu_protocols):
        parser.error(f"--relu takes a comma-separated list of {', '.join(RELU_LABELS)}, got {args.relu!r}")
    try:
        check_environment()
    except SetupError as exc:
        print(f"bench/network.py: {exc}", file=sys.stderr)
        return 2
    for stale in remove_stale_namespaces():
        print(f"removed namespace {stale} left by a killed run")
    for signum in (signal.SIGTERM, signal.SIGHUP):  # Ctrl-C is KeyboardInterrupt already
        signal.signal(signum, _interrupt)
    topo = Topology()
    load_before = os.getloadavg()[0]
    try:
        topo.build()
        tls = make_certs(topo)
        for profile in profiles:
            delay, rate = PROFILES[profile]
            print(f"{profile}: one-way delay {delay * 1e3:g} ms, "
                  f"{'no rate cap' if rate is None else f'{rate / 1e6:g} Mbit/s'} per direction of each link")
        print(f"starting the workers; then {args.repeats} cycles through the profiles per batch size", flush=True)
        rows = run(topo, tls, {p: PROFILES[p] for p in profiles}, args.batches, args.repeats, relu_protocols)
    except SetupError as exc:
        print(f"bench/network.py: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:  # a worker, relay or the model owner failed: what it said is in exc
        print(f"bench/network.py: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: tearing the topology down", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not leave namespaces behind
        topo.close()
        signal.signal(signal.SIGINT, signal.default_int_handler)
    load = (load_before, os.getloadavg()[0])
    if args.json:
        Path(args.json).write_text(json.dumps({"profiles": {p: PROFILES[p] for p in profiles}, "load_average": load,
                                               "rows": rows}, indent=1))
    print(report(rows))
    print(f"Load average (1 min) of this host: {load[0]:.1f} before, {load[1]:.1f} after, on {os.cpu_count()} cores.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
