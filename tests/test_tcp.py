"""TCP transport: the user-facing tests over three worker processes, and the transport's failure modes."""

from __future__ import annotations

import gc
import ipaddress
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import test_cluster
from helpers import socket_channel_pair

# The user-facing suite, collected again here against the parametrized `cluster` below.
from test_cluster import (  # noqa: F401
    test_clear_errors,
    test_comparisons_and_argmax,
    test_multiply_and_matmul,
    test_relu_conv_pool,
    test_share_reveal_add_sub,
    test_stats_count_bytes_and_rounds,
)

from pysmpc import LocalCluster
from pysmpc.parties.addresses import (
    CleartextError,
    CleartextWarning,
    check_cleartext,
    parse_hosts,
)
from pysmpc.parties.channel import ChannelError, PeerDisconnected, PeerTimeout
from pysmpc.parties.frames import MAGIC
from pysmpc.parties.party import CLIENT, DEALER, P0, P1
from pysmpc.parties.socket import accept_peer, connect_peer, reply_hello
from pysmpc.parties.streams import TlsConfig
from pysmpc.runtime import wire
from pysmpc.runtime.certs import make_cluster_certs
from pysmpc.runtime.cluster import ClusterError
from pysmpc.runtime.tcp import TcpCluster

TOL = test_cluster.TOL


@pytest.fixture(scope="module")
def local_cluster():
    with LocalCluster() as c:
        yield c


@pytest.fixture(scope="module")
def tcp_cluster():
    with TcpCluster(ephemeral_ports=True) as c:
        yield c


@pytest.fixture(scope="module", params=["local", pytest.param("tcp", marks=pytest.mark.tcp)])
def cluster(request):
    return request.getfixturevalue(f"{request.param}_cluster")


def _workload(c):
    """A fixed sequence of ops touching every kind of traffic: input, Beaver, truncation, comparison, output."""
    rng = np.random.default_rng(7)
    a, b = rng.uniform(-5, 5, (6, 10)), rng.uniform(-5, 5, (10, 4))
    c.reset_stats()
    x, w = c.share(a), c.share(b)
    y = (x @ w).relu()
    z = (x * x).sum(axis=0)
    out = [y.reveal(), z.reveal(), (x < 0.5).reveal(), x.argmax().reveal()]
    return c.stats(), out, (a, b)


@pytest.mark.tcp
def test_stats_over_tcp_equal_in_process(local_cluster, tcp_cluster):
    stats_local, out_local, _ = _workload(local_cluster)
    stats_tcp, out_tcp, (a, b) = _workload(tcp_cluster)
    for key in ("P0", "P1", "P2", "client"):
        assert stats_tcp[key] == stats_local[key], f"{key}: tcp {stats_tcp[key]} != local {stats_local[key]}"
    np.testing.assert_allclose(out_tcp[0], np.maximum(a @ b, 0), atol=1e-2)
    np.testing.assert_array_equal(out_tcp[2], out_local[2])
    np.testing.assert_array_equal(out_tcp[3], out_local[3])
    assert stats_tcp["P0"]["matmul"]["rounds"] == 1


@pytest.mark.tcp
@pytest.mark.parametrize("relu_protocol", ["bitplane", "fss"])
@pytest.mark.parametrize("prepared", [False, True], ids=["dealt-online", "prepared-masked-input"])
def test_a_large_batch_over_tcp_runs_in_pipelined_parts(tcp_cluster, prepared, relu_protocol):
    """64 rows run as 2 parts of 32 (graph.plan.pipeline_parts): the in-process answers, the planned traffic,
    each part's own messages, one input mask per part for the querier, and the input sent part by part."""
    from pysmpc import load_model
    from pysmpc.graph.plan import pipeline_parts
    from pysmpc.models import load_samples, shipped_model_path

    images, _ = load_samples()
    x = np.concatenate([images] * 8)[:64]
    assert pipeline_parts(64, True) == [32, 32]
    model = load_model(shipped_model_path(), relu_protocol=relu_protocol)
    shared = model.share(tcp_cluster)
    if prepared:
        shared.prepare(len(x))
    tcp_cluster.reset_stats()
    logits = shared.predict(x)
    np.testing.assert_allclose(logits, model.predict(x), atol=2e-3)
    stats = tcp_cluster.stats()
    planned = shared.cost(len(x), prepared=prepared)
    assert planned == model.cost(len(x), prepared=prepared, pipelined=True)
    for party in ("P0", "P1"):
        online = [s for t, s in stats[party].items() if not t.startswith(("dealer", "setup")) and t not in ("input", "output")]
        assert sum(s["rounds"] for s in online) == sum(c.rounds for _, c in planned)
        assert sum(s["bytes_sent"] for s in online) == sum(c.bytes_sent for _, c in planned)
        assert sum(s["messages_received"] for s in online) == 2 * sum(s["rounds"] for s in online)
        assert stats[party]["input"]["messages_received"] == 2  # each part's input when it starts
    assert stats["client"]["input"]["messages_sent"] == 4
    shared.stop()


@pytest.mark.tcp
def test_tls_cluster(tmp_path, local_cluster):
    make_cluster_certs(tmp_path)
    with TcpCluster(tls_dir=tmp_path, ephemeral_ports=True) as c:
        a = np.array([[1.5, -2.0, 3.25]])
        x = c.share(a)
        np.testing.assert_allclose((x * x).reveal(), a * a, atol=1e-3)
        c.reset_stats()
        (x * x).reveal()
        tls_stats = c.stats()
    local_cluster.reset_stats()
    (local_cluster.share(a) * local_cluster.share(a)).reveal()
    # Encryption is below the counting: the same payload bytes are reported.
    assert tls_stats["P0"]["mul"] == local_cluster.stats()["P0"]["mul"]


@pytest.mark.tcp
def test_wrong_certificate_is_refused(tmp_path):
    make_cluster_certs(tmp_path)
    for ext in ("pem", "key"):  # P0 now presents P1's (valid, CA-signed) certificate
        shutil.copy(tmp_path / f"p1.{ext}", tmp_path / f"p0.{ext}")
    start = time.monotonic()
    with pytest.raises(ClusterError, match=r"P0.*certificate for 'P1', expected 'P0'"):
        TcpCluster(tls_dir=tmp_path, ephemeral_ports=True, timeout=10).start()
    assert time.monotonic() - start < 10


@pytest.mark.tcp
def test_certificate_from_another_ca_is_refused(tmp_path):
    make_cluster_certs(tmp_path / "a")
    make_cluster_certs(tmp_path / "b")
    shutil.copy(tmp_path / "b" / "client.pem", tmp_path / "a" / "client.pem")
    shutil.copy(tmp_path / "b" / "client.key", tmp_path / "a" / "client.key")
    with pytest.raises(ClusterError, match=r"P0"):
        TcpCluster(tls_dir=tmp_path / "a", ephemeral_ports=True, timeout=10).start()


@pytest.mark.tcp
def test_killed_worker_fails_fast_naming_the_party():
    with TcpCluster(ephemeral_ports=True) as c:
        x = c.share(np.ones((4, 4)))
        c.processes[P1].kill()
        c.processes[P1].wait()
        start = time.monotonic()
        with pytest.raises(ClusterError, match=r"P1|party 1") as info:
            (x * x).reveal()
        assert time.monotonic() - start < 10
        assert "exited with code" in str(info.value)
        with pytest.raises(ClusterError, match="stopped working"):
            c.share(np.ones(2))


@pytest.mark.tcp
def test_error_on_workers_is_reported_and_workers_end_with_the_cluster():
    c = TcpCluster(ephemeral_ports=True).start()
    start = time.monotonic()
    with pytest.raises(ClusterError, match=r"operation 'transpose' failed on party 0, 1, 2") as info:
        c.call("transpose", 99, 12345, (1, 0))  # no tensor 12345 on any party
    assert isinstance(info.value.__cause__, KeyError)
    with pytest.raises(ClusterError, match="stopped working"):
        c.call("not_an_op")
    assert time.monotonic() - start < 10
    processes = list(c.processes.values())
    del c, info
    gc.collect()  # no stop(): garbage collection ends the workers
    assert all(p.poll() is not None for p in processes)


@pytest.mark.tcp
def test_workers_started_by_hand(tmp_path):
    ports = []
    for _ in range(3):
        with socket.create_server(("127.0.0.1", 0)) as s:
            ports.append(s.getsockname()[1])
    hosts = ",".join(f"127.0.0.1:{p}" for p in ports)
    workers = [subprocess.Popen([sys.executable, "-m", "pysmpc.runtime.worker", "--party", str(i), "--hosts", hosts],
                                stderr=subprocess.PIPE, cwd=tmp_path) for i in (2, 1, 0)]  # any start order
    try:
        with TcpCluster(hosts=hosts.split(","), spawn=False) as c:
            assert c.processes == {}
            x = c.share(np.array([[1.0, -2.0]]))
            np.testing.assert_allclose((x @ x.T).reveal(), [[5.0]], atol=1e-3)
        assert [w.wait(timeout=10) for w in workers] == [0, 0, 0]  # one session each, then exit
    finally:
        for w in workers:
            w.kill()
            w.wait()


@pytest.mark.tcp
def test_garbage_to_a_worker_port_is_refused(tcp_cluster):
    host, port = tcp_cluster.hosts[P0]
    with socket.create_connection((host, port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: pysmpc\r\n\r\n" + bytes(range(256)))
        s.settimeout(5)
        assert s.recv(100) == b""  # the worker closed it
    x = tcp_cluster.share(np.array([2.0]))
    np.testing.assert_allclose((x * x).reveal(), [4.0], atol=TOL)
    assert "bad magic" in tcp_cluster.worker_log(P0)


@pytest.mark.tcp
def test_busy_port_is_a_clear_error():
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        with pytest.raises(ClusterError, match=rf"cannot listen on 127.0.0.1:{port} for P0.*busy"):
            TcpCluster(hosts=(f"127.0.0.1:{port}", "127.0.0.1:0", "127.0.0.1:0")).start()


def test_cleartext_is_refused_off_loopback_unless_forced(tmp_path):
    loopback = parse_hosts("localhost:1,127.0.0.1:2,[::1]:3")
    exposed = parse_hosts("localhost:1,192.0.2.7:2,localhost:3")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not check_cleartext(loopback, None, "test")
        assert not check_cleartext(exposed, tmp_path, "test")  # TLS configured: nothing to refuse
    with pytest.raises(CleartextError, match=r"test: refusing to connect without TLS: 192.0.2.7:2 is not loopback"
                                             r".*pysmpc certs DIR --hosts localhost:1,192.0.2.7:2,localhost:3"
                                             r".*allow_cleartext=True \(--allow-cleartext\)"):
        check_cleartext(exposed, None, "test")
    with pytest.warns(CleartextWarning, match="IN THE CLEAR"):
        assert check_cleartext(exposed, None, "test", allow_cleartext=True)


def test_clusters_refuse_cleartext_off_loopback_unless_forced():
    from pysmpc import Cluster, Worker

    hosts = ("192.0.2.7:4000", "192.0.2.8:4001", "localhost:4002")
    with pytest.raises(CleartextError, match=r"TcpCluster: .*192.0.2.7:4000, 192.0.2.8:4001 are not loopback"):
        TcpCluster(hosts=hosts, spawn=False)
    with pytest.raises(CleartextError, match=r"Cluster: .*--tls-dir"):
        Cluster(*(Worker(h, auto_managed=False) for h in hosts))  # a query client: refused before connecting
    with pytest.warns(CleartextWarning, match="IN THE CLEAR"):
        Cluster(*(Worker(h, auto_managed=False) for h in hosts), allow_cleartext=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        TcpCluster(spawn=False)  # loopback: no TLS needed, no warning


def _package_root() -> str:
    import pysmpc

    return str(Path(pysmpc.__file__).resolve().parent.parent)  # the copy under test, not another one


def _worker_env():
    import os

    root = _package_root()
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}


def test_worker_refuses_cleartext_off_loopback():
    cmd = [sys.executable, "-m", "pysmpc.runtime.worker", "--party", "0",
           "--hosts", "127.0.0.1:0,192.0.2.7:1,192.0.2.8:2", "--startup-timeout", "0.5"]
    # cwd: `python -m` puts it first on sys.path, and the source tree has no compiled kernels.
    refused = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=_worker_env(), cwd=_package_root())
    assert refused.returncode == 2, refused.stderr
    assert "refusing to connect without TLS" in refused.stderr and "--allow-cleartext" in refused.stderr
    assert "listening" not in refused.stderr
    forced = subprocess.run([*cmd, "--allow-cleartext"], capture_output=True, text=True, timeout=60, env=_worker_env(),
                            cwd=_package_root())
    assert "TRAFFIC IS IN THE CLEAR" in forced.stderr and "listening on 127.0.0.1" in forced.stderr
    assert forced.returncode == 1 and "timed out waiting for the client" in forced.stderr


def _non_loopback_address() -> str | None:
    """An address of this machine that is not loopback (no packet is sent), or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: only picks the outgoing interface
            address = s.getsockname()[0]
        except OSError:
            return None
    try:
        with socket.create_server((address, 0)):
            pass
    except OSError:
        return None
    return None if ipaddress.ip_address(address).is_loopback else address


@pytest.mark.tcp
def test_forced_cleartext_cluster_off_loopback_works():
    address = _non_loopback_address()
    if address is None:
        pytest.skip("this machine has no non-loopback address to listen on")
    hosts = [f"{address}:0"] * 3
    with pytest.raises(CleartextError):
        TcpCluster(hosts=hosts, ephemeral_ports=True)
    with pytest.warns(CleartextWarning):
        cluster = TcpCluster(hosts=hosts, ephemeral_ports=True, allow_cleartext=True, timeout=20)
    with cluster as c:  # the workers were told --allow-cleartext, or they would refuse to start
        x = c.share(np.array([1.5, -2.0]))
        np.testing.assert_allclose((x * x).reveal(), [2.25, 4.0], atol=TOL)
        assert "TRAFFIC IS IN THE CLEAR" in c.worker_log(P0)


# -- mutual TLS: only the expected party gets through -------------------------------------------
@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    directory = tmp_path_factory.mktemp("certs")
    make_cluster_certs(directory)
    return directory


def _tls_as(certs, tmp_path, me: int, presents: str):
    """TlsConfig of endpoint `me` that presents the (valid, CA-signed) certificate of `presents`."""
    directory = tmp_path / f"{me}-as-{presents}"
    directory.mkdir()
    shutil.copy(certs / "ca.pem", directory / "ca.pem")
    stem = {P0: "p0", P1: "p1", DEALER: "p2", CLIENT: "client"}[me]
    for ext in ("pem", "key"):
        shutil.copy(certs / f"{presents}.{ext}", directory / f"{stem}.{ext}")
    return TlsConfig(directory, me)


def _tls_connect(server_tls, server_me, client_tls, client_me, expect):
    """Run accept_peer (as `server_me`) against connect_peer (as `client_me`, expecting `expect`).

    Returns (what the server raised or None, what the client raised or None).
    """
    listener = socket.create_server(("127.0.0.1", 0))
    server_error = []

    def accept():
        sock, _ = listener.accept()
        try:
            peer, hello, stream = accept_peer(sock, server_me, tls=server_tls, timeout=5)
            reply_hello(stream, server_me, hello["session"])
            stream.close()
        except (ChannelError, OSError) as exc:
            server_error.append(exc)

    t = threading.Thread(target=accept)
    t.start()
    client_error = None
    try:
        stream = connect_peer(listener.getsockname()[:2], client_me, expect, session="s", tls=client_tls, timeout=5)
        stream.close()
    except ChannelError as exc:
        client_error = exc
    t.join(10)
    listener.close()
    return (server_error[0] if server_error else None), client_error


def test_tls_link_between_the_right_parties_is_accepted(certs, tmp_path):
    server_error, client_error = _tls_connect(TlsConfig(certs, P0), P0, TlsConfig(certs, P1), P1, expect=P0)
    assert server_error is None and client_error is None


@pytest.mark.parametrize("me, presents", [(P1, "client"), (DEALER, "p1"), (CLIENT, "p2")])
def test_a_certificate_of_another_endpoint_is_refused_by_the_listener(certs, tmp_path, me, presents):
    """A client certificate presented as P1, P1's presented as P2, P2's presented as the client."""
    impostor = _tls_as(certs, tmp_path, me, presents)
    server_error, client_error = _tls_connect(TlsConfig(certs, P0), P0, impostor, me, expect=P0)
    cn = {"client": "client", "p1": "P1", "p2": "P2"}[presents]
    expected = {P1: "P1", DEALER: "P2", CLIENT: "client"}[me]
    who = "the client" if me == CLIENT else f"party {me}"
    message = rf"{who} presented a certificate for '{cn}', expected '{expected}': connection refused"
    assert server_error is not None and re.search(message, str(server_error)), server_error
    assert isinstance(client_error, ChannelError)
    assert re.search(rf"refused the connection: {message}", str(client_error)), client_error


@pytest.mark.parametrize("server_me, presents, client_me", [(P0, "p1", P1), (P0, "p1", CLIENT), (P1, "client", DEALER)])
def test_a_listener_with_the_wrong_certificate_is_refused(certs, tmp_path, server_me, presents, client_me):
    """P1's certificate on P0's port (seen by P1 and by the client), the client's on P1's port (seen by P2)."""
    impostor = _tls_as(certs, tmp_path, server_me, presents)
    _, client_error = _tls_connect(impostor, server_me, TlsConfig(certs, client_me), client_me, expect=server_me)
    cn = {"client": "client", "p1": "P1"}[presents]
    assert isinstance(client_error, ChannelError)
    assert re.search(rf"presented a certificate for '{cn}', expected 'P{server_me}': refusing the connection",
                     str(client_error)), client_error


def test_a_peer_without_a_certificate_or_without_tls_is_refused(certs, tmp_path):
    import ssl

    listener = socket.create_server(("127.0.0.1", 0))
    address = listener.getsockname()[:2]
    errors = []

    def accept_twice():
        for _ in range(2):
            sock, _ = listener.accept()
            try:
                accept_peer(sock, P0, tls=TlsConfig(certs, P0), timeout=5)
            except (ChannelError, OSError) as exc:
                errors.append(exc)

    t = threading.Thread(target=accept_twice)
    t.start()
    anonymous = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # trusts the CA but has no certificate of its own
    anonymous.load_verify_locations(certs / "ca.pem")
    anonymous.check_hostname = False
    with pytest.raises((ssl.SSLError, OSError)):
        with socket.create_connection(address, timeout=5) as raw, anonymous.wrap_socket(raw) as tls:
            tls.sendall(b"x")
            tls.recv(1)  # TLS 1.3: the server's refusal arrives after the handshake
    with pytest.raises(PeerDisconnected):  # a cleartext peer never completes the handshake
        connect_peer(address, P1, P0, session="s", tls=None, timeout=5)
    t.join(10)
    listener.close()
    assert len(errors) == 2 and all("TLS handshake failed" in str(e) for e in errors), errors


def test_tls_directory_problems_are_clear(certs, tmp_path, caplog):
    with pytest.raises(FileNotFoundError, match=r"lacks ca.pem, p2.pem, p2.key: P2 needs ca.pem, p2.pem and p2.key "
                                                 r"there \(make them with `pysmpc certs DIR`\)"):
        TlsConfig(tmp_path, DEALER)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for name, source in (("ca.pem", "ca.pem"), ("p0.pem", "p0.pem"), ("p0.key", "p1.key")):
        shutil.copy(certs / source, mixed / name)
    with pytest.raises(ValueError, match=r"cannot load the TLS files .*p0.pem.*does not match"):
        TlsConfig(mixed, P0)
    shutil.copy(certs / "p0.key", mixed / "p0.key")
    (mixed / "p0.key").chmod(0o644)
    with caplog.at_level("WARNING", logger="pysmpc.socket"):
        TlsConfig(mixed, P0)
    assert "p0.key is readable by other users (mode 644): chmod 600 it" in caplog.text


# -- the channel itself, over a loopback connection ------------------------------------------
def _pair(timeout=2.0, max_frame_bytes=1 << 30, tls=(None, None)):
    """Two SocketChannels, P0 and P1, joined by one loopback connection (TLS with both of `tls`)."""
    limits = {"max_frame_bytes": max_frame_bytes}
    return socket_channel_pair(timeout, limits, limits, tls)


def test_channel_payloads_round_trip_and_count():
    ch0, ch1 = _pair()
    try:
        a = np.arange(12, dtype=np.uint64).reshape(3, 4)
        payload = [a, a.T, b"seed", (np.float64(1.5) * np.ones(2), np.zeros((0, 3), np.int32)), np.uint64(7) * a[0]]
        ch0.send(P1, payload, tag="t")
        got = ch1.recv(P0, tag="t")
        assert isinstance(got, list) and isinstance(got[3], tuple)
        np.testing.assert_array_equal(got[0], a)
        np.testing.assert_array_equal(got[1], a.T)
        assert got[2] == b"seed" and got[3][1].shape == (0, 3) and got[4].dtype == np.uint64
        sent = 12 * 8 * 2 + 4 + 16 + 0 + 32
        assert ch0.stats()["t"].bytes_sent == sent and ch1.stats()["t"].bytes_received == sent
        assert ch1.stats()["t"].rounds == 1
    finally:
        ch0.close()
        ch1.close()


@pytest.mark.parametrize("tls", [False, True])
def test_simultaneous_large_exchange_does_not_deadlock(tls, certs):
    # Both sends block on full socket buffers: each side's drain thread reads meanwhile.
    ch0, ch1 = _pair(timeout=20, tls=(TlsConfig(certs, P0), TlsConfig(certs, P1)) if tls else (None, None))
    big = np.arange((8 if not tls else 2) << 20, dtype=np.uint64)  # 64 (16) MiB each way, far above the buffers
    out = {}
    t = threading.Thread(target=lambda: out.setdefault(1, ch1.exchange(P0, big + 1, tag="x")))
    t.start()
    out[0] = ch0.exchange(P1, big, tag="x")
    t.join(30)
    try:
        assert not t.is_alive()
        np.testing.assert_array_equal(out[0], big + 1)
        np.testing.assert_array_equal(out[1], big)
        # Small messages afterwards go through the waiting thread's own reads, in order.
        for i in range(3):
            ch1.send(P0, np.array([i, 2 * i], np.uint64), tag=f"s{i}")
        assert [ch0.recv(P1, tag=f"s{i}").tolist() for i in range(3)] == [[0, 0], [1, 2], [2, 4]]
    finally:
        ch0.close()
        ch1.close()


def test_receives_right_after_large_sends_never_collide_with_the_drain_thread():
    # After a send that needed the drain thread, the sender's own receive may
    # start while the drain thread still waits on the socket: both must be safe.
    ch0, ch1 = _pair(timeout=20)
    big = np.arange(1 << 19, dtype=np.uint64)  # 4 MiB: sends wait for the socket
    errors = []

    def p1():
        try:
            for i in range(30):
                ch1.exchange(P0, big, tag=f"big{i}")
                ch1.exchange(P0, np.array([i], np.uint64), tag=f"small{i}")
        except ChannelError as exc:
            errors.append(exc)

    t = threading.Thread(target=p1)
    t.start()
    try:
        for i in range(30):
            assert ch0.exchange(P1, big, tag=f"big{i}")[-1] == big[-1]
            assert ch0.exchange(P1, np.array([i], np.uint64), tag=f"small{i}").tolist() == [i]
        t.join(30)
        assert not t.is_alive() and not errors, errors
    finally:
        ch0.close()
        ch1.close()


def test_a_reply_that_comes_instead_of_data_is_left_for_the_control_receive():
    # A worker whose op failed replies instead of sending its output: the
    # caller's receive says so and the reply, with the worker's error, is not lost.
    ch0, ch1 = _pair(timeout=5)
    try:
        ch1.send_control(P0, "ctl:result", b"the error")
        with pytest.raises(ChannelError, match="party 1 ended the operation without sending 'output'"):
            ch0.recv(P1, tag="output")
        assert ch0.recv_control(P1, timeout=1) == ("ctl:result", b"the error")
    finally:
        ch0.close()
        ch1.close()


def test_a_receive_that_times_out_loses_nothing():
    ch0, ch1 = _pair(timeout=5)
    try:
        with pytest.raises(PeerTimeout, match="no message from party 1 within 0.05 s"):
            ch0._link(P1).get("late", 0.05)
        ch1.send(P0, np.arange(3, dtype=np.uint64), tag="late")
        assert ch0.recv(P1, tag="late").tolist() == [0, 1, 2]
    finally:
        ch0.close()
        ch1.close()


def test_a_peer_that_stalls_mid_frame_fails_the_receive_within_the_timeout():
    ch0, ch1 = _pair(timeout=0.5)
    raw = ch1._links[P0].stream.sock
    try:
        raw.sendall(b"PSMC")  # the first bytes of a fixed header, then nothing
        start = time.monotonic()
        with pytest.raises(PeerTimeout, match="stopped in the middle of a frame"):
            ch0.recv(P1, tag="x")
        assert time.monotonic() - start < 3
        with pytest.raises(PeerTimeout, match="stopped in the middle of a frame"):
            ch0.recv(P1, tag="x")  # the stream is out of step for good: every later receive fails at once
    finally:
        ch0.close()
        ch1.close()


def test_channel_errors_are_clear():
    ch0, ch1 = _pair(timeout=0.3)
    try:
        with pytest.raises(PeerTimeout, match=r"party 0: no message from party 1 .*'mul'"):
            ch0.recv(P1, tag="mul")
        ch1.send(P0, np.ones(2), tag="trunc")
        with pytest.raises(ChannelError, match=r"expected 'mul' from party 1, got 'trunc'"):
            ch0.recv(P1, tag="mul")
        with pytest.raises(TypeError, match="cannot send"):
            ch1.send(P0, {"not": "an array"}, tag="x")
        with pytest.raises(TypeError, match="dtype"):
            ch1.send(P0, np.array(["a"], dtype=object), tag="x")
        ch1.close()
        with pytest.raises(PeerDisconnected, match=r"party 1 disconnected while we waited for 'mul'"):
            ch0.recv(P1, tag="mul")
    finally:
        ch0.close()
        ch1.close()


def test_oversized_frame_is_refused():
    ch0, ch1 = _pair(max_frame_bytes=1 << 16)
    ch1.max_frame_bytes = 1 << 30  # a sender with a larger limit (it refuses to send over its own)
    try:
        ch1.send(P0, np.zeros(1 << 14, np.uint64), tag="big")  # 128 KiB > 64 KiB limit on P0's side
        with pytest.raises(ChannelError, match=r"exceeds the limit of 65536 bytes"):
            ch0.recv(P1, tag="big")
    finally:
        ch0.close()
        ch1.close()


def test_bad_magic_and_out_of_order_frames_are_refused():
    import struct

    ch0, ch1 = _pair()
    raw = ch1._links[P0].stream.sock  # write bytes of our own choosing on P1's end
    try:
        header = b'{"tag":"x","seq":5,"session":"s","layout":null,"buffers":[]}'
        raw.sendall(struct.pack("!4sHHIQ", MAGIC, 1, 0, len(header), 0) + header)
        with pytest.raises(ChannelError, match=r"out-of-order frame 'x': sequence number 5, expected 1"):
            ch0.recv(P1, tag="x")
    finally:
        ch0.close()
        ch1.close()
    listener = socket.create_server(("127.0.0.1", 0))
    with socket.create_connection(listener.getsockname()[:2]) as garbage:
        garbage.sendall(b"\x16\x03\x01 this is not a pysmpc frame at all")
        sock, _ = listener.accept()
        with pytest.raises(ChannelError, match="bad magic"):
            accept_peer(sock, P0, timeout=2)
    listener.close()


def test_unknown_peer_in_hello_is_refused():
    listener = socket.create_server(("127.0.0.1", 0))
    errors = []

    def accept():
        sock, _ = listener.accept()
        try:
            accept_peer(sock, P0, timeout=2)
        except ChannelError as exc:
            errors.append(exc)

    t = threading.Thread(target=accept)
    t.start()
    with pytest.raises((ChannelError, PeerTimeout)):
        connect_peer(listener.getsockname()[:2], 7, P0, session="s", timeout=2)
    t.join()
    listener.close()
    assert errors and "party 7" in str(errors[0])


# -- wire encoding -------------------------------------------------------------------------------
def test_wire_round_trips_op_arguments():
    arr = np.arange(6, dtype=np.uint64).reshape(2, 3)
    args = (3, "same", None, True, 2.5, (1, 0), [4, 5], np.uint64(1 << 63), np.int64(-3), np.float64(0.25),
            (slice(None, 2), slice(1, None, 2), Ellipsis, 0), {"a": [1, (2,)], 7: None}, arr, b"\x00\xff")
    message = wire.encode_call("getitem", args, {"public": arr.T, "public_left": False})
    # What a frame delivers: bytes and fresh arrays.
    delivered = [message[0]] + [np.array(b) if isinstance(b, np.ndarray) else bytes(b) for b in message[1:]]
    name, got, kwargs = wire.decode_call(delivered)
    assert name == "getitem" and len(got) == len(args)
    for g, a in zip(got, args):
        if isinstance(a, np.ndarray):
            np.testing.assert_array_equal(g, a)
            assert g.dtype == a.dtype
        else:
            assert g == a and type(g) is type(a), (g, a)
    np.testing.assert_array_equal(kwargs["public"], arr.T)
    assert wire.decode_reply(wire.encode_result((3, 4))) == (3, 4)
    with pytest.raises(KeyError, match="no tensor") as info:
        wire.decode_reply(wire.encode_error(1, "add", KeyError("P1: no tensor with id 4")))
    assert info.value.party == 1 and info.value.op == "add"
    with pytest.raises(wire.RemoteError, match="OSError: disk"):
        wire.decode_reply(wire.encode_error(0, "add", OSError("disk")))


@pytest.mark.parametrize("value", [object(), {1.5: 2}, np.array([object()]), np.float16(1), set(), lambda: 0])
def test_wire_refuses_to_encode_unknown_types(value):
    with pytest.raises(wire.WireError):
        wire.encode(value)


@pytest.mark.parametrize("doc", [
    b'{"pickle": "cos\\nsystem\\n"}',
    b'{"np": ["|O", "1"]}',
    b'{"np": ["<u8", "-1"]}',
    b'{"np": ["<u8", 5]}',
    b'{"array": 0}',
    b'{"slice": [1, "a", null]}',
    b'{"list": [1], "tuple": [2]}',
    b'{"dict": [["k"]]}',
    b"not json",
    b"[" * 100 + b"]" * 100,
])
def test_wire_rejects_malformed_messages(doc):
    with pytest.raises(wire.WireError):
        wire.decode([doc])


def test_wire_rejects_non_calls():
    with pytest.raises(wire.WireError):
        wire.decode_call(wire.encode([1, 2]))
    with pytest.raises(wire.WireError):
        wire.decode([wire.encode(1)[0], np.zeros(1)])  # a buffer nobody refers to
    with pytest.raises(wire.WireError):
        wire.decode("a string")
