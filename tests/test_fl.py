"""Secure aggregation (pysmpc.fl): sums, cost, what each party sees, dropouts, TCP, a short federated run.

The attacks on the aggregation's rules (a curious aggregator, lying
owners) are in tests/test_fl_attacks.py.
"""

from __future__ import annotations

import gc
import multiprocessing
from pathlib import Path

import numpy as np
import pytest

from pysmpc import LocalCluster
from pysmpc.fl import Aggregator, FederatedConfig, Owner, load_mnist, non_iid_split, run_federated
from pysmpc.parties.party import P0, P1
from pysmpc.runtime.rounds import RoundBook
from pysmpc.runtime.tcp import TcpCluster
from pysmpc.sharing.fixedpoint import FixedPoint

MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
SHAPES = [(3, 4), (5,), (2, 2, 2)]
F = 16


def _updates(rng, owners=3, bound=100.0):
    """Test data (numpy.random is fine here)."""
    return [[rng.uniform(-bound, bound, s) for s in SHAPES] for _ in range(owners)]


def _plain_sum(updates):
    return [sum(u[k] for u in updates) for k in range(len(SHAPES))]


def _elements():
    return sum(int(np.prod(s)) for s in SHAPES)


@pytest.fixture(scope="module")
def cluster():
    with LocalCluster() as c:
        yield c


def _round(cluster, updates, names=None, **reveal):
    aggregator = Aggregator(cluster)
    round_id = aggregator.open_round(SHAPES)
    names = names or [f"owner-{k}" for k in range(len(updates))]
    for name, update in zip(names, updates):
        Owner(cluster, name).submit(round_id, update)
    return aggregator.reveal(round_id, **reveal)


def test_sum_equals_plaintext_within_fixed_point_error(cluster):
    rng = np.random.default_rng(0)
    updates = _updates(rng)
    result = _round(cluster, updates)
    # Each owner's encoding rounds by at most 2^-(F+1); the ring sum is exact.
    bound = len(updates) * 2.0 ** -(F + 1)
    assert result.counted == ["owner-0", "owner-1", "owner-2"] and result.epsilon is None
    for got, want, shape in zip(result.total, _plain_sum(updates), SHAPES):
        assert got.shape == shape
        np.testing.assert_allclose(got, want, rtol=0, atol=bound, err_msg=f"shape {shape}")
    mean = _round(cluster, updates, mean=True)
    for got, want in zip(mean.total, _plain_sum(updates)):
        np.testing.assert_allclose(got, want / 3, rtol=0, atol=bound / 3)


def test_cost_per_owner_and_between_parties(cluster):
    rng = np.random.default_rng(1)
    cluster.reset_stats()
    result = _round(cluster, _updates(rng))
    n = _elements()
    assert result.elements == n
    assert result.bytes_per_owner == {f"owner-{k}": 8 * n for k in range(3)}, "8 bytes per element to each worker"
    assert result.bytes_to_receiver == 16 * n
    stats = cluster.stats()
    names = len(b'["owner-0", "owner-1", "owner-2"]')  # json.dumps of the sorted names
    for p in ("P0", "P1"):
        sent = {tag: s["bytes_sent"] for tag, s in stats[p].items() if s["bytes_sent"]}
        # P0 and P1 tell each other whose shares they hold (names only, 1 round) and send the sum's share.
        assert sent == {"fl:owners": names, "output": 8 * n}, f"{p}: {sent}"
        assert stats[p]["fl:owners"]["rounds"] == 1
    assert all(s["bytes_sent"] == 0 and s["bytes_received"] == 0 for s in stats["P2"].values()), stats["P2"]


def test_no_party_view_contains_an_owner_update(monkeypatch):
    """Record everything P0, P1, P2 and the aggregator get; no single owner's encoded update appears."""
    rng = np.random.default_rng(2)
    fmt = FixedPoint(frac_bits=F)
    # Small integers and zeros: their encodings are easy to spot (top bytes 0x00 / 0xff).
    updates = [[np.round(rng.uniform(-3, 3, s)) for s in SHAPES] for _ in range(3)]
    updates[1] = [np.zeros(s) for s in SHAPES]
    encodings = [np.concatenate([fmt.encode(a).reshape(-1) for a in u]) for u in updates]
    from_owners = {P0: [], P1: []}
    submit = RoundBook.submit

    def spy(book, round_id, owner, share):  # what each worker receives from the owners
        from_owners[book.party_index].append(share.copy())
        return submit(book, round_id, owner, share)

    monkeypatch.setattr(RoundBook, "submit", spy)
    with LocalCluster() as c:
        recorders = {i: c.parties[i].channel.start_recording() for i in (0, 1, 2)}
        receiver = c.client_channel.start_recording()
        result = _round(c, updates)
    for got, want in zip(result.total, _plain_sum(updates)):
        np.testing.assert_allclose(got, want, atol=3 * 2.0**-17)
    assert not recorders[2].messages, "P2 must receive nothing"
    for i in (P0, P1):
        words = np.concatenate(from_owners[i] + [np.asarray(d).reshape(-1) for _f, _t, d in recorders[i].messages
                                                 if isinstance(d, np.ndarray)])
        assert words.size == 3 * _elements(), f"P{i} receives one share per owner"
        for k, enc in enumerate(encodings):
            matches = np.isin(words, enc).mean()
            assert matches < 0.05, f"P{i}'s view matches owner {k}'s encoding on {matches:.0%} of words"
        near_zero = np.isin(words >> np.uint64(56), [0, 255]).mean()
        assert near_zero < 0.1, f"P{i}'s received words look like small encoded values ({near_zero:.0%})"
    # The aggregator gets the two shares of the sum and nothing else: neither equals one owner's update.
    outputs = [np.asarray(d).reshape(-1) for _frm, tag, d in receiver.messages]
    assert [tag for _f, tag, _d in receiver.messages] == ["output", "output"]
    for out in outputs:
        for k, enc in enumerate(encodings):
            assert np.isin(out, enc).mean() < 0.05, f"a share of the sum matches owner {k}'s update"


def _reachable_arrays(root, stop_types) -> list:
    """Every numpy array reachable from `root` through references, not entering objects of `stop_types`."""
    seen, arrays, todo = set(), [], [root]
    while todo:
        obj = todo.pop()
        if id(obj) in seen or isinstance(obj, stop_types) or isinstance(obj, type):
            continue
        seen.add(id(obj))
        if isinstance(obj, np.ndarray):
            arrays.append(obj)
            continue
        todo.extend(gc.get_referents(obj))
    return arrays


def test_aggregator_object_never_holds_an_update():
    """In one process too: nothing reachable from the aggregator (short of the workers) is an owner's update.

    The walk starts at the Aggregator, goes through the cluster and its
    client channel, and stops at the parties and their network: the
    workers' side, which in a deployment is other machines.
    """
    from pysmpc.parties.local import LocalNetwork
    from pysmpc.parties.party import Party

    rng = np.random.default_rng(7)
    fmt = FixedPoint(frac_bits=F)
    updates = [[np.round(rng.uniform(-3, 3, s)) + 0.25 for s in SHAPES] for _ in range(3)]
    encodings = [np.concatenate([fmt.encode(a).reshape(-1) for a in u]) for u in updates]
    with LocalCluster() as c:
        aggregator = Aggregator(c)
        round_id = aggregator.open_round(SHAPES)
        owners = [Owner(c, f"owner-{k}") for k in range(3)]
        shares = {P0: [], P1: []}
        for owner, update in zip(owners, updates):
            receipt = owner.submit(round_id, update)
            assert receipt.bytes_sent == {P0: 8 * _elements(), P1: 8 * _elements()}
        for i in (P0, P1):
            shares[i] = [s.copy() for s in c.parties[i].store["fl_book"]._rounds[round_id].shares.values()]
        held = _reachable_arrays(aggregator, (Party, LocalNetwork, RoundBook, Owner))
        result = aggregator.reveal(round_id)
        held += _reachable_arrays(aggregator, (Party, LocalNetwork, RoundBook, Owner)) + _reachable_arrays(
            result, (Party, LocalNetwork, RoundBook, Owner))
    secrets_ = [*encodings, *shares[P0], *shares[P1]]
    floats = [np.concatenate([a.reshape(-1) for a in u]) for u in updates]
    for array in held:
        flat = np.asarray(array).reshape(-1)
        if flat.dtype == np.uint64 and flat.size:
            for s in secrets_:
                assert np.isin(flat, s).mean() < 0.05, "the aggregator holds an owner's encoded update or share"
        if flat.dtype.kind == "f" and flat.size >= 4:
            for f in floats:
                assert np.isin(flat, f).mean() < 0.5, "the aggregator holds an owner's update"


def test_dropped_owners_are_left_out_and_named(cluster):
    """An owner that never submits (it went offline) is not counted; the round completes with the others."""
    rng = np.random.default_rng(3)
    updates = _updates(rng, owners=4)
    aggregator = Aggregator(cluster)
    round_id = aggregator.open_round(SHAPES, min_owners=2)
    for k in (0, 2):
        Owner(cluster, f"owner-{k}").submit(round_id, updates[k])
    result = aggregator.reveal(round_id, expect=4, wait=0.2)  # owners 1 and 3 never come
    assert result.counted == ["owner-0", "owner-2"]
    for got, want in zip(result.total, _plain_sum([updates[0], updates[2]])):
        np.testing.assert_allclose(got, want, atol=2 * 2.0**-17)


def test_bad_updates_raise_at_the_owner(cluster):
    from pysmpc.fl import SubmissionError

    rng = np.random.default_rng(4)
    good = _updates(rng, owners=1)[0]
    aggregator = Aggregator(cluster)
    round_id = aggregator.open_round(SHAPES)
    owner = Owner(cluster, "owner-0")
    with pytest.raises(SubmissionError, match="takes arrays of shapes"):
        owner.submit(round_id, good[:2])
    with pytest.raises(OverflowError, match="owner owner-0"):
        owner.submit(round_id, [a * 1e6 for a in good])
    with pytest.raises(ValueError, match="NaN"):
        owner.submit(round_id, [a * np.nan for a in good])
    with pytest.raises(SubmissionError, match="not open"):
        owner.submit("round-that-does-not-exist", good)
    # Nothing of those counted; the round still works.
    owner.submit(round_id, good)
    Owner(cluster, "owner-1").submit(round_id, good)
    result = aggregator.reveal(round_id)
    np.testing.assert_allclose(result.total[0], 2 * good[0], atol=2.0**-16)


def _owner_process(hosts, name, round_id, update, out):
    """A data owner in its own process: its own PRG, its own connections to P0 and P1."""
    try:
        receipt = Owner(hosts, name).submit(round_id, update)
        out.put((name, sum(receipt.bytes_sent.values())))
    except Exception as exc:  # noqa: BLE001 - reported to the test
        out.put((name, repr(exc)))


@pytest.mark.tcp
def test_tcp_owners_in_their_own_processes_and_the_aggregator_sees_only_the_sum():
    rng = np.random.default_rng(5)
    updates = _updates(rng)
    fmt = FixedPoint(frac_bits=F)
    encodings = [np.concatenate([fmt.encode(a).reshape(-1) for a in u]) for u in updates]
    context = multiprocessing.get_context("spawn")
    with TcpCluster(ephemeral_ports=True) as c:
        receiver = c.client_channel.start_recording()
        aggregator = Aggregator(c)
        round_id = aggregator.open_round(SHAPES)
        out = context.Queue()
        procs = [context.Process(target=_owner_process, args=(c.hosts, f"owner-{k}", round_id, updates[k], out))
                 for k in range(2)]  # owner 2 drops out: it never starts
        for p in procs:
            p.start()
        replies = dict(out.get(timeout=60) for _ in procs)
        for p in procs:
            p.join(timeout=30)
        assert replies == {"owner-0": 16 * _elements(), "owner-1": 16 * _elements()}, replies
        result = aggregator.reveal(round_id)
    assert result.counted == ["owner-0", "owner-1"]
    assert result.bytes_per_owner == {"owner-0": 8 * _elements(), "owner-1": 8 * _elements()}
    for got, want in zip(result.total, _plain_sum(updates[:2])):
        np.testing.assert_allclose(got, want, atol=2 * 2.0**-17)
    # The aggregator's endpoint received the two shares of the sum, and nothing of one owner.
    assert [tag for _f, tag, _d in receiver.messages] == ["output", "output"]
    for _f, _t, data in receiver.messages:
        for enc in encodings:
            assert np.isin(np.asarray(data).reshape(-1), enc).mean() < 0.05


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
    """3 owners, non-IID, 6,000 training images, 3 rounds of FedAvg: >= 80% on 2,000 test images."""
    train, test = mnist
    cfg = FederatedConfig(owners=3, rounds=3, train_subset=6000, test_subset=2000, local_epochs=1,
                          progress=False, seed=0)
    lines = []
    result = run_federated(cluster, cfg, train, test, log=lines.append)
    assert len(result.accuracies) == 3 and len(lines) == 4
    assert result.accuracy >= 0.80, lines
    assert all(c == ["hospital-0", "hospital-1", "hospital-2"] for c in result.counted)


def test_federated_needs_two_owners(cluster, mnist):
    with pytest.raises(ValueError, match="at least 2 data owners"):
        run_federated(cluster, FederatedConfig(owners=1, progress=False), *mnist)


def test_fl_demo_command_in_process(mnist, capsys):
    from pysmpc.cli import main

    code = main(["fl-demo", "--in-process", "--owners", "3", "--rounds", "1", "--data", str(MNIST),
                 "--train-subset", "1500", "--test-subset", "500", "--no-progress", "--dropout", "0.5", "--seed", "1"])
    out = capsys.readouterr().out.strip().splitlines()
    assert code == 0
    assert out[-1].startswith("accuracy: ") and 0.0 < float(out[-1].split()[1]) <= 1.0, out
    round_line = next(line for line in out if line.startswith("round 1/1: test accuracy"))
    assert "owners counted [" in round_line and "kB per owner" in round_line, round_line


@pytest.mark.tcp
def test_fl_demo_command_runs_owners_as_processes_over_tcp(mnist, capsys):
    from pysmpc.cli import main

    code = main(["fl-demo", "--owners", "3", "--rounds", "1", "--data", str(MNIST), "--train-subset", "1500",
                 "--test-subset", "500", "--no-progress", "--hosts", "127.0.0.1:0,127.0.0.1:0,127.0.0.1:0"])
    out = capsys.readouterr().out.strip().splitlines()
    assert code == 0, out
    assert "own processes, over TCP" in "\n".join(out)
    assert "owners counted ['hospital-0', 'hospital-1', 'hospital-2']" in "\n".join(out)
    assert out[-1].startswith("accuracy: ")
