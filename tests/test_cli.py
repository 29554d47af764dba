"""The pysmpc command line, run as a user would (python -m pysmpc ...)."""

import re
import socket
import subprocess
import sys
import tempfile
import time

import pytest

from pysmpc.models import shipped_model_path


# Subprocesses run outside the repository, so they import the installed
# package rather than the source tree (which has no compiled kernels).
OUTSIDE = tempfile.gettempdir()


def run_cli(*args, timeout=240):
    return subprocess.run([sys.executable, "-m", "pysmpc", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=OUTSIDE)


def test_demo_prints_the_users_lines():
    result = run_cli("demo", "--images", "3", "--no-progress")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "Actual: 7, predicted: 7" in lines
    assert "Actual: 2, predicted: 2" in lines
    assert "Actual: 1, predicted: 1" in lines
    assert "3/3 correct" in lines[-1] and "kB per image" in lines[-1]


def test_inspect_prints_layers_and_secure_cost():
    result = run_cli("inspect", str(shipped_model_path()))
    assert result.returncode == 0, result.stderr
    assert "conv1" in result.stdout and "total" in result.stdout and "rounds" in result.stdout


def test_inspect_a_missing_file_is_a_clear_error(tmp_path):
    result = run_cli("inspect", str(tmp_path / "nope.h5"))
    assert result.returncode == 2
    assert "error" in result.stderr and "nope.h5" in result.stderr


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.mark.tcp
def test_serve_and_query_over_tcp(tmp_path):
    hosts = ",".join(f"localhost:{p}" for p in _free_ports(3))
    server = subprocess.Popen([sys.executable, "-m", "pysmpc", "serve", str(shipped_model_path()),
                               "--requests", "2", "--hosts", hosts], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, cwd=OUTSIDE)
    try:
        deadline = time.monotonic() + 60
        query = None
        while time.monotonic() < deadline:
            query = run_cli("query", "--sample", "0", "--sample", "1", "--hosts", hosts, "--timeout", "60")
            if query.returncode == 0 or not ("cannot reach" in query.stderr or "no session yet" in query.stderr):
                break
            time.sleep(0.5)
        out, err = server.communicate(timeout=120)
    finally:
        server.kill()
    assert query.returncode == 0, query.stderr
    assert "Actual: 7, predicted: 7" in query.stdout and "Actual: 2, predicted: 2" in query.stdout
    assert server.returncode == 0, err
    assert "served 2 requests (0 refused)" in out


def test_bench_prints_a_table_and_writes_json(tmp_path):
    import json

    out = tmp_path / "bench.json"
    result = run_cli("bench", "--batches", "1,2", "--repeats", "1", "--no-tcp", "--no-progress", "--json", str(out))
    assert result.returncode == 0, result.stderr
    assert "pysmpc in-process" in result.stdout and "plaintext numpy" in result.stdout
    rows = json.loads(out.read_text())
    secure = [r for r in rows if r["system"] == "pysmpc in-process"]
    # 16: the bench times predictions on prepared material, whose input mask saves conv1's round, and
    # the logits are truncated to F bits before they are revealed (1 round).
    assert [r["batch"] for r in secure] == [1, 2] and all(r["rounds"] == 16 for r in secure)
    assert all(r["offline_ms"] > 0 for r in secure)
    assert all(0 < r["online_bytes_per_image"] < 0.5e6 for r in secure)


def _children(pid: int) -> list[int]:
    """Ids of the processes whose parent is `pid` (Linux /proc)."""
    import os

    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry))
    return found


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _start_server(*args):
    """`pysmpc serve` (shipped CNN, free ports) in a process group of its own; (process, hosts, worker pids)."""
    hosts = [f"localhost:{p}" for p in _free_ports(3)]
    server = subprocess.Popen([sys.executable, "-m", "pysmpc", "serve", str(shipped_model_path()),
                               "--hosts", ",".join(hosts), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, cwd=OUTSIDE, start_new_session=True)
    lines = []
    while not any(line.startswith("serving") for line in lines):
        line = server.stdout.readline()
        if not line:
            server.wait(10)
            raise AssertionError(f"pysmpc serve exited before serving: {lines} {server.stderr.read()}")
        lines.append(line)
    workers = _children(server.pid)
    assert len(workers) == 3, workers
    return server, hosts, workers


def _assert_gone(pids, within: float):
    deadline = time.monotonic() + within
    while any(_running(p) for p in pids):
        assert time.monotonic() < deadline, f"workers {[p for p in pids if _running(p)]} outlived the server"
        time.sleep(0.1)


@pytest.mark.tcp
@pytest.mark.parametrize("how", ["SIGTERM", "Ctrl-C"])
def test_serve_until_stopped_survives_a_refused_query_and_stops_cleanly(how):
    import os
    import signal

    import pysmpc as sy
    from pysmpc.models import load_samples

    images, labels = load_samples()
    server, hosts, workers = _start_server("--reveal", "argmax")
    try:
        cluster = sy.Cluster(*(sy.Worker(h, auto_managed=False) for h in hosts))
        client = sy.Client(timeout=60).connect_to_model((1, 28, 28, 1), (1, 10), cluster)
        with pytest.raises(sy.ClusterError, match="reveals only argmax"):
            client.query_model(images[0])  # refused: no exit, no request used up
        assert client.query_model(images[0], reveal="argmax")[0] == labels[0]
        if how == "SIGTERM":
            server.send_signal(signal.SIGTERM)
        else:  # a terminal sends Ctrl-C to the whole foreground process group, workers included
            os.killpg(server.pid, signal.SIGINT)
        out, err = server.communicate(timeout=60)
    finally:
        server.kill()
    name = "SIGTERM" if how == "SIGTERM" else "SIGINT"
    assert server.returncode == 0, err
    assert "Traceback" not in err, err
    assert out.splitlines()[-1].startswith(f"stopped by {name}: served 1 requests (1 refused) in "), out
    logged = [line for line in err.splitlines() if " query " in line]
    assert len(logged) == 2, err
    assert "refused (1 row(s), logits): " in logged[0] and "reveals only argmax" in logged[0]
    assert re.search(r"\d\d:\d\d:\d\d,\d+ query \w+: 1 row\(s\), argmax, [\d.]+ ms online$", logged[1]), logged
    _assert_gone(workers, within=10)


@pytest.mark.tcp
def test_a_killed_server_leaves_no_worker_behind():
    server, _, workers = _start_server()
    server.kill()  # SIGKILL: no goodbye to the workers
    server.wait(10)
    # Each spawned worker sees its parent gone within half a second (before: only once a heartbeat to the
    # dead owner failed, ~8 s while serving, or after the 65 s startup timeout before the owner connected).
    _assert_gone(workers, within=3)
