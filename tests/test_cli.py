"""The pysmpc command line, run as a user would (python -m pysmpc ...)."""

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
