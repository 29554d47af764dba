"""Secure aggregation (pysmpc.fl): sums, cost, what each party sees, dropouts, TCP, a short federated run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pysmpc import LocalCluster
from pysmpc.fl import FederatedConfig, load_mnist, non_iid_split, run_federated, secure_aggregate
from pysmpc.runtime.tcp import TcpCluster
from pysmpc.sharing.fixedpoint import FixedPoint

MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
SHAPES = [(3, 4), (5,), (2, 2, 2)]
F = 16


def _updates(rng, owners=3, bound=100.0):
    """Test data (numpy.random is fine here)."""
    return [[rng.uniform(-bound, bound, s) for s in SHAPES] for _ in range(owners)]


def _plain_sum(updates):
    present = [u for u in updates if u is not None]
    return [sum(u[k] for u in present) for k in range(len(SHAPES))]


@pytest.fixture(scope="module")
def cluster():
    with LocalCluster() as c:
        yield c


def _elements():
    return sum(int(np.prod(s)) for s in SHAPES)


def test_sum_equals_plaintext_within_fixed_point_error(cluster):
    rng = np.random.default_rng(0)
    updates = _updates(rng)
    total = secure_aggregate(updates, cluster)
    # Each owner's encoding rounds by at most 2^-(F+1); the ring sum is exact.
    bound = len(updates) * 2.0 ** -(F + 1)
    for got, want, shape in zip(total, _plain_sum(updates), SHAPES):
        assert got.shape == shape
        np.testing.assert_allclose(got, want, rtol=0, atol=bound, err_msg=f"shape {shape}")
    mean = secure_aggregate(updates, cluster, mean=True)
    for got, want in zip(mean, _plain_sum(updates)):
        np.testing.assert_allclose(got, want / 3, rtol=0, atol=bound / 3)


def test_cost_per_owner_and_no_traffic_between_parties(cluster):
    rng = np.random.default_rng(1)
    cluster.reset_stats()
    _, rep = secure_aggregate(_updates(rng), cluster, report=True)
    n = _elements()
    assert rep.counted == [0, 1, 2] and rep.dropped == [] and rep.elements == n
    assert rep.bytes_per_owner == {0: 16 * n, 1: 16 * n, 2: 16 * n}, rep
    assert rep.bytes_to_receiver == 16 * n
    assert rep.seconds > 0
    stats = cluster.stats()
    for p in ("P0", "P1"):
        assert stats[p]["input"]["bytes_received"] == 3 * 8 * n, stats[p]
        sent = {tag: s["bytes_sent"] for tag, s in stats[p].items() if s["bytes_sent"]}
        assert sent == {"output": 8 * n}, f"{p} may send only its share of the sum to the receiver: {sent}"
        assert all(s["rounds"] == 0 for tag, s in stats[p].items() if tag != "input"), stats[p]
    assert all(s["bytes_sent"] == 0 and s["bytes_received"] == 0 for s in stats["P2"].values()), stats["P2"]


def test_no_party_view_contains_an_owner_update():
    """Record everything P0, P1, P2 and the receiver get; no single owner's encoded update appears."""
    rng = np.random.default_rng(2)
    fmt = FixedPoint(frac_bits=F)
    # Small integers and zeros: their encodings are easy to spot (top bytes 0x00 / 0xff).
    updates = [[np.round(rng.uniform(-3, 3, s)) for s in SHAPES] for _ in range(3)]
    updates[1] = [np.zeros(s) for s in SHAPES]
    encodings = [np.concatenate([fmt.encode(a).reshape(-1) for a in u]) for u in updates]
    with LocalCluster() as c:
        recorders = {i: c.parties[i].channel.start_recording() for i in (0, 1, 2)}
        receiver = c.client_channel.start_recording()
        total = secure_aggregate(updates, c)
    for got, want in zip(total, _plain_sum(updates)):
        np.testing.assert_allclose(got, want, atol=3 * 2.0**-17)
    words = {}
    for i, rec in recorders.items():
        arrays = [np.asarray(d).reshape(-1) for _frm, _tag, d in rec.messages if isinstance(d, np.ndarray)]
        words[i] = np.concatenate(arrays) if arrays else np.zeros(0, np.uint64)
    assert words[2].size == 0, "P2 must receive nothing"
    for i in (0, 1):
        assert words[i].size == 3 * _elements(), f"P{i} receives one share per owner"
        for k, enc in enumerate(encodings):
            matches = np.isin(words[i], enc).mean()
            assert matches < 0.05, f"P{i}'s view matches owner {k}'s encoding on {matches:.0%} of words"
        top = words[i] >> np.uint64(56)
        near_zero = np.isin(top, [0, 255]).mean()
        assert near_zero < 0.1, f"P{i}'s received words look like small encoded values ({near_zero:.0%})"
    # The receiver gets the two shares of the sum and nothing else: neither equals one owner's update.
    outputs = [np.asarray(d).reshape(-1) for _frm, tag, d in receiver.messages if tag == "output"]
    assert len(outputs) == 2
    for out in outputs:
        for k, enc in enumerate(encodings):
            assert np.isin(out, enc).mean() < 0.05, f"a share of the sum matches owner {k}'s update"


def test_dropped_owners_are_left_out_and_named(cluster):
    rng = np.random.default_rng(3)
    updates = _updates(rng, owners=4)

    def fails():
        raise ConnectionError("owner 3 went offline")

    updates[1] = None
    updates[3] = fails
    total, rep = secure_aggregate(updates, cluster, report=True)
    assert rep.counted == [0, 2] and rep.dropped == [1, 3]
    assert set(rep.bytes_per_owner) == {0, 2}
    for got, want in zip(total, _plain_sum([updates[0], updates[2]])):
        np.testing.assert_allclose(got, want, atol=2 * 2.0**-17)
    mean = secure_aggregate([updates[0], None, lambda: updates[2]], cluster, mean=True)
    for got, want in zip(mean, _plain_sum([updates[0], updates[2]])):
        np.testing.assert_allclose(got, want / 2, atol=2.0**-17)


def test_bad_rounds_raise(cluster):
    rng = np.random.default_rng(4)
    with pytest.raises(ValueError, match="no data owner"):
        secure_aggregate([None, None], cluster)
    with pytest.raises(ValueError, match="at least 2"):
        secure_aggregate([_updates(rng, owners=1)[0], None], cluster, min_owners=2)
    good = _updates(rng, owners=1)[0]
    with pytest.raises(ValueError, match="owner 1 sent arrays of shapes"):
        secure_aggregate([good, good[:2]], cluster)
    with pytest.raises(OverflowError, match="owner 1"):
        secure_aggregate([good, [a * 1e6 for a in good]], cluster)
    # The cluster still works afterwards.
    np.testing.assert_allclose(secure_aggregate([good], cluster)[0], good[0], atol=2.0**-17)


def test_noise_is_added_by_p0_and_p1_independently(cluster):
    """Each of P0 and P1 adds its own N(0, s^2): the revealed sum carries variance 2 s^2."""
    std, n = 0.5, 20000
    shared = cluster.share(np.zeros(n))
    tid = cluster.new_id()
    before = {i: cluster.parties[i].store[("tensor", shared.tid)].value.copy() for i in (0, 1)}
    cluster.call("add_gaussian", tid, shared.tid, std, F)
    noise = {i: (cluster.parties[i].store[("tensor", tid)].value - before[i]).view(np.int64) / 2.0**F
             for i in (0, 1)}
    assert cluster.parties[2].store[("tensor", tid)].value is None
    for i in (0, 1):
        assert abs(noise[i].std() - std) < 0.02 and abs(noise[i].mean()) < 0.02, f"P{i}: {noise[i].std()}"
    assert abs(np.corrcoef(noise[0], noise[1])[0, 1]) < 0.05
    zeros = [np.zeros(n)]
    a = secure_aggregate([zeros, zeros], cluster, noise_std=std)[0]
    b = secure_aggregate([zeros, zeros], cluster, noise_std=std)[0]
    assert abs(a.std() - std * np.sqrt(2)) < 0.03
    assert not np.allclose(a, b), "every round draws fresh noise"
    cluster.call("free", [tid, shared.tid])


@pytest.mark.tcp
def test_tcp_cluster_aggregates_with_dropout():
    rng = np.random.default_rng(5)
    updates = _updates(rng)
    updates[2] = None
    with TcpCluster(ephemeral_ports=True) as c:
        total, rep = secure_aggregate(updates, c, report=True, noise_std=1e-3)
    assert rep.counted == [0, 1] and rep.dropped == [2]
    assert rep.bytes_per_owner == {0: 16 * _elements(), 1: 16 * _elements()}
    for got, want in zip(total, _plain_sum(updates)):
        np.testing.assert_allclose(got, want, atol=0.02)


def test_non_iid_split_is_skewed_and_complete():
    rng = np.random.default_rng(6)
    labels = np.repeat(np.arange(10), 100)
    parts = non_iid_split(labels, 3, rng, skew=0.8)
    assert sorted(np.concatenate(parts).tolist()) == list(range(1000))
    for k, classes in enumerate(([0, 1, 2, 3], [4, 5, 6], [7, 8, 9])):
        counts = np.bincount(labels[parts[k]], minlength=10)
        others = [c for c in range(10) if c not in classes]
        assert np.all(counts[classes] == 80) and np.all(counts[others] == 10), (k, counts)


@pytest.fixture(scope="module")
def mnist():
    if not MNIST.is_dir():
        pytest.skip(f"MNIST IDX files not found at {MNIST}")
    return load_mnist(MNIST), load_mnist(MNIST, "test")


def test_short_federated_run_learns(cluster, mnist):
    """3 owners, non-IID, 6,000 training images, 3 rounds of FedAvg: >= 85% on 2,000 test images."""
    train, test = mnist
    cfg = FederatedConfig(owners=3, rounds=3, train_subset=6000, test_subset=2000, local_epochs=1,
                          progress=False, seed=0)
    lines = []
    result = run_federated(cluster, cfg, train, test, log=lines.append)
    assert len(result.accuracies) == 3 and len(lines) == 4
    assert result.accuracy >= 0.85, lines
    assert all(c == [0, 1, 2] for c in result.counted)


def test_fl_demo_command(mnist, capsys):
    from pysmpc.cli import main

    code = main(["fl-demo", "--owners", "3", "--rounds", "1", "--data", str(MNIST), "--train-subset", "1500",
                 "--test-subset", "500", "--no-progress", "--dropout", "0.5", "--seed", "1"])
    out = capsys.readouterr().out.strip().splitlines()
    assert code == 0
    assert out[-1].startswith("accuracy: ") and 0.0 < float(out[-1].split()[1]) <= 1.0, out
    round_line = next(line for line in out if line.startswith("round 1/1: test accuracy"))
    assert "owners counted [" in round_line and "kB per owner" in round_line, round_line
