"""The Python examples (examples/*.py, examples/pytorch/) run as a user runs them: as scripts, in their own processes.

Each serving pair runs the owner's script and then the client's, on free
loopback ports (PYSMPC_HOSTS), from a scratch directory outside the
repository. (examples/R has its own test: test_r_scripts.py.)
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pysmpc.models import load_samples

pytestmark = pytest.mark.tcp

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
MNIST = Path(os.environ.get("PYSMPC_MNIST_DIR", Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"))
FIRST_THREE = ["Actual: 7, predicted: 7", "Actual: 2, predicted: 2", "Actual: 1, predicted: 1"]


def needs_mnist():
    if not (MNIST / "train-images-idx3-ubyte.gz").exists():
        pytest.skip(f"MNIST IDX files not found in {MNIST} (set PYSMPC_MNIST_DIR)")


def _free_hosts() -> str:
    sockets = [socket.create_server(("localhost", 0)) for _ in range(3)]
    hosts = ",".join(f"localhost:{s.getsockname()[1]}" for s in sockets)
    for s in sockets:
        s.close()
    return hosts


def _tail(path: Path, n: int = 3000) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else "(no output)"


def run_served(serve: Path, client: Path, cwd: Path, env: dict | None = None) -> tuple[list[str], str]:
    """Start `serve`, wait for its 'serving' line, run `client`; return the client's lines and the server's log."""
    env = {**os.environ, **(env or {}), "PYSMPC_HOSTS": _free_hosts()}
    log_path = cwd / f"{serve.stem}.log"
    with open(log_path, "w") as log:
        server = subprocess.Popen([sys.executable, str(serve)], cwd=cwd, env=env, stdout=log,
                                  stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while "serving" not in _tail(log_path) and server.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "serving" in _tail(log_path), f"{serve} did not start serving ({env['PYSMPC_HOSTS']}):\n{_tail(log_path)}"
        done = subprocess.run([sys.executable, str(client)], cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=300, stdin=subprocess.DEVNULL)
        assert done.returncode == 0, f"{client} exited {done.returncode}:\n{done.stdout}\n{done.stderr[-3000:]}"
        assert server.wait(timeout=120) == 0, f"{serve} exited {server.returncode}:\n{_tail(log_path)}"
        return done.stdout.splitlines(), _tail(log_path, 20000)
    finally:
        if server.poll() is None:  # never leave the owner's process (and the workers it spawned) running
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def test_serve_and_client_predict_the_first_three_mnist_images(tmp_path):
    lines, log = run_served(EXAMPLES / "serve.py", EXAMPLES / "client.py", tmp_path)
    assert [line for line in lines if line.startswith("Actual:")] == FIRST_THREE, lines
    assert "serving" in log and "mnist_cnn.h5" in log, log


def _load_train_module():
    spec = importlib.util.spec_from_file_location("pytorch_train_example", EXAMPLES / "pytorch" / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pytorch_example_trains_serves_and_answers_nchw_queries(tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    needs_mnist()
    env = {**os.environ, "PYSMPC_MNIST_DIR": str(MNIST)}
    trained = subprocess.run([sys.executable, str(EXAMPLES / "pytorch" / "train.py"), "--train-images", "6000"],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert trained.returncode == 0, trained.stdout + trained.stderr[-3000:]
    accuracy = float(trained.stdout.split("test accuracy ")[1].split()[0])
    assert accuracy >= 0.8, trained.stdout

    lines, log = run_served(EXAMPLES / "pytorch" / "serve.py", EXAMPLES / "pytorch" / "client.py", tmp_path)
    assert "callers pass NCHW (1, 28, 28)" in log, log
    float_gap = float(log.split("largest logit difference to PyTorch: ")[1].split()[0])
    assert float_gap < 1e-4, log

    # The private predictions are the PyTorch model's own, on the images the client sent.
    net = _load_train_module().MnistNet()
    net.load_state_dict(torch.load(tmp_path / "mnist_torch.pt"))
    images, labels = load_samples()
    with torch.no_grad():
        want = net.eval()(torch.tensor(images[:3].transpose(0, 3, 1, 2), dtype=torch.float32)).argmax(1).numpy()
    expected = [f"Actual: {label}, predicted: {p}" for label, p in zip(labels[:3], want)]
    assert [line for line in lines if line.startswith("Actual:")] == expected, (lines, log[-2000:])
    assert np.mean(want == labels[:3]) >= 2 / 3, want


def test_federated_example_learns(tmp_path):
    needs_mnist()
    done = subprocess.run([sys.executable, str(EXAMPLES / "federated.py"), "--data", str(MNIST), "--rounds", "1",
                           "--train-subset", "3000", "--test-subset", "1000"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("accuracy: ") and float(last.split()[1]) > 0.3, done.stdout  # chance is 0.1


@pytest.mark.slow
def test_create_model_trains_a_model_pysmpc_reads(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("keras")
    needs_mnist()
    env = {**os.environ, "KERAS_BACKEND": "torch"}
    done = subprocess.run([sys.executable, str(EXAMPLES / "create_model.py"), "--data", str(MNIST), "--epochs", "1",
                           "--out", str(tmp_path / "model.hdf5")], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=1200)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    float_accuracy = float(done.stdout.split("pysmpc float accuracy:")[1].split()[0])
    assert float_accuracy >= 0.9, done.stdout
