"""The pysmpc command line, run as a user would (python -m pysmpc ...)."""

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

import pysmpc
from pysmpc.cli_args import build_parser
from pysmpc.models import shipped_model_path
from pysmpc.runtime import worker
from pysmpc.serve.benchmark import torch_available

# Subprocesses run outside the repository, so they import the installed
# package rather than the source tree (which has no compiled kernels).
OUTSIDE = tempfile.gettempdir()


def run_cli(*args, timeout=240, env=None, **kwargs):
    if "stdout" not in kwargs:
        kwargs["capture_output"] = True
    return subprocess.run([sys.executable, "-m", "pysmpc", *args], text=True, timeout=timeout, cwd=OUTSIDE,
                          env=None if env is None else {**os.environ, **env}, **kwargs)


COMPILING = "compiling kernels, first run only"


def test_demo_prints_the_users_lines_and_times_no_compilation(tmp_path):
    # A Numba cache of its own: the first run compiles the kernels, as on a fresh install.
    cache = {"NUMBA_CACHE_DIR": str(tmp_path / "numba")}
    first = run_cli("demo", "--images", "3", "--no-progress", env=cache, timeout=600)
    assert first.returncode == 0, first.stderr
    lines = first.stdout.splitlines()
    assert "Actual: 7, predicted: 7" in lines
    assert "Actual: 2, predicted: 2" in lines
    assert "Actual: 1, predicted: 1" in lines
    assert "3/3 correct" in lines[-1] and "kB per image" in lines[-1]
    assert COMPILING in first.stderr, "the first run must say why it pauses"
    # Compiling took seconds per image when it was timed; a prediction itself takes milliseconds.
    online_ms = float(re.search(r"([\d.]+) ms per image online", lines[-1]).group(1))
    assert online_ms < 500, lines[-1]

    # Second run: kernels from the cache, nothing to announce. With the progress bar on (stderr merged
    # into stdout as a terminal shows both), each result line starts a line of its own: tqdm clears the
    # bar before it, where a plain print appended it to the bar ("...image/s]Actual: 7").
    second = run_cli("demo", "--images", "3", env=cache, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert second.returncode == 0, second.stdout
    assert COMPILING not in second.stdout
    assert second.stdout.count("Actual: ") == 3
    assert re.findall(r"[^\n\r]Actual: ", second.stdout) == [], repr(second.stdout)


def test_demo_image_counts_it_cannot_show_are_clear_errors():
    zero = run_cli("demo", "--images", "0")
    assert zero.returncode == 2 and "argument --images: must be at least 1, got 0" in zero.stderr, zero.stderr
    twenty = run_cli("demo", "--images", "20", "--no-progress")
    assert twenty.returncode == 2
    assert "--images 20: 16 MNIST test images ship with pysmpc, so give 1 to 16" in twenty.stderr, twenty.stderr
    for result in (zero, twenty):
        assert "Traceback" not in result.stderr and result.stdout == ""


def test_version():
    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"pysmpc {pysmpc.__version__}"
    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert f'version = "{pysmpc.__version__}"' in pyproject


def _options(parser: argparse.ArgumentParser):
    return [a for a in parser._actions if a.option_strings and a.help != argparse.SUPPRESS
            and not isinstance(a, (argparse._HelpAction, argparse._VersionAction))]


def _subcommands(parser: argparse.ArgumentParser) -> dict:
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def test_every_option_has_help_and_shows_its_default():
    commands = _subcommands(build_parser())
    assert set(commands) == {"demo", "inspect", "serve", "query", "fl-demo", "fl-owner", "bench", "certs", "worker",
                             "train-demo"}
    commands["worker"] = worker.build_parser("pysmpc worker")  # `pysmpc worker` runs the worker's own parser
    for name, parser in commands.items():
        text = parser.format_help()
        for action in _options(parser):
            assert action.help and len(action.help) > 10, f"pysmpc {name} {action.option_strings[0]} has no help"
            default = action.default
            if default is not None and not isinstance(default, bool):
                shown = ",".join(map(str, default)) if isinstance(default, list) else str(default)
                assert f"default: {shown}" in re.sub(r"\s+", " ", text).replace(", ", ","), \
                    f"pysmpc {name} --help does not show the default of {action.option_strings[0]}"
        for action in parser._actions:  # positionals too
            if not action.option_strings and not isinstance(action, argparse._SubParsersAction):
                assert action.help, f"pysmpc {name} {action.dest} has no help"


def test_help_texts_as_a_user_runs_them():
    inspect = run_cli("inspect", "--help")
    assert inspect.returncode == 0
    assert re.search(r"--batch N\s+inputs per private prediction", inspect.stdout), inspect.stdout
    query = run_cli("query", "--help").stdout
    for option in ("--reveal", "--classes", "--show-logits", "--timeout"):
        assert re.search(rf"{option}[^\n]*\n?\s+\w", query), option
    assert "(default: 60.0)" in query and "(default: logits)" in query
    work = run_cli("worker", "--help")
    assert work.returncode == 0 and work.stdout.startswith("usage: pysmpc worker "), work.stdout
    assert "python -m pysmpc.runtime.worker" not in work.stdout
    assert "--party {0,1,2}" in work.stdout and "the dealer" in work.stdout
    bad = run_cli("worker", "--party", "7")
    assert bad.returncode == 2 and bad.stderr.startswith("usage: pysmpc worker"), bad.stderr


@pytest.mark.parametrize("args, message", [
    (("inspect", "MODEL", "--batch", "0"), "argument --batch: must be at least 1, got 0"),
    (("bench", "--batches", "1,x"), "argument --batches: must be a whole number, got 'x'"),
    (("query", "--sample", "99"), "--sample 99: the shipped MNIST test images are numbered 0 to 15"),
    (("query", "--sample", "0", "--timeout", "inf"), "argument --timeout: must be a finite number, got inf"),
    (("serve", "MODEL", "--requests", "0"), "argument --requests: must be at least 1, got 0"),
    (("fl-demo", "--dropout", "2"), "argument --dropout: must be at least 0 and at most 1, got 2"),
])
def test_bad_values_are_one_line_errors(args, message):
    result = run_cli(*[str(shipped_model_path()) if a == "MODEL" else a for a in args])
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_piped_into_head_there_is_no_broken_pipe():
    # head exits after the first line while the demo goes on printing: the next print meets a
    # closed pipe. bash's PIPESTATUS gives pysmpc's own exit status.
    command = (f"'{sys.executable}' -m pysmpc demo --images 3 --no-progress | head -1; "
               "exit ${PIPESTATUS[0]}")
    result = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=240, cwd=OUTSIDE)
    assert result.stdout.startswith("Private predictions of 3 MNIST test images") and result.stdout.count("\n") == 1
    assert result.stderr == "", result.stderr  # was: "pysmpc demo: error: [Errno 32] Broken pipe"
    assert result.returncode == 141, result.returncode


def test_hints_name_flags_not_python_keywords():
    cleartext = run_cli("query", "--sample", "0", "--hosts", "10.0.0.1:4000,10.0.0.2:4000,10.0.0.3:4000")
    assert cleartext.returncode == 2
    assert "--tls-dir DIR" in cleartext.stderr and "--allow-cleartext" in cleartext.stderr, cleartext.stderr
    assert "tls_dir=" not in cleartext.stderr and "allow_cleartext=" not in cleartext.stderr


def test_the_flag_hints_still_match_the_library_messages():
    from pysmpc.parties.frames import FrameTooLarge, write_frame
    from pysmpc.runtime.cluster import ClusterError
    from pysmpc.runtime.tcp import TcpCluster

    class Sink:
        def send_views(self, views, idle, on_block):
            raise AssertionError("nothing may be sent over the limit")

    with pytest.raises(FrameTooLarge) as frame:
        write_frame(Sink(), "x", 0, "s", [bytes(1000)], idle=lambda: None, max_frame=100)
    busy = socket.create_server(("localhost", 0))
    try:
        port = busy.getsockname()[1]
        with pytest.raises(ClusterError) as bind:
            TcpCluster(hosts=[f"localhost:{port}", "localhost:0", "localhost:0"]).start()
    finally:
        busy.close()
    for exc, flag in ((frame.value, "(--max-frame-bytes)"), (bind.value, "pass other --hosts,")):
        shown = subprocess.run([sys.executable, "-c", "import sys; from pysmpc.cli import _with_flags; "
                                "print(_with_flags(sys.argv[1]))", str(exc)], capture_output=True, text=True,
                               cwd=OUTSIDE).stdout
        assert flag in shown, (str(exc), shown)


def test_a_missing_extra_is_named(tmp_path):
    # A matplotlib that cannot be imported, first on the path: as if pysmpc[plot] were not installed.
    fake = tmp_path / "no_plot" / "matplotlib"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('No module named matplotlib')\n")
    path = os.pathsep.join([str(fake.parent), os.environ.get("PYTHONPATH", "")])
    for args in (("bench", "--plot", str(tmp_path / "b.png")),
                 ("inspect", str(shipped_model_path()), "--plot", str(tmp_path / "i.png"))):
        start = time.monotonic()
        result = run_cli(*args, env={"PYTHONPATH": path})
        assert result.returncode == 2, result.stderr
        assert "pip install 'pysmpc[plot]'" in result.stderr and "Traceback" not in result.stderr, result.stderr
        assert time.monotonic() - start < 60  # said before measuring anything
        assert not (tmp_path / "b.png").exists() and not (tmp_path / "i.png").exists()


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
@pytest.mark.parametrize("relu", ["bitplane", "fss"])
def test_serve_and_query_over_tcp(tmp_path, relu):
    hosts = ",".join(f"localhost:{p}" for p in _free_ports(3))
    server = subprocess.Popen([sys.executable, "-m", "pysmpc", "serve", str(shipped_model_path()),
                               "--requests", "2", "--hosts", hosts, "--relu", relu], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, cwd=OUTSIDE)
    try:
        deadline = time.monotonic() + 60
        query = None
        while time.monotonic() < deadline:
            # --wait: the workers may be up before the model owner has shared the model.
            query = run_cli("query", "--sample", "0", "--sample", "1", "--hosts", hosts, "--timeout", "60",
                            "--wait", "60")
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
    assert ("one-round relu (fss)" in out) == (relu == "fss"), out


def test_bench_prints_a_table_and_writes_json(tmp_path):
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


def test_bench_runs_another_model_file(tmp_path):
    """--model with a branching NCHW ONNX model: its own input shape (random inputs), the same keys, and PyTorch
    rows (graph.to_torch builds graphs with branches) where torch is installed."""
    model = Path(__file__).resolve().parent / "fixtures" / "dag_torch.onnx"
    out = tmp_path / "bench.json"
    result = run_cli("bench", "--model", str(model), "--batches", "1", "--repeats", "1", "--no-tcp", "--no-progress",
                     "--json", str(out))
    assert result.returncode == 0, result.stderr
    assert "uniform random inputs of shape" in result.stdout
    rows = json.loads(out.read_text())
    secure = [r for r in rows if r["system"] == "pysmpc in-process"]
    assert len(secure) == 1 and secure[0]["rounds"] > 0 and secure[0]["online_bytes_per_image"] > 0
    shipped = {"system", "batch", "latency_ms", "images_per_s", "offline_ms", "peak_rss_mb", "online_bytes_per_image",
               "dealer_bytes_per_image", "rounds"}
    assert shipped <= set(secure[0])
    if torch_available():
        assert [r["batch"] for r in rows if r["system"] == "pytorch"] == [1], rows
    else:
        assert "no PyTorch baseline" in result.stdout


def test_bench_reports_pytorch_beside_numpy(tmp_path):
    torch = pytest.importorskip("torch")
    out = tmp_path / "bench.json"
    result = run_cli("bench", "--batches", "1,4", "--repeats", "2", "--no-tcp", "--no-progress", "--json", str(out))
    assert result.returncode == 0, result.stderr
    rows = json.loads(out.read_text())
    pytorch = [r for r in rows if r["system"] == "pytorch"]
    assert [r["batch"] for r in pytorch] == [1, 4]
    assert all(r["dtype"] == "float32" and r["threads"] == 1 and r["torch_version"] == torch.__version__
               for r in pytorch)
    assert all(r["latency_ms"] > 0 and r["images_per_s"] > 0 for r in pytorch)
    for baseline in ("plaintext numpy (float64)", "pytorch"):
        assert re.search(rf"pysmpc in-process\s+batch\s+4:\s+[\d.]+x {re.escape(baseline)}", result.stdout), \
            result.stdout


def _png_size(path: Path) -> tuple:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_inspect_plot_draws_the_measured_layers(tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "layers.png"
    result = run_cli("inspect", str(shipped_model_path()), "--plot", str(out), "--repeats", "2")
    assert result.returncode == 0, result.stderr
    width, height = _png_size(out)
    assert width > 600 and height > 400
    # The measured run is on material made ahead: conv1 opens nothing (16 rounds, not the table's 17).
    assert re.search(r"online: 16 rounds, [\d,]+ bytes sent by each computing party, [\d.]+ ms", result.stdout), \
        result.stdout


def test_bench_plot_draws_latency_and_throughput(tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "bench.png"
    result = run_cli("bench", "--batches", "1,2", "--repeats", "1", "--no-tcp", "--no-progress", "--plot", str(out))
    assert result.returncode == 0, result.stderr
    assert f"wrote {out}" in result.stdout
    width, height = _png_size(out)
    assert width > 800 and height > 300


def test_bench_without_torch_says_so(tmp_path):
    fake = tmp_path / "no_torch" / "torch"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('No module named torch')\n")
    out = tmp_path / "bench.json"
    result = run_cli("bench", "--batches", "1", "--repeats", "1", "--no-tcp", "--no-progress", "--json", str(out),
                     env={"PYTHONPATH": os.pathsep.join([str(fake.parent), os.environ.get("PYTHONPATH", "")])})
    assert result.returncode == 0, result.stderr
    assert "no PyTorch baseline: torch is not installed" in result.stdout
    assert {r["system"] for r in json.loads(out.read_text())} == {"plaintext numpy (float64)", "pysmpc in-process"}


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


def test_train_demo_without_data_is_a_clear_error(tmp_path):
    done = run_cli("train-demo", "--data", str(tmp_path))
    assert done.returncode == 2 and "MNIST IDX files not found" in done.stderr, done.stderr


@pytest.mark.slow
@pytest.mark.parametrize("transport", [[], ["--tcp"]], ids=["in-process", "tcp"])
def test_train_demo_prints_accuracy_and_images_per_second_last(transport):
    data = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
    if not data.is_dir():
        pytest.skip("no MNIST IDX files in ../shared/data/mnist")
    done = run_cli("train-demo", "--data", str(data), "--epochs", "1", "--train-subset", "512", "--test-subset",
                   "200", "--batch-size", "64", "--max-steps", "3", "--no-progress", *transport)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert re.fullmatch(r"accuracy: 0\.\d{4}", lines[-2]), lines[-2]
    assert re.fullmatch(r"images/s: \d+\.\d", lines[-1]), lines[-1]
    assert "epoch 1: test accuracy" in done.stdout and "rounds" in done.stdout
