"""kernels.warm: after warm_up(), no private prediction compiles a Numba kernel (in-process or over sockets)."""

import json
import subprocess
import sys
import tempfile

import numpy as np
import pytest

from pysmpc.kernels.warm import kernel_dispatchers, warm_up


# Run in a fresh interpreter: in this one, earlier tests have compiled kernels already, which
# would hide a kernel that warm_up misses.
_PROBE = """
import json, socket, sys, threading
import pysmpc as sy
from pysmpc.kernels.warm import kernel_dispatchers, warm_up
from pysmpc.models import load_samples, shipped_model_path
from pysmpc.runtime.tcp import TcpCluster
from pysmpc.runtime.worker import serve


def signatures():
    return {name: set(map(str, kernel.signatures)) for name, kernel in kernel_dispatchers().items()}


def predict_every_way(shared, x):  # batch 1 and 16, logits and argmax, material dealt online and made ahead
    for batch in (1, len(x)):
        for reveal in ("logits", "argmax"):
            shared.predict(x[:batch], reveal=reveal)
            shared.prepare(batch)
            shared.predict(x[:batch], reveal=reveal)


models = [sy.load_model(shipped_model_path(), relu_protocol=relu) for relu in ("bitplane", "fss")]
x = load_samples()[0]
warm_up()
before = signatures()
if sys.argv[1] == "in-process":
    with sy.LocalCluster() as cluster:
        for model in models:
            predict_every_way(model.share(cluster), x)
else:  # the three workers run as threads of this process, so their compilations show here
    listeners = [socket.create_server(("127.0.0.1", 0)) for _ in range(3)]
    hosts = ",".join(f"127.0.0.1:{s.getsockname()[1]}" for s in listeners)
    workers = [threading.Thread(target=serve, args=(i, s, hosts), daemon=True) for i, s in enumerate(listeners)]
    for worker in workers:
        worker.start()
    with TcpCluster(hosts=hosts, spawn=False) as cluster:
        for model in models:
            predict_every_way(model.share(cluster), x)
    for worker in workers:
        worker.join(timeout=30)
after = signatures()
print(json.dumps({name: sorted(after[name] - before[name]) for name in after if after[name] - before[name]}))
"""


def test_kernel_dispatchers_finds_every_kernel_module():
    modules = {name.split(".")[0] for name in kernel_dispatchers()}
    assert modules == {"bits", "carries", "dcf", "finish", "pool"}, modules


@pytest.mark.parametrize("transport", ["in-process", pytest.param("sockets", marks=pytest.mark.tcp)])
def test_a_private_prediction_compiles_nothing_after_warm_up(transport):
    # In-process parties receive read-only views, socket parties writable arrays: two sets of types.
    result = subprocess.run([sys.executable, "-c", _PROBE, transport], capture_output=True, text=True, timeout=300,
                            cwd=tempfile.gettempdir())
    assert result.returncode == 0, result.stderr[-3000:]
    compiled = json.loads(result.stdout.splitlines()[-1])
    assert compiled == {}, f"warm_up misses these argument types ({transport}): {compiled}"


def test_warm_up_reports_compiling_only_on_a_cache_miss(monkeypatch):
    # The kernels are loaded in this process by now: no new cache miss, so no report (the misses of
    # the first warm-up, on a fresh cache, stay in Numba's per-process counts and must not count).
    warm_up()
    reports = []
    assert warm_up(on_compile=lambda: reports.append(1)) >= 0
    assert reports == []
    # A kernel that is compiled while warm_up runs is reported, once.
    kernels = kernel_dispatchers()
    bits_kernel = kernels["bits._popcount_kernel"]
    real_stats = type(bits_kernel).stats

    looks = []

    class Missed:  # no miss when warm_up starts, one from then on: a compile during the warm-up
        @property
        def cache_misses(self):
            looks.append(1)
            return {"(Array(uint64, 1, 'C', False, aligned=True),)": 0 if len(looks) == 1 else 1}

    monkeypatch.setattr(type(bits_kernel), "stats", property(lambda self: Missed() if self is bits_kernel
                                                               else real_stats.fget(self)))
    warm_up(on_compile=lambda: reports.append(1))
    assert reports == [1]


def test_warm_up_raises_what_a_kernel_raised(monkeypatch):
    from pysmpc.kernels import warm

    def broken():
        raise np.linalg.LinAlgError("kernel failed")

    monkeypatch.setattr(warm, "_call_every_kernel", broken)
    with pytest.raises(np.linalg.LinAlgError, match="kernel failed"):
        warm_up(on_compile=lambda: None)
