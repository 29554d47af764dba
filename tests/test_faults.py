"""Faults over TCP: killed, stalled and slow workers, dropped connections, bad clients, restarts.

Every test bounds its own run time with explicit deadline checks (no
pytest-timeout here) and uses a short peer timeout, so each fault is
reported within seconds.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import socket
import struct
import threading
import time

import numpy as np
import pytest

import pysmpc as sy
from pysmpc.models import load_samples
from pysmpc.parties.channel import PeerDisconnected
from pysmpc.parties.faults import parse_fault
from pysmpc.parties.frames import write_frame
from pysmpc.parties.party import CLIENT, DEALER, P0, P1
from pysmpc.parties.socket import SocketChannel, connect_peer
from pysmpc.runtime.queries import Query, QueryInbox, check_request

pytestmark = pytest.mark.tcp

MODEL_PATH = os.path.join(os.path.dirname(sy.__file__), "data", "mnist_cnn.h5")
TIMEOUT = 2.0  # the peer timeout of every cluster here: faults show within seconds


@pytest.fixture(scope="module")
def model():
    return sy.load_model(MODEL_PATH)


@pytest.fixture(scope="module")
def images():
    return load_samples()[0]


def _cluster(**kwargs) -> sy.TcpCluster:
    return sy.TcpCluster(ephemeral_ports=True, timeout=TIMEOUT, **kwargs).start()


def _client_of(cluster, timeout: float = 20.0) -> sy.Client:
    """A client of the served model with its own cluster handle (as in another process)."""
    handle = sy.Cluster(*(sy.Worker(f"localhost:{p}", auto_managed=False) for p in cluster.ports))
    return sy.Client(timeout=timeout).connect_to_model((1, 28, 28, 1), (1, 10), handle)


class _Background:
    """Run fn() in a thread; `result()` re-raises its error, and fails if it takes longer than `limit`."""

    def __init__(self, fn, limit: float = 60.0):
        self.value, self.error = None, None
        self.limit = limit
        self.thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self.thread.start()

    def _run(self, fn):
        try:
            self.value = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            self.error = exc

    def result(self):
        self.thread.join(self.limit)
        assert not self.thread.is_alive(), f"still running after {self.limit} s: a hang"
        if self.error is not None:
            raise self.error
        return self.value


def _wait_until(condition, limit: float, what: str) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {limit} s"
        time.sleep(0.02)


# -- a party that is slow, stalls, drops a connection or dies ----------------------------------
def test_delayed_frames_below_the_timeout_are_fine_and_above_it_a_clear_error(model, images):
    # P1 holds each of its convolution frames 0.4 s (below the 2 s timeout) and
    # each 'mul' frame 4 s (above it). It also holds its output share 1 s, so
    # that a heartbeat reaches the caller first (they share a connection).
    faults = ("--fault", "delay:conv2d:0.4", "--fault", "delay:mul:4", "--fault", "delay:output:1")
    with _cluster(worker_args={P1: faults}) as cluster:
        shared = model.share(cluster)
        start = time.monotonic()
        labels = shared.predict(images[:4], reveal="argmax")
        assert time.monotonic() - start >= 3 * 0.4  # three convolutions, each held
        np.testing.assert_array_equal(labels, model.predict(images[:4]).argmax(axis=1))

        x = cluster.share(np.ones(3))
        start = time.monotonic()
        with pytest.raises(sy.ClusterError) as info:
            (x * x).reveal()
        elapsed = time.monotonic() - start
        assert elapsed < TIMEOUT + 3, f"the delay was reported after {elapsed:.1f} s"
        message = str(info.value)
        assert "operation 'mul' failed" in message, message
        assert "no message from party 1 within 2 s (waiting for 'mul')" in message, message


def test_stalled_worker_times_out_with_a_clear_error(model, images):
    cluster = _cluster(worker_args={P1: ("--fault", "delay:conv2d:0.5")})  # inference takes >= 1.5 s
    pid = cluster.processes[P1].pid
    try:
        shared = model.share(cluster)
        x = cluster.share(images[:2])
        stopped = []

        def stall_p1_mid_inference():
            time.sleep(0.6)
            os.kill(pid, signal.SIGSTOP)
            stopped.append(time.monotonic())

        threading.Thread(target=stall_p1_mid_inference, daemon=True).start()
        with pytest.raises(sy.ClusterError) as info:
            cluster.call("infer", cluster.new_id(), shared.key, x.tid, shared.frac_bits)
        assert stopped, "the inference ended before P1 was stopped"
        elapsed = time.monotonic() - stopped[0]
        assert elapsed < TIMEOUT + 3, f"the stall was reported after {elapsed:.1f} s"
        message = str(info.value)
        assert "operation 'infer' failed" in message, message
        assert "P1 stopped responding while running 'infer'" in message, message
        assert "no message from party 1" in message, message  # P0 timed out on P1 too
        assert P1 in info.value.lost
    finally:
        os.kill(pid, signal.SIGCONT)
        start = time.monotonic()
        cluster.stop()
        assert time.monotonic() - start < 10
    assert cluster.processes == {}


def test_dropped_connection_mid_protocol_names_the_party_and_step(model, images):
    # P1 closes its connection to P0 when it is about to send its first ReLU frame.
    with _cluster(worker_args={P1: ("--fault", "drop:relu")}) as cluster:
        shared = model.share(cluster)
        start = time.monotonic()
        with pytest.raises(sy.ClusterError) as info:
            shared.predict(images[:2])
        assert time.monotonic() - start < TIMEOUT + 3
        message = str(info.value)
        assert "operation 'predict' failed" in message, message
        # Named by P0 (party 1 disconnected while it waited) or by P1 itself (cannot send to P0).
        assert re.search(r"party 1 disconnected while we waited for 'relu:|party 1: cannot send 'relu:", message), message


def test_worker_killed_mid_inference_while_serving(model, images):
    with _cluster(worker_args={P1: ("--fault", "delay:conv2d:0.5")}) as cluster:
        model.share(cluster)
        client = _client_of(cluster)
        query = _Background(lambda: client.query_model(images[0]), limit=30)
        killed = []

        def kill_p1_once_the_query_runs():
            _wait_until(lambda: cluster.progress.get(P0, {}).get("in_flight"), 20, "the query did not start")
            time.sleep(0.3)  # into the first convolution, which P1 holds 0.5 s
            cluster.processes[P1].kill()
            killed.append(time.monotonic())

        killer = _Background(kill_p1_once_the_query_runs, limit=30)
        with pytest.raises(sy.ClusterError) as info:
            model.serve(num_requests=1, max_restarts=0)
        killer.result()
        elapsed = time.monotonic() - killed[0]
        assert elapsed < TIMEOUT + 3, f"the dead worker was reported after {elapsed:.1f} s"
        message = str(info.value)
        assert "operation 'serve' failed" in message and "P1 disconnected while running 'serve'" in message, message
        assert "exited with code -9" in message, message
        assert info.value.lost == (P1,)
        assert cluster.last_serve["restarts"] == 0 and cluster.last_serve["served"] == 0  # max_restarts=0: no restart
        assert cluster.last_serve["stopped"].startswith("error: operation 'serve' failed")
        with pytest.raises(sy.ClusterError, match="stopped working"):
            cluster.share(np.ones(2))
        # The client in flight hears why from P0 at once, instead of waiting for its timeout.
        with pytest.raises(sy.ClusterError, match=r"failed while answering this query.*party 1 disconnected"):
            query.result()


# -- the serving loop against bad clients ----------------------------------------------------------
def _query_hello(cluster, reveal="logits", shape=(1, 28, 28, 1), parties=(P0, P1, DEALER), request=None,
                 attach=True):
    """Connect to the workers as a query client, by hand; returns (channel, streams, query id).

    attach=False leaves the streams bare (no reader threads), for writing raw frames.
    """
    query_id = secrets.token_hex(16)
    request = request or {"shape": list(shape), "reveal": reveal, "frac_bits": cluster.frac_bits}
    channel = SocketChannel(CLIENT, 10.0, session=query_id)
    streams = {}
    for i in parties:
        streams[i] = connect_peer(cluster.hosts[i], CLIENT, i, session=query_id, timeout=10, extra={"query": request})
        if attach:
            channel.attach(i, streams[i])
    return channel, streams, query_id


def test_serving_survives_bad_clients_and_answers_the_next_one(model, images):
    with _cluster() as cluster:
        model.share(cluster)
        serving = _Background(lambda: model.serve(num_requests=1, query_timeout=1.0), limit=60)  # the good one
        share_0 = np.zeros((1, 28, 28, 1), np.uint64)

        # Hangs up (reset) after sending its input shares, before its answer.
        _, streams, query_id = _query_hello(cluster, attach=False)
        for i in (P0, P1):
            write_frame(streams[i], "input", 1, query_id, share_0, lambda: None)
        for stream in streams.values():  # a reset, not a graceful close: the answer cannot be delivered
            stream.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            stream.sock.close()

        # Sends garbage after its hello instead of an input frame.
        garbage, streams, _ = _query_hello(cluster)
        for i in (P0, P1):
            streams[i].sock.sendall(b"\x00garbage, not a frame" * 10)

        # Says hello and then nothing: the workers give up after query_timeout.
        silent, _, _ = _query_hello(cluster)

        # Reaches P0 only: P1 and P2 wait query_timeout for it, then all refuse it.
        partial, _, _ = _query_hello(cluster, parties=(P0,))
        partial.send(P0, share_0, tag="input")

        # A malformed request is refused at the hello and never reaches the serving loop.
        with pytest.raises(Exception, match="query shape must be a list"):
            _query_hello(cluster, request={"shape": "28x28", "reveal": "logits", "frac_bits": 16})

        start = time.monotonic()
        tag, payload = silent.recv_control(P0, timeout=10)
        assert tag == "query:error" and b"no input share from the client" in bytes(payload), (tag, payload)
        tag, payload = partial.recv_control(P0, timeout=10)
        assert tag == "query:error" and b"P1, P2: this query never reached that worker" in bytes(payload)
        assert time.monotonic() - start < 5
        for channel in (silent, garbage, partial):
            channel.close()

        labels = _client_of(cluster).query_model(images[3], reveal="argmax")
        assert labels[0] == model.predict(images[3:4]).argmax()
        assert serving.result() == 1
        assert cluster.last_serve == {"served": 1, "failed": 4, "restarts": 0, "stopped": "done"}

        # And the cluster goes on serving.
        serving = _Background(lambda: model.serve(num_requests=1), limit=30)
        logits = _client_of(cluster).query_model(images[4])
        assert serving.result() == 1
        np.testing.assert_allclose(logits[0], model.predict(images[4:5])[0], atol=2e-2)


def test_request_check():
    assert check_request({"shape": [1, 28, 28, 1], "reveal": "argmax", "frac_bits": 16}) is None
    for bad in ({}, [], {"shape": [0, 2], "reveal": "logits", "frac_bits": 16},
                {"shape": [1, True], "reveal": "logits", "frac_bits": 16},
                {"shape": [1] * 9, "reveal": "logits", "frac_bits": 16},
                {"shape": [1], "reveal": "all", "frac_bits": 16},
                {"shape": [1], "reveal": "logits", "frac_bits": "16"}):
        assert check_request(bad) is not None, bad


class _FakeQueryChannel:
    def __init__(self):
        self.sent, self.closed = [], False

    def send_control(self, to, tag, data):
        self.sent.append((to, tag, bytes(data)))

    def close(self):
        self.closed = True


def _query(query_id):
    return Query(query_id, {"shape": [1, 2], "reveal": "logits", "frac_bits": 16}, _FakeQueryChannel())


def test_inbox_expires_queries_nobody_takes_and_refuses_after_close():
    inbox = QueryInbox(capacity=2, max_age=0.2)
    orphans = [_query("a"), _query("b")]
    for q in orphans:
        assert inbox.add(q) is None
    assert "full" in inbox.add(_query("c"))
    time.sleep(0.3)
    fresh = _query("d")
    assert inbox.add(fresh) is None  # the orphans expired: room again
    for q in orphans:
        assert q.channel.closed and q.channel.sent[0][1] == "query:error"
        assert b"without being served" in q.channel.sent[0][2]
    assert inbox.take("a", timeout=0.01) is None
    inbox.close("the cluster is restarting")
    assert fresh.channel.closed and b"restarting" in fresh.channel.sent[0][2]
    assert inbox.add(_query("e")) == "the cluster is restarting"
    assert inbox.next_batch(4, 64, timeout=0.01) == []


def test_fault_specs():
    assert parse_fault("delay:relu:0.5") == ("delay", "relu", 0.5)
    assert parse_fault("delay:conv2d:conv1:1") == ("delay", "conv2d:conv1", 1.0)
    assert parse_fault("drop:mul") == ("drop", "mul", 0.0)
    for bad in ("delay:relu", "delay:relu:-1", "delay:relu:x", "crash:relu"):
        with pytest.raises(ValueError, match="fault"):
            parse_fault(bad)


# -- restarts ------------------------------------------------------------------------------------
def test_auto_managed_workers_restart_and_serve_the_next_request(model, images):
    # P1 holds its convolution frames 0.3 s, so that a query is in flight long enough to be cut.
    cluster = sy.Cluster(*(sy.Worker("127.0.0.1:0") for _ in range(3)), timeout=TIMEOUT, ephemeral_ports=True,
                         worker_args={P1: ("--fault", "delay:conv2d:0.3")})
    with cluster:
        model.share(cluster)
        ports = list(cluster.ports)
        reference = model.predict(images[:4]).argmax(axis=1)
        serving = _Background(lambda: model.serve(num_requests=3, max_restarts=2), limit=90)

        def ask(k):
            return _client_of(cluster).query_model(images[k], reveal="argmax")[0]

        assert ask(0) == reference[0]

        # Between requests: P1 dies; the cluster restarts all three and re-shares the model.
        session = cluster.session
        cluster.processes[P1].kill()
        _wait_until(lambda: cluster.restarts == 1, 30, "no restart after P1 died")
        assert cluster.session != session and cluster.ports == ports  # same addresses for the clients
        assert ask(1) == reference[1]

        # During a request: P0 dies once its query is in flight; that client hears of it.
        in_flight = _Background(lambda: ask(2), limit=30)
        _wait_until(lambda: cluster.progress.get(P0) == {"served": 1, "failed": 0, "in_flight": 1}, 20,
                    "the query did not start")
        cluster.processes[P0].kill()
        with pytest.raises(sy.ClusterError):
            in_flight.result()
        _wait_until(lambda: cluster.restarts == 2, 30, "no restart after P0 died")
        assert ask(3) == reference[3]

        assert serving.result() == 3
        assert cluster.last_serve == {"served": 3, "failed": 1, "restarts": 2, "stopped": "done"}
        # The model still works for the owner too, on the new workers.
        np.testing.assert_array_equal(model.shared.predict(images[:2], reveal="argmax"), reference[:2])


def test_restart_needs_spawned_workers():
    cluster = sy.TcpCluster(hosts=("localhost:1", "localhost:2", "localhost:3"), spawn=False)
    with pytest.raises(sy.ClusterError, match="auto_managed"):
        cluster.restart()


def test_workers_end_when_the_caller_vanishes_mid_operation(model):
    cluster = _cluster()
    try:
        model.share(cluster)
        processes = dict(cluster.processes)
        serving = _Background(lambda: model.serve(num_requests=1, max_restarts=0), limit=30)
        time.sleep(0.5)
        cluster.client_channel.close()  # the owner's connections drop while the workers serve
        with pytest.raises((sy.ClusterError, PeerDisconnected)):
            serving.result()
        # Each worker notices within a few heartbeat periods and exits.
        for proc in processes.values():
            assert proc.wait(timeout=4 * TIMEOUT + 5) is not None
    finally:
        cluster.stop()


def test_a_query_that_arrives_before_the_session_waits_for_it(model, images, tmp_path):
    import subprocess
    import sys

    ports = []
    for _ in range(3):
        with socket.create_server(("127.0.0.1", 0)) as s:
            ports.append(s.getsockname()[1])
    hosts = [f"127.0.0.1:{p}" for p in ports]
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(sy.__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])))
    workers = [subprocess.Popen([sys.executable, "-m", "pysmpc.runtime.worker", "--party", str(i),
                                 "--hosts", ",".join(hosts), "--timeout", str(TIMEOUT)],
                                stderr=subprocess.DEVNULL, cwd=tmp_path, env=env) for i in (P0, P1, DEALER)]
    try:
        handle = sy.Cluster(*(sy.Worker(h, auto_managed=False) for h in hosts))
        # The workers may not listen yet: wait for them (they describe no model yet, so nothing is checked).
        client = sy.Client(timeout=60).connect_to_model((1, 28, 28, 1), (1, 10), handle, wait=30)
        early = _Background(lambda: client.query_model(images[6], reveal="argmax"), limit=60)
        time.sleep(3.0)  # the workers listen by then, and the query reached them before the owner
        with sy.Cluster(*(sy.Worker(h, auto_managed=False) for h in hosts), timeout=TIMEOUT) as cluster:
            model.share(cluster)
            assert model.serve(num_requests=1) == 1
            assert early.result()[0] == model.predict(images[6:7]).argmax()
            model.stop_sharing()
    finally:
        for w in workers:
            w.kill()
            w.wait()
