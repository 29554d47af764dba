"""Run protocols on three in-process parties with fixed seeds, and check cost."""

from __future__ import annotations

import numpy as np
from conftest import fixed_seeds

from pysmpc.parties.channel import is_offline_tag
from pysmpc.runtime.local import run_parties
from pysmpc.sharing.fixedpoint import FixedPoint
from pysmpc.sharing.prg import PRG
from pysmpc.sharing.shares import AShare, BShare, share

FP = FixedPoint(frac_bits=16, int_bits=15)
MASK64 = (1 << 64) - 1


def run_shared(program, *plain_rings, record=False, label="pysmpc-tests"):
    """Share uint64 inputs to P0/P1, run `program(party, *shares)`, reconstruct.

    Returns (output, parties): output is the reconstructed uint64 array
    (XOR-reconstructed packed words for BShare outputs).
    """
    prg = PRG(bytes(16))
    pairs = [share(np.ascontiguousarray(v, dtype=np.uint64), prg) for v in plain_rings]

    def prog(party):
        if party.is_dealer:
            xs = [AShare(None, party.index, v.shape) for v in plain_rings]
        else:
            xs = [AShare(pair[party.index], party.index) for pair in pairs]
        return program(party, *xs)

    results, parties = run_parties(prog, seeds=fixed_seeds(label), record=record)
    return reconstruct_result(results), parties


def reconstruct_result(results):
    r0, r1, r2 = results
    if isinstance(r0, AShare):
        assert r2 is None or r2.value is None, "the dealer must hold no share"
        return r0.value + r1.value
    if isinstance(r0, BShare):
        return r0.words ^ r1.words
    if isinstance(r0, (list, tuple)):
        return [reconstruct_result(list(t)) for t in zip(r0, r1, r2)]
    return r0


def online(party) -> tuple[int, int, int]:
    """(rounds, bytes sent, bytes received) of a party's online traffic."""
    t = party.channel.totals(online=True)
    return t.rounds, t.bytes_sent, t.bytes_received


def assert_cost(parties, cost, context=""):
    """P0 and P1 match the Cost; P2 sends cost.dealer_bytes and receives nothing."""
    p0, p1, p2 = parties
    for p in (p0, p1):
        rounds, sent, received = online(p)
        assert (rounds, sent, received) == (cost.rounds, cost.bytes_sent, cost.bytes_sent), (
            f"{p.name} {context}: measured rounds={rounds} sent={sent} received={received}, formula {cost}"
        )
    dealer = p2.channel.totals()
    assert dealer.bytes_received == 0, f"P2 received {dealer.bytes_received} bytes {context}"
    assert dealer.bytes_sent == cost.dealer_bytes, f"P2 sent {dealer.bytes_sent}, formula {cost} {context}"
    assert all(is_offline_tag(t) for t in p2.channel.stats()), "P2 may only send dealer material"


def signed(ring: np.ndarray) -> np.ndarray:
    return ring.view(np.int64)


def random_fixed(shape, bound, rng) -> np.ndarray:
    """Random reals in (-bound, bound) (test data only: numpy.random is fine here)."""
    return rng.uniform(-bound, bound, size=shape)


def socket_channel_pair(timeout: float = 2.0, p0: dict | None = None, p1: dict | None = None, tls=(None, None)):
    """P0 and P1 SocketChannels over one loopback connection, each built with its own keyword arguments.

    tls: (P0's TlsConfig, P1's TlsConfig) for a TLS connection.
    """
    import socket
    import threading

    from pysmpc.parties.party import P0, P1
    from pysmpc.parties.socket import SocketChannel, accept_peer, connect_peer, reply_hello

    listener = socket.create_server(("127.0.0.1", 0))
    accepted = {}

    def accept():
        sock, _ = listener.accept()
        _, hello, stream = accept_peer(sock, P0, tls=tls[0])
        reply_hello(stream, P0, hello["session"])
        accepted["stream"] = stream

    thread = threading.Thread(target=accept)
    thread.start()
    stream1 = connect_peer(listener.getsockname()[:2], P1, P0, session="s", timeout=5, tls=tls[1])
    thread.join()
    listener.close()
    ch0 = SocketChannel(P0, timeout, session="s", **(p0 or {}))
    ch1 = SocketChannel(P1, timeout, session="s", **(p1 or {}))
    ch0.attach(P1, accepted["stream"])
    ch1.attach(P0, stream1)
    return ch0, ch1


def in_forked_children(draw, children: int = 2) -> list[bytes]:
    """Run draw() -> bytes in `children` processes forked from this one; what each returned, through a pipe."""
    import os

    results = []
    for _ in range(children):
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: draw, report, exit without running the parent's cleanup
            code = 1
            try:
                os.close(read_end)
                with os.fdopen(write_end, "wb") as out:
                    out.write(draw())
                code = 0
            finally:
                os._exit(code)
        os.close(write_end)
        with os.fdopen(read_end, "rb") as got:
            results.append(got.read())
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, "the forked child failed"
    return results
