"""The user's R scripts (examples/R): serve.R and client.R in two R processes, through reticulate."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.tcp

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "R"
RSCRIPT = shutil.which("Rscript")
INSTALL_R = "apt-get install r-base-core r-cran-reticulate; .ci/run does"
EXPECTED = ["Actual: 7, predicted: 7", "Actual: 2, predicted: 2", "Actual: 1, predicted: 1"]


def _free_ports(n):
    sockets = [socket.create_server(("localhost", 0)) for _ in range(n)]
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _r_env():
    env = dict(os.environ)
    env["RETICULATE_PYTHON"] = sys.executable  # the Python (and installed pysmpc) running these tests
    env["PYSMPC_HOSTS"] = ",".join(f"localhost:{p}" for p in _free_ports(3))
    # R puts /usr/lib/<arch> first on LD_LIBRARY_PATH (etc/ldpaths); TcpCluster puts
    # this Python's LIBDIR before it for the workers, so no workaround is needed here.
    return env


def r_has_reticulate(rscript) -> bool:
    """Whether this Rscript can load the reticulate package (R installed without it cannot run the examples)."""
    if rscript is None:
        return False
    try:
        check = subprocess.run([rscript, "-e", 'quit(status = !requireNamespace("reticulate", quietly = TRUE))'],
                               capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return check.returncode == 0


def _skip_reason():
    if RSCRIPT is None:
        return f"Rscript is not installed ({INSTALL_R})"
    if not r_has_reticulate(RSCRIPT):
        return f"R has no reticulate package ({INSTALL_R})"
    return None


SKIP_REASON = _skip_reason()


def _tail(path, n=3000):
    return path.read_text(errors="replace")[-n:] if path.exists() else "(no output)"


def test_r_has_reticulate_asks_r(tmp_path):
    # A stand-in Rscript that answers the question as R would (exit 0: the package loads).
    for status, expected in ((0, True), (1, False)):
        fake = tmp_path / f"Rscript{status}"
        fake.write_text(f"#!/bin/sh\ncase \"$2\" in *requireNamespace*reticulate*) exit {status};; esac\nexit 3\n")
        fake.chmod(0o755)
        assert r_has_reticulate(str(fake)) is expected
    assert r_has_reticulate(None) is False
    assert r_has_reticulate(str(tmp_path / "no-such-Rscript")) is False


@pytest.mark.skipif(SKIP_REASON is not None, reason=SKIP_REASON or "")
def test_serve_r_and_client_r_print_the_first_three_mnist_predictions(tmp_path):
    env = _r_env()
    server_log = tmp_path / "serve.log"
    # cwd outside the repository: R's Python imports the installed pysmpc (with its compiled kernels).
    with open(server_log, "w") as log:
        server = subprocess.Popen([RSCRIPT, str(EXAMPLES / "serve.R")], cwd=tmp_path, env=env, stdout=log,
                                  stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while "serving" not in _tail(server_log) and server.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "serving" in _tail(server_log), f"serve.R did not start serving ({env['PYSMPC_HOSTS']}):\n{_tail(server_log)}"

        client = subprocess.run([RSCRIPT, str(EXAMPLES / "client.R")], cwd=tmp_path, env=env, capture_output=True,
                                text=True, timeout=180, stdin=subprocess.DEVNULL)
        lines = client.stdout.splitlines()
        assert client.returncode == 0, f"client.R exited {client.returncode}:\n{client.stdout}\n{client.stderr}"
        assert [line for line in lines if line.startswith("Actual:")] == EXPECTED, client.stdout + client.stderr

        assert server.wait(timeout=120) == 0, f"serve.R exited {server.returncode}:\n{_tail(server_log)}"
        assert "[1] 3" in _tail(server_log), _tail(server_log)  # model$serve() answered three queries
    finally:
        if server.poll() is None:  # never leave serve.R (and the workers it spawned) running
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
