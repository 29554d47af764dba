"""Attacks on serving by a query client: one client must not change another's answer or stop the server.

Each worker holds its own copy of a query's request: the `query` field of
the client's hello to it. The attacker here is a raw client that builds
those hellos itself (connect_peer with a different `extra={"query": ...}`
per worker) and sends P0 and P1 input shares of its choosing, or sends its
share a byte at a time. Beside it an honest client (Client.query_model)
queries the same server; its answer must match the plaintext fixed-point
model, the attacker must get an error saying why, and a later query must
still be answered.
"""

from __future__ import annotations

import secrets
import threading
import time

import numpy as np
import pytest
from test_secure_graph import seed_cnn

import pysmpc as sy
from pysmpc.parties.channel import ChannelError
from pysmpc.parties.frames import write_frame
from pysmpc.parties.party import CLIENT, DEALER, P0, P1
from pysmpc.parties.socket import SocketChannel, connect_peer
from pysmpc.runtime import tcp as tcp_module

pytestmark = pytest.mark.tcp

PARTIES = (P0, P1, DEALER)
F = 16
IMAGE = (28, 28, 1)


@pytest.fixture(scope="module")
def served():
    model = sy.Model(seed_cnn(np.random.default_rng(0)))
    cluster = sy.TcpCluster(ephemeral_ports=True)
    cluster.start()
    model.share(cluster)
    yield model, cluster
    model.stop_sharing()
    cluster.stop()


def request(rows: int, reveal: str = "logits") -> dict:
    return {"shape": [rows, *IMAGE], "reveal": reveal, "frac_bits": F}


def shares(rows: int) -> np.ndarray:
    return np.random.default_rng(rows).integers(0, 2**63, (rows, *IMAGE), dtype=np.uint64)


class RawQuery:
    """A query whose client tells each worker its own request (`requests[party]`) and connects in party order."""

    def __init__(self, cluster, requests: dict, timeout: float = 30.0):
        self.id = secrets.token_hex(16)
        self.channel = SocketChannel(CLIENT, timeout, session=self.id)
        self.streams = {}
        for i in PARTIES:
            stream = connect_peer(cluster.hosts[i], CLIENT, i, session=self.id, timeout=timeout,
                                  extra={"query": requests[i]})
            self.streams[i] = stream
            self.channel.attach(i, stream)

    def send(self, inputs: dict) -> "RawQuery":
        for i, value in inputs.items():
            self.channel.send(i, value, tag="input")
        return self

    def answers(self, timeout: float = 10.0) -> dict:
        """{party: 'tag: payload'} of what P0 and P1 answered, or the error receiving raised; then hang up."""
        out = {}
        for i in (P0, P1):
            try:
                tag, payload = self.channel.recv_control(i, timeout=timeout)
                out[i] = f"{tag}: {bytes(payload).decode(errors='replace') if isinstance(payload, bytes) else payload}"
            except ChannelError as exc:
                out[i] = f"error: {exc}"
        self.channel.close()
        return out


class HonestClient:
    """Client.query_model in a thread; `queued` is set once it has reached all three workers."""

    def __init__(self, cluster, x: np.ndarray, monkeypatch, reveal: str = "logits"):
        self.x, self.result, self.error = x, None, None
        self.queued = threading.Event()

        def connect(address, me, peer, **kwargs):
            stream = connect_peer(address, me, peer, **kwargs)
            if peer == DEALER:
                self.queued.set()
            return stream

        monkeypatch.setattr(tcp_module, "connect_peer", connect)
        hosts = [f"localhost:{p}" for p in cluster.ports]
        client_cluster = sy.Cluster(*(sy.Worker(h, auto_managed=False) for h in hosts))
        client = sy.Client(timeout=60).connect_to_model((1, *IMAGE), (1, 10), client_cluster)

        def run():
            try:
                self.result = client.query_model(x, reveal=reveal)
            except Exception as exc:  # noqa: BLE001 - checked by the test
                self.error = exc
            finally:
                self.queued.set()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert self.queued.wait(30), "the honest client did not reach the workers"
        # Its hello is answered just before the worker queues it: give the queue a moment.
        time.sleep(0.3)

    def answer(self) -> np.ndarray:
        self.thread.join(60)
        assert not self.thread.is_alive(), "the honest client got no answer"
        assert self.error is None, f"the honest client failed: {self.error}"
        return self.result


class Serving:
    """model.serve() until stopped, in a thread: batches are as large as the queue allows (up to max_batch)."""

    def __init__(self, model, **kwargs):
        self.model, self.served, self.error = model, None, None

        def run():
            try:
                self.served = model.serve(None, idle_timeout=60, **kwargs)
            except Exception as exc:  # noqa: BLE001 - raised by stop()
                self.error = exc

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def stop(self) -> int:
        """Stop serving (after the batch in hand); how many queries were answered."""
        self.model.stop_serving()
        self.thread.join(30)
        assert not self.thread.is_alive(), "serving did not stop"
        if self.error is not None:
            raise self.error
        return self.served


def expected_logits(model, x):
    return model.predict_fixed_point(x[None], frac_bits=F)[0]


def check_later_query_is_answered(model, cluster, monkeypatch, seed: int) -> None:
    x = np.random.default_rng(seed).uniform(0, 1, IMAGE)
    honest = HonestClient(cluster, x, monkeypatch)
    assert model.serve(num_requests=1, idle_timeout=60) == 1
    np.testing.assert_allclose(honest.answer()[0], expected_logits(model, x), atol=64 / 2**F)


def test_shapes_told_differently_to_p0_and_p1_cannot_move_another_clients_rows(served, monkeypatch):
    """Two queries swap row counts between P0 and P1 (same totals): today the honest rows between them shift."""
    model, cluster = served
    first = RawQuery(cluster, {P0: request(1), P1: request(2), DEALER: request(1)}).send({P0: shares(1), P1: shares(2)})
    x = np.random.default_rng(1).uniform(0, 1, IMAGE)
    honest = HonestClient(cluster, x, monkeypatch)
    second = RawQuery(cluster, {P0: request(2), P1: request(1), DEALER: request(2)})
    second.send({P0: shares(2), P1: shares(1)})
    serving = Serving(model)  # all three queued: one batch, A's rows, the honest row, B's rows
    np.testing.assert_allclose(honest.answer()[0], expected_logits(model, x), atol=64 / 2**F)
    assert serving.stop() == 1
    assert cluster.last_serve == {"served": 1, "failed": 2, "restarts": 0, "stopped": "stop_serving()"}
    for attacker in (first, second):
        said = attacker.answers()
        for i in (P0, P1):
            assert "query:error" in said[i] and "the workers were told different things" in said[i], said
    check_later_query_is_answered(model, cluster, monkeypatch, seed=2)


def test_a_batch_size_told_differently_to_the_dealer_cannot_stop_the_server(served, monkeypatch):
    """P0 and P1 are told one row, P2 two: today P2 deals for a batch the others do not run."""
    model, cluster = served
    attacker = RawQuery(cluster, {P0: request(1), P1: request(1), DEALER: request(2)})
    attacker.send({P0: shares(1), P1: shares(1)})
    x = np.random.default_rng(3).uniform(0, 1, IMAGE)
    honest = HonestClient(cluster, x, monkeypatch)
    serving = Serving(model)
    np.testing.assert_allclose(honest.answer()[0], expected_logits(model, x), atol=64 / 2**F)
    assert serving.stop() == 1 and cluster.last_serve["failed"] == 1
    said = attacker.answers()
    assert "P2: shape [2, 28, 28, 1]" in said[P0] and "the workers were told different things" in said[P1], said
    check_later_query_is_answered(model, cluster, monkeypatch, seed=4)


def test_a_reveal_mode_told_differently_cannot_mix_modes_in_a_batch(served, monkeypatch):
    """P0 is told logits, P1 and P2 argmax: today P1 and P2 run the argmax while P0 does not."""
    model, cluster = served
    attacker = RawQuery(cluster, {P0: request(1), P1: request(1, "argmax"), DEALER: request(1, "argmax")})
    attacker.send({P0: shares(1), P1: shares(1)})
    x = np.random.default_rng(5).uniform(0, 1, IMAGE)
    honest = HonestClient(cluster, x, monkeypatch)
    serving = Serving(model)
    np.testing.assert_allclose(honest.answer()[0], expected_logits(model, x), atol=64 / 2**F)
    assert serving.stop() == 1 and cluster.last_serve["failed"] == 1
    said = attacker.answers()
    assert "reveal 'argmax'" in said[P0] and "the workers were told different things" in said[P0], said
    check_later_query_is_answered(model, cluster, monkeypatch, seed=6)


class _FrameBytes:
    """A stream that keeps what write_frame sends, to be trickled out by hand."""

    def __init__(self):
        self.data = b""

    def send_views(self, views, idle, on_block=None):
        self.data += b"".join(bytes(v) for v in views)


def test_slow_and_silent_clients_cost_only_their_own_queries(served, monkeypatch):
    """One share trickles in a byte at a time, two never come: within one query_timeout all three are dropped.

    Today each read waits until no byte came for the channel's timeout, so
    the trickled share holds P0 until its peers give up on it and serving stops.
    """
    model, cluster = served
    trickler = RawQuery(cluster, {i: request(1) for i in PARTIES}).send({P1: shares(1)})
    silent = [RawQuery(cluster, {i: request(1) for i in PARTIES}) for _ in range(2)]
    frame = _FrameBytes()
    write_frame(frame, "input", 1, trickler.id, shares(1), idle=lambda: None)
    stop = threading.Event()

    def trickle():
        sock = trickler.streams[P0].sock
        for k in range(len(frame.data)):
            if stop.wait(0.2):
                return
            try:
                sock.send(frame.data[k : k + 1])
            except OSError:  # the worker hung up on us
                return

    threading.Thread(target=trickle, daemon=True).start()
    x = np.random.default_rng(7).uniform(0, 1, IMAGE)
    honest = HonestClient(cluster, x, monkeypatch)
    start = time.monotonic()
    serving = Serving(model, query_timeout=2.0)
    try:
        np.testing.assert_allclose(honest.answer()[0], expected_logits(model, x), atol=64 / 2**F)
        assert time.monotonic() - start < 10, "the bad clients held the batch longer than the query timeout"
    finally:
        stop.set()
        assert serving.stop() == 1 and cluster.last_serve["failed"] == 3
    for query in silent:
        said = query.answers()
        assert "no input share from the client within the server's query_timeout" in said[P0], said
    trickler.channel.close()
    check_later_query_is_answered(model, cluster, monkeypatch, seed=8)


def test_a_server_that_reveals_labels_only_refuses_logits_queries(served, monkeypatch):
    model, cluster = served
    x = np.random.default_rng(9).uniform(0, 1, IMAGE)
    asks_logits = RawQuery(cluster, {i: request(1) for i in PARTIES}).send({P0: shares(1), P1: shares(1)})
    honest = HonestClient(cluster, x, monkeypatch, reveal="argmax")
    serving = Serving(model, reveal="argmax")
    assert honest.answer()[0] == expected_logits(model, x).argmax()
    assert serving.stop() == 1 and cluster.last_serve["failed"] == 1
    said = asks_logits.answers()
    assert "this server reveals only argmax" in said[P0] and "refused" in said[P1], said
    with pytest.raises(ValueError, match="reveal must be"):
        model.serve(num_requests=1, reveal="everything")


def test_logits_reach_the_client_at_the_models_fractional_bits(served):
    """P0 and P1 send logits shares at F bits (securely truncated), not the 2F-bit accumulator."""
    model, cluster = served
    x = np.random.default_rng(10).uniform(0, 1, (1, *IMAGE))
    encoded = cluster.fixed_point.encode(x)
    mask = np.random.default_rng(11).integers(0, 2**63, encoded.shape, dtype=np.uint64)
    query = RawQuery(cluster, {i: request(1) for i in PARTIES}).send({P0: mask, P1: encoded - mask})
    assert model.serve(num_requests=1, idle_timeout=60) == 1
    outputs = []
    for i in (P0, P1):
        tag, payload = query.channel.recv_control(i, timeout=10)
        assert tag == "output", (tag, payload)
        outputs.append(payload)
    query.channel.close()
    assert [int(scale[0]) for _, scale in outputs] == [F, F]
    logits = (outputs[0][0] + outputs[1][0]).view(np.int64) / 2**F
    np.testing.assert_allclose(logits[0], expected_logits(model, x[0]), atol=64 / 2**F)
