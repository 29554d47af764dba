"""Attacks on secure aggregation: a curious aggregator bending the rules, owners that lie to some workers.

Each test is an attack that must fail: the workers hold the rules fixed
when a round or DP series opens, and the aggregator (whoever asks for the
sum) cannot change them, reveal one owner's update, reveal twice, or skip
the noise.
"""

from __future__ import annotations

import secrets
import shutil

import numpy as np
import pytest

from pysmpc import LocalCluster
from pysmpc.fl import Aggregator, Owner, SubmissionError
from pysmpc.fl.aggregate import RoundRefused
from pysmpc.parties.channel import ChannelError
from pysmpc.parties.party import CLIENT, P0, P1
from pysmpc.parties.socket import SocketChannel, connect_peer
from pysmpc.parties.streams import TlsConfig
from pysmpc.runtime.tcp import TcpCluster
from pysmpc.sharing.fixedpoint import FixedPoint
from pysmpc.sharing.prg import PRG, new_seed
from pysmpc.sharing.shares import share

SHAPES = [(4,), (2, 3)]
N = 10
F = 16


@pytest.fixture
def cluster():
    with LocalCluster() as c:
        yield c


def _update(value: float):
    return [np.full(s, value) for s in SHAPES]


def _outputs(cluster) -> int:
    return cluster.client_channel.stats().get("output").messages_received if "output" in \
        cluster.client_channel.stats() else 0


def test_the_workers_refuse_rounds_of_fewer_than_two_owners(cluster):
    aggregator = Aggregator(cluster)
    for bad in (1, 0, -1, True, 1.5):
        with pytest.raises(ValueError, match="min_owners"):
            aggregator.open_round(SHAPES, min_owners=bad)
    # Past the Aggregator's own check: a raw call to the workers is refused there too.
    for bad in (1, 0, True):
        results, _ = cluster.call("fl_open_round", f"raw-{secrets.token_hex(4)}", [[4], [2, 3]], F, bad, None)
        assert "min_owners" in results[P0]["refused"] and "min_owners" in results[P1]["refused"]


def test_a_round_with_one_owner_reveals_nothing_and_stays_open(cluster):
    aggregator = Aggregator(cluster)
    round_id = aggregator.open_round(SHAPES)
    Owner(cluster, "alice").submit(round_id, _update(3.0))
    with pytest.raises(RoundRefused, match="needs at least 2"):
        aggregator.reveal(round_id)
    # Asking the workers directly for the sum of a round that was not closed: refused, nothing sent.
    results, _ = cluster.call("fl_send_sum", round_id)
    assert "not closed" in results[P0]["refused"]
    assert _outputs(cluster) == 0, "nothing may reach the aggregator from a refused round"
    # The round takes a second owner afterwards and then reveals their sum.
    Owner(cluster, "bob").submit(round_id, _update(4.0))
    aggregator._shapes[round_id] = [list(s) for s in SHAPES]
    result = aggregator.reveal(round_id)
    assert result.counted == ["alice", "bob"]
    np.testing.assert_allclose(result.total[0], 7.0)


def test_a_round_is_revealed_once_and_its_id_never_reused(cluster):
    aggregator = Aggregator(cluster)
    round_id = aggregator.open_round(SHAPES)
    for name in ("alice", "bob"):
        Owner(cluster, name).submit(round_id, _update(1.0))
    aggregator.reveal(round_id)
    for op, args in (("fl_close", (round_id, None, 0.0)), ("fl_send_sum", (round_id,))):
        results, _ = cluster.call(op, *args)
        assert "revealed already" in results[P0]["refused"], (op, results)
    with pytest.raises(RoundRefused, match="used already"):
        aggregator.open_round(SHAPES, round_id=round_id)
    with pytest.raises(SubmissionError, match="revealed already"):
        Owner(cluster, "carol").submit(round_id, _update(1.0))


def test_an_owner_counts_once_per_round(cluster):
    aggregator = Aggregator(cluster)
    round_id = aggregator.open_round(SHAPES)
    alice = Owner(cluster, "alice")
    alice.submit(round_id, _update(2.0))
    with pytest.raises(SubmissionError, match="once per round"):
        alice.submit(round_id, _update(2.0))
    with pytest.raises(SubmissionError, match="once per round"):  # another object with the same name
        Owner(cluster, "alice").submit(round_id, _update(5.0))
    Owner(cluster, "bob").submit(round_id, _update(1.0))
    result = aggregator.reveal(round_id)
    assert result.counted == ["alice", "bob"]
    np.testing.assert_allclose(result.total[1], 3.0, atol=2.0**-15)


def test_per_owner_shares_are_out_of_reach_of_every_op(cluster):
    """No op can reveal or open an owner's share: they are not tensors the aggregator can name."""
    from pysmpc.runtime.ops import OPS

    aggregator = Aggregator(cluster)
    round_id = aggregator.open_round(SHAPES)
    for name in ("alice", "bob"):
        Owner(cluster, name).submit(round_id, _update(1.5))
    for i in (P0, P1):
        book = cluster.parties[i].store["fl_book"]
        held = list(book._rounds[round_id].shares.values())
        tensors = [v.value for k, v in cluster.parties[i].store.items() if isinstance(k, tuple) and k[0] == "tensor"]
        for share_ in held:
            assert not any(t is not None and t.shape == share_.shape and np.array_equal(t, share_) for t in tensors)
    # The only ops that read a round's shares are fl_close (sum of at least min_owners) and fl_send_sum.
    assert sorted(op for op in OPS if op.startswith("fl_")) == [
        "fl_close", "fl_open_round", "fl_open_series", "fl_send_sum", "fl_series"]


def _raw_owner_channel(hosts, name, round_id, parties, tls=None):
    """A hand-made owner that connects to some of P0, P1 (as an attacker would); returns (channel, rules)."""
    session = secrets.token_hex(8)
    channel = SocketChannel(CLIENT, 5.0, session=session)
    rules = {}
    for i in parties:
        reply = {}
        stream = connect_peer(hosts[i], CLIENT, i, session=session, tls=tls, timeout=10.0,
                              extra={"submit": {"round": round_id, "owner": name}}, reply=reply)
        channel.attach(i, stream)
        rules[i] = reply.get("rules")
    return channel, rules


@pytest.mark.tcp
def test_owners_that_lie_to_some_workers_are_not_counted():
    """An owner that sends to P0 only, one that sends P1 garbage, one that vanishes: the honest sum is exact."""
    fmt = FixedPoint(frac_bits=F)
    with TcpCluster(ephemeral_ports=True) as c:
        aggregator = Aggregator(c)
        round_id = aggregator.open_round(SHAPES)
        Owner(c.hosts, "alice").submit(round_id, _update(1.25))
        Owner(c.hosts, "bob").submit(round_id, _update(-0.5))
        prg = PRG(new_seed())
        s0, s1 = share(fmt.encode(np.full(N, 1000.0)), prg)
        # mallory: a share to P0 only, then gone.
        channel, rules = _raw_owner_channel(c.hosts, "mallory", round_id, [P0])
        assert rules[P0]["shapes"] == [list(s) for s in SHAPES]
        channel.send(P0, s0, tag="fl:share")
        assert channel.recv_control(P0, timeout=10)[0] == "fl:ok"
        channel.close()
        # trudy: a good share to P0, a share of the wrong size to P1.
        channel, _ = _raw_owner_channel(c.hosts, "trudy", round_id, [P0, P1])
        channel.send(P0, s0, tag="fl:share")
        channel.send(P1, np.zeros(N + 1, np.uint64), tag="fl:share")
        assert channel.recv_control(P0, timeout=10)[0] == "fl:ok"
        tag, why = channel.recv_control(P1, timeout=10)
        assert tag == "fl:error" and b"shape" in bytes(why)
        channel.close()
        # oscar: connects to both, sends nothing, vanishes.
        channel, _ = _raw_owner_channel(c.hosts, "oscar", round_id, [P0, P1])
        channel.close()
        result = aggregator.reveal(round_id)
        assert result.counted == ["alice", "bob"]
        np.testing.assert_allclose(result.total[0], 0.75, atol=2.0**-16)
        # The cluster is still fine for the next round.
        round_2 = aggregator.open_round(SHAPES)
        for name in ("alice", "bob"):
            Owner(c.hosts, name).submit(round_2, _update(1.0))
        np.testing.assert_allclose(aggregator.reveal(round_2).total[1], 2.0, atol=2.0**-16)


@pytest.mark.tcp
def test_with_tls_an_owner_is_its_certificate(tmp_path):
    """The aggregator's client certificate cannot submit; an owner's certificate cannot pass for another owner."""
    from pysmpc.runtime.certs import make_cluster_certs

    make_cluster_certs(tmp_path, owners=["alice", "bob"])
    forged = tmp_path / "forged"
    forged.mkdir()
    shutil.copy(tmp_path / "ca.pem", forged / "ca.pem")
    for ext in ("pem", "key"):
        shutil.copy(tmp_path / f"owner-alice.{ext}", forged / f"owner-carol.{ext}")  # alice's cert, named carol
        shutil.copy(tmp_path / f"client.{ext}", forged / f"owner-dave.{ext}")  # the aggregator's cert as an owner
    with TcpCluster(ephemeral_ports=True, tls_dir=tmp_path) as c:
        aggregator = Aggregator(c)
        round_id = aggregator.open_round(SHAPES)
        for name in ("carol", "dave"):
            with pytest.raises(SubmissionError, match="certificate"):
                Owner(c.hosts, name, tls_dir=forged).submit(round_id, _update(9.0))
        # The aggregator's own endpoint (client certificate) submitting as alice: refused.
        with pytest.raises(ChannelError, match="certificate"):
            _raw_owner_channel(c.hosts, "alice", round_id, [P0], tls=TlsConfig(tmp_path, CLIENT))
        for name in ("alice", "bob"):
            Owner(c.hosts, name, tls_dir=tmp_path).submit(round_id, _update(2.0))
        result = aggregator.reveal(round_id)
    assert result.counted == ["alice", "bob"]
    np.testing.assert_allclose(result.total[0], 4.0, atol=2.0**-16)


# -- DP: noise and budget the workers decide --------------------------------------------------------
@pytest.fixture
def dp_cluster(cluster):
    pytest.importorskip("dp_accounting", reason="DP needs pysmpc[dp]")
    return cluster


def test_each_worker_adds_its_own_noise_and_the_aggregator_cannot_skip_it(dp_cluster):
    aggregator = Aggregator(dp_cluster)
    sigma, clip, n = 0.5, 2.0, 20000
    series = aggregator.open_dp_series(noise_multiplier=sigma, clip_norm=clip, sample_rate=0.01, epsilon=50.0,
                                       delta=1e-5)
    totals = []
    for _ in range(2):
        round_id = aggregator.open_round([(n,)], series=series)
        for name in ("alice", "bob"):
            Owner(dp_cluster, name).submit(round_id, [np.zeros(n)])
        result = aggregator.reveal(round_id)
        assert result.noise_std == pytest.approx(sigma * clip)
        totals.append(result.total[0])
    for total in totals:  # e0 + e1, each N(0, (sigma C)^2)
        assert abs(total.std() - np.sqrt(2) * sigma * clip) < 0.03, total.std()
    assert not np.allclose(totals[0], totals[1]), "every round draws fresh noise"


def test_the_budget_is_fixed_on_the_workers_and_cannot_be_reset(dp_cluster):
    from pysmpc.fl import dp_epsilon

    aggregator = Aggregator(dp_cluster)
    params = dict(noise_multiplier=1.0, clip_norm=1.0, sample_rate=0.05, delta=1e-5)
    budget = dp_epsilon(1.0, 0.05, 3, 1e-5) + 1e-6  # room for exactly three rounds
    series = aggregator.open_dp_series(epsilon=budget, series_id="s-1", **params)
    spent = []
    for step in range(4):
        round_id = aggregator.open_round(SHAPES, series=series)
        for name in ("alice", "bob"):
            Owner(dp_cluster, name).submit(round_id, _update(0.0))
        if step < 3:
            spent.append(aggregator.reveal(round_id).epsilon)
        else:
            with pytest.raises(RoundRefused, match="budget"):
                aggregator.reveal(round_id)
    assert spent == sorted(spent) and spent[-1] <= budget
    assert spent[-1] == pytest.approx(dp_epsilon(1.0, 0.05, 3, 1e-5))
    # Reopening the series (to reset its accountant) is refused; its state is the workers'.
    with pytest.raises(RoundRefused, match="used already"):
        aggregator.open_dp_series(epsilon=100.0, series_id="s-1", **params)
    state = aggregator.series("s-1")
    assert state["steps"] == 3 and state["epsilon_spent"] == pytest.approx(spent[-1])


def test_an_owner_that_requires_dp_sends_nothing_to_a_round_without_it(dp_cluster):
    aggregator = Aggregator(dp_cluster)
    round_id = aggregator.open_round(SHAPES)
    cautious = Owner(dp_cluster, "alice", require_dp={"noise_multiplier": 0.8})
    with pytest.raises(SubmissionError, match="no DP noise"):
        cautious.submit(round_id, _update(1.0))
    series = aggregator.open_dp_series(noise_multiplier=0.5, clip_norm=1.0, sample_rate=0.01, epsilon=10.0,
                                       delta=1e-5)
    weak = aggregator.open_round(SHAPES, series=series)
    with pytest.raises(SubmissionError, match="noise_multiplier 0.5"):
        cautious.submit(weak, _update(1.0))
    for rid in (round_id, weak):
        for i in (P0, P1):
            assert not dp_cluster.parties[i].store["fl_book"]._rounds[rid].shares, "nothing may have been sent"


@pytest.mark.tcp
def test_garbage_submissions_are_refused_and_the_workers_go_on():
    with TcpCluster(ephemeral_ports=True) as c:
        aggregator = Aggregator(c)
        round_id = aggregator.open_round(SHAPES)
        for submit in ({"round": [1, 2], "owner": "eve"}, {"round": round_id, "owner": 123},
                       {"round": round_id, "owner": "x" * 200}, "not an object", {"round": round_id}):
            session = secrets.token_hex(8)
            with pytest.raises(ChannelError, match="refused"):
                connect_peer(c.hosts[P0], CLIENT, P0, session=session, timeout=10.0, extra={"submit": submit})
        # P2 holds no shares: an owner that submits there is refused.
        with pytest.raises(ChannelError, match="P0 and P1 only"):
            connect_peer(c.hosts[2], CLIENT, 2, session="s", timeout=10.0,
                         extra={"submit": {"round": round_id, "owner": "eve"}})
        for name in ("alice", "bob"):
            Owner(c.hosts, name).submit(round_id, _update(0.5))
        np.testing.assert_allclose(aggregator.reveal(round_id).total[0], 1.0, atol=2.0**-16)


def test_an_owner_made_before_a_fork_shares_differently_in_each_child():
    """Two forked children of one owner must not send the same mask (it would cancel out between them)."""
    from helpers import in_forked_children

    owner = Owner("localhost:4000,localhost:4001,localhost:4002", "alice")  # no connection made yet
    rules = {"frac_bits": F}

    def draw():
        share_0, _ = owner._shares(rules, _update(1.0))
        return share_0.tobytes()

    first, second = in_forked_children(draw)
    assert first != second, "two forked children of one owner drew the same share"
