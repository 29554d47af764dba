"""Limits: frames over max_frame_bytes, and served queries that break the serving limits.

A raw client (the steps of TcpCluster.submit_query, with payloads of our
choosing) sends input shares of the wrong dtype or shape, a batch over
max_rows, and a frame far larger than its declared shape: each gets a
clear error, and a good query after them is answered correctly. Over a bare
pair of channels: a refused frame is explained to its sender, and a
receive-only limit does not limit what is sent.
"""

from __future__ import annotations

import secrets
import threading

import numpy as np
import pytest
from helpers import socket_channel_pair
from test_secure_graph import seed_cnn

import pysmpc as sy
from pysmpc.parties.channel import ChannelError
from pysmpc.parties.frames import ABORT_TAG, FrameTooLarge
from pysmpc.parties.party import CLIENT, DEALER, P0, P1
from pysmpc.parties.socket import SocketChannel, connect_peer
from pysmpc.runtime.queries import query_frame_limit

pytestmark = pytest.mark.tcp

MAX_FRAME = 8 << 20  # the cluster's frame limit in these tests
MAX_ROWS = 4


@pytest.fixture(scope="module")
def served():
    model = sy.Model(seed_cnn(np.random.default_rng(0)))
    cluster = sy.Cluster(*(sy.Worker(f"localhost:{4000 + i}") for i in range(3)), ephemeral_ports=True,
                         max_frame_bytes=MAX_FRAME)
    cluster.start()
    model.share(cluster)
    yield model, cluster
    model.stop_sharing()
    cluster.stop()


def raw_query(cluster, request: dict, inputs: dict, timeout: float = 30.0) -> dict:
    """Send P0 and P1 the payloads in `inputs` for a query declaring `request`; what each answered.

    Returns {party: (tag, payload)} or {party: the ChannelError that sending or receiving raised}.
    """
    query_id = secrets.token_hex(16)
    channel = SocketChannel(CLIENT, timeout, session=query_id, max_frame_bytes=1 << 30)
    answers = {}
    try:
        for i in (P0, P1, DEALER):
            channel.attach(i, connect_peer(cluster.hosts[i], CLIENT, i, session=query_id, timeout=timeout,
                                           extra={"query": request}))
        for i in (P0, P1):
            try:
                channel.send(i, inputs[i], tag="input")
            except ChannelError as exc:
                answers[i] = exc
        for i in (P0, P1):
            if i not in answers:
                try:
                    answers[i] = channel.recv_control(i, timeout=timeout)
                except ChannelError as exc:
                    answers[i] = exc
    finally:
        channel.close()
    return answers


def text(answer) -> str:
    if isinstance(answer, Exception):
        return str(answer)
    tag, payload = answer
    return f"{tag}: {bytes(payload).decode(errors='replace') if isinstance(payload, bytes) else payload}"


def test_bad_queries_get_clear_errors_and_the_server_keeps_serving(served):
    model, cluster = served
    request = {"shape": [1, 28, 28, 1], "reveal": "logits", "frac_bits": cluster.frac_bits}
    good = np.zeros((1, 28, 28, 1), np.uint64)
    cases = {
        "float shares": (request, {P0: good.astype(np.float64), P1: good.astype(np.float64)},
                         "the input share is a float64 array of shape (1, 28, 28, 1); expected a uint64 array"),
        "int32 shares": (request, {P0: good.astype(np.int32), P1: good}, "the input share is a int32 array"),
        "wrong shape": (request, {P0: good[0], P1: good[0]}, "is a uint64 array of shape (28, 28, 1); expected"),
        "bytes": (request, {P0: b"\x00" * 8, P1: good}, "the input share is a bytes"),
        "batch over max_rows": ({**request, "shape": [MAX_ROWS + 1, 28, 28, 1]},
                                {P0: np.zeros((MAX_ROWS + 1, 28, 28, 1), np.uint64),
                                 P1: np.zeros((MAX_ROWS + 1, 28, 28, 1), np.uint64)},
                                f"batch of {MAX_ROWS + 1} inputs; this server takes at most {MAX_ROWS} per query"),
        # 800 images where the request declares one: far over this query's frame limit.
        "oversized frame": (request, {P0: np.zeros((800, 28, 28, 1), np.uint64), P1: good},
                            "exceeds the limit of"),
    }
    answers: dict = {}
    result: dict = {}

    def clients():
        try:
            for name, (req, inputs, _) in cases.items():
                answers[name] = raw_query(cluster, req, inputs)
            image = np.random.default_rng(3).uniform(0, 1, (28, 28, 1))
            result["logits"] = cluster.submit_query(image[None], timeout=60)
            result["image"] = image
        except Exception as exc:  # noqa: BLE001 - reported below
            result["error"] = exc

    thread = threading.Thread(target=clients)
    thread.start()
    served_count = model.serve(num_requests=1, max_rows=MAX_ROWS, idle_timeout=60)  # refused ones do not count
    thread.join(60)
    assert not thread.is_alive() and "error" not in result, result
    assert served_count == 1
    assert cluster.last_serve == {"served": 1, "failed": len(cases), "restarts": 0, "stopped": "done"}
    for name, (_, _, needle) in cases.items():
        said = text(answers[name][P0])
        assert needle in said, f"{name}: P0 answered {said!r}"
        assert not isinstance(answers[name][P0], tuple) or answers[name][P0][0] in ("query:error", ABORT_TAG)
    np.testing.assert_allclose(result["logits"][0], model.predict(result["image"][None])[0], atol=1e-2)


def test_a_query_may_send_only_its_declared_share():
    assert query_frame_limit({"shape": [1, 28, 28, 1]}, 1 << 30) == 8 * 784 + (1 << 16)
    assert query_frame_limit({"shape": [10**9, 28, 28, 1]}, 1 << 30) == 1 << 30  # the cluster's limit caps it
    for malformed in ({"shape": "big"}, {"shape": [1, True]}, {"shape": [-1, 5]}, [], None):
        assert query_frame_limit(malformed, 1 << 30) == 1 << 16


def test_frame_limit_reaches_the_workers(served):
    _, cluster = served
    for i in (P0, P1, DEALER):
        args = cluster.processes[i].args
        assert args[args.index("--max-frame-bytes") + 1] == str(MAX_FRAME)
    with pytest.raises(FrameTooLarge, match=r"makes a frame of 8388\d+ bytes, over the frame limit of 8388608 bytes"):
        cluster.client_channel.send(P0, np.zeros(2 << 20, np.uint32), tag="big")  # refused before it leaves
    np.testing.assert_allclose(cluster.share(np.array([1.5, -2.0])).reveal(), [1.5, -2.0])  # the link still works


def test_an_input_over_the_frame_limit_is_refused_before_any_call_leaves(served):
    _, cluster = served
    with pytest.raises(FrameTooLarge, match=r"the input for P0 is 8800000 bytes, over the frame limit of 8388608"):
        cluster.share(np.zeros((1100, 1000)))  # 8.8 MB of shares per party
    np.testing.assert_allclose(cluster.share(np.array([1.5, -2.0])).reveal(), [1.5, -2.0])  # no party was left waiting


def _pair(p0: dict, p1: dict, timeout: float = 5.0):
    """P0 and P1 SocketChannels over one loopback connection, each built with its own limits."""
    return socket_channel_pair(timeout, p0, p1)


def _receiving(channel, frm, tag):
    """Have `channel` wait for a message in a thread, as a party does; join() gives the error it got."""
    outcome = {}

    def wait():
        try:
            channel.recv(frm, tag=tag)
        except ChannelError as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=wait)
    thread.start()

    def join():
        thread.join(10)
        return outcome.get("error")
    return join


def test_a_refused_frame_is_explained_to_its_sender():
    ch0, ch1 = _pair({"max_frame_bytes": 1 << 20}, {})
    try:
        # 64 MiB to a P0 that waits for it: P0 hangs up mid-frame, P1's send fails, and says why P0 hung up.
        p0_got = _receiving(ch0, P1, "big")
        with pytest.raises(ChannelError, match=r"cannot send 'big' to party 0: .*\(party 0 refused a frame from "
                                               r"party 1: frame of 67108\d+ bytes exceeds the limit of 1048576"):
            ch1.send(P0, np.zeros(8 << 20, np.uint64), tag="big")
        assert "exceeds the limit of 1048576 bytes" in str(p0_got())
        with pytest.raises(ChannelError, match="exceeds the limit of 1048576 bytes"):
            ch0.recv(P1, tag="big")  # and every later receive fails the same way
    finally:
        ch0.close()
        ch1.close()
    ch0, ch1 = _pair({"max_frame_bytes": 1 << 16}, {})
    try:
        p0_got = _receiving(ch0, P1, "big")
        ch1.send(P0, np.zeros(1 << 14, np.uint64), tag="big")  # 128 KiB: fits the socket buffers, so it leaves
        with pytest.raises(ChannelError, match=r"party 0 aborted the operation \(party 0 refused a frame from "
                                               r"party 1: frame of 131\d+ bytes exceeds the limit of 65536"):
            ch1.recv(P0, tag="reply")
        assert "exceeds the limit of 65536 bytes" in str(p0_got())
    finally:
        ch0.close()
        ch1.close()


def test_a_receive_limit_does_not_limit_what_is_sent():
    # A worker's channel to a query client takes only the declared share, but answers with any size.
    ch0, ch1 = _pair({"max_recv_bytes": 1 << 16}, {})
    try:
        ch0.send(P1, np.zeros(1 << 15, np.uint64), tag="output")  # 256 KiB out: fine
        assert ch1.recv(P0, tag="output").shape == (1 << 15,)
        ch1.send(P0, np.zeros(1 << 15, np.uint64), tag="input")  # 256 KiB in: refused
        with pytest.raises(ChannelError, match="exceeds the limit of 65536 bytes"):
            ch0.recv(P1, tag="input")
    finally:
        ch0.close()
        ch1.close()
