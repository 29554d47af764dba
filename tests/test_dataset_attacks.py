"""Attacks on training data: a data owner (or a model owner) that tells P0 and P1 different things.

Each test plays the attacker and must fail: P0 and P1 agree on what every
owner gave before a dataset is kept, so no training runs on rows that do
not line up (P0's row i and P1's row i must be shares of one example), and
no worker is left holding a dataset its peer refused.
"""

from __future__ import annotations

import secrets

import numpy as np
import pytest

from pysmpc.fl.data_owner import DataOwner
from pysmpc.parties.party import CLIENT, DEALER, P0, P1
from pysmpc.parties.socket import SocketChannel, connect_peer
from pysmpc.runtime.datasets import dataset_book_of
from pysmpc.runtime.local import LocalCluster, run_parties
from pysmpc.runtime.training_ops import op_train_data_close, op_train_data_open
from pysmpc.serve.training import SharedDataset, SharedTrainingModel

SHAPE = (4, 4, 1)
CLASSES = 2
F = 16


def _graph():
    from pysmpc.graph.graph import Graph, Layer

    return Graph(SHAPE, [Layer("conv2d", "c", {}, {"kernel": np.zeros((3, 3, 1, 2)), "bias": np.zeros(2)}),
                         Layer("flatten", "f"),
                         Layer("dense", "d", {}, {"kernel": np.zeros((8, CLASSES)), "bias": np.zeros(CLASSES)})])


def _examples(n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, *SHAPE)), rng.integers(0, CLASSES, n)


def _random_shares(n, seed):
    """What a lying owner hands a worker: n rows of uniform ring elements (any rows would do)."""
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 2**63, (n, *SHAPE), dtype=np.uint64),
            rng.integers(0, 2**63, (n, CLASSES), dtype=np.uint64))


def _closed_anywhere(cluster, dataset_id) -> list:
    return [i for i, party in cluster.parties.items() if ("dataset", dataset_id) in party.store]


def test_an_owner_that_gives_p0_and_p1_different_counts_is_refused_by_both():
    """mallory gives P0 3 rows and P1 5, and tells the model owner 3: both workers refuse, naming her;
    neither keeps the dataset, her rows are dropped, and the honest owner's data then trains."""
    with LocalCluster(timeout=30) as cluster:
        data = SharedDataset.open(cluster, "d", SHAPE, CLASSES)
        x, y = _examples(8)
        DataOwner(cluster, "clinic-a").share_dataset("d", x, y)
        books = cluster.dataset_books()
        books[P0].contribute("d", "mallory", *_random_shares(3, 1))
        books[P1].contribute("d", "mallory", *_random_shares(5, 2))
        with pytest.raises(ValueError, match="mallory") as refused:
            data.close({"clinic-a": 8, "mallory": 3})
        assert "P0 3" in str(refused.value) and "P1 5" in str(refused.value), refused.value
        assert _closed_anywhere(cluster, "d") == [], "a worker kept a dataset its peer refused"
        assert data.owners is None
        # Both workers still have the dataset open, without mallory's rows: the model owner can go on.
        for i in (P0, P1):
            assert books[i].rules("d")["classes"] == CLASSES
        assert data.close({"clinic-a": 8}) == 8
        model = SharedTrainingModel(_graph(), cluster)
        history = model.fit(data, epochs=1, batch_size=8, lr=0.1, seed=0)
        assert history[0]["steps"] == 1


def test_an_honest_close_costs_one_round_of_counts_between_p0_and_p1_only():
    """The agreement is 1 round on tag "train:owners" for P0 and P1, a few bytes of counts; P2 and the
    model owner exchange nothing with anyone for it."""
    with LocalCluster(timeout=30) as cluster:
        data = SharedDataset.open(cluster, "d", SHAPE, CLASSES)
        x, y = _examples(8)
        DataOwner(cluster, "clinic-a").share_dataset("d", x, y)
        cluster.reset_stats()
        assert data.close({"clinic-a": 8}) == 8
        stats = cluster.stats()
    for key in ("P0", "P1"):
        owners = stats[key]["train:owners"]
        assert owners["rounds"] == 1 and owners["messages_sent"] == owners["messages_received"] == 1, (key, stats)
        assert 0 < owners["bytes_sent"] < 200, (key, owners)
        assert set(stats[key]) == {"train:owners"}, (key, stats[key])
    assert stats["P2"] == {} and stats["client"] == {}, stats


def test_an_owner_that_gives_one_worker_nothing_is_refused_by_both():
    with LocalCluster(timeout=30) as cluster:
        data = SharedDataset.open(cluster, "d", SHAPE, CLASSES)
        cluster.dataset_books()[P0].contribute("d", "mallory", *_random_shares(4, 1))
        with pytest.raises(ValueError, match="mallory"):
            data.close({"mallory": 4})
        assert _closed_anywhere(cluster, "d") == []


def _close_with(stated: dict, held: dict):
    """Run train_data_open, owners' contributions and train_data_close on three in-process parties,
    the model owner stating `stated[i]` to party i and owner rows `held[i]` reaching party i."""
    def program(party):
        op_train_data_open(party, "d", list(SHAPE), CLASSES, F)
        book = dataset_book_of(party)
        for owner, n in held.get(party.index, {}).items():
            book.contribute("d", owner, *_random_shares(n, n))
        return op_train_data_close(party, "d", stated[party.index], list(SHAPE), CLASSES)

    results, parties = run_parties(program, timeout=10)
    return results, parties


def test_a_model_owner_and_an_owner_in_league_cannot_misalign_the_rows():
    """mallory gives P0 3 rows and P1 5, and the model owner states 3 to P0 and 5 to P1: each worker's
    own check passes, so only P0 and P1 comparing notes catches it. Without that, P0 would train on 7
    rows and P1 on 9 (row i of one is not a share of the example row i of the other holds)."""
    held = {P0: {"a": 4, "mallory": 3}, P1: {"a": 4, "mallory": 5}}
    stated = {P0: {"a": 4, "mallory": 3}, P1: {"a": 4, "mallory": 5}, DEALER: {"a": 4, "mallory": 3}}
    results, parties = _close_with(stated, held)
    for i in (P0, P1):
        assert isinstance(results[i], dict) and "mallory" in results[i]["refused"], (i, results[i])
        assert ("dataset", "d") not in parties[i].store


def test_a_model_owner_that_states_different_counts_to_p0_and_p1_is_refused_by_both():
    held = {P0: {"a": 4}, P1: {"a": 4}}
    stated = {P0: {"a": 4}, P1: {"a": 3}, DEALER: {"a": 4}}
    results, parties = _close_with(stated, held)
    assert results[P0] == results[P1] and "different" in results[P0]["refused"], results
    assert all(("dataset", "d") not in parties[i].store for i in (P0, P1))


def test_a_close_of_a_dataset_open_on_one_worker_only_is_refused_without_hanging():
    def program(party):
        if party.index != P1:
            op_train_data_open(party, "d", list(SHAPE), CLASSES, F)
        if party.index == P0:
            dataset_book_of(party).contribute("d", "a", *_random_shares(2, 2))
        return op_train_data_close(party, "d", {"a": 2}, list(SHAPE), CLASSES)

    results, _ = run_parties(program, timeout=10)
    assert results[P0] == results[P1] and "not open on P1" in results[P0]["refused"], results


def _raw_dataset_owner(hosts, name, dataset_id, counts: dict):
    """A hand-made data owner announcing counts[i] examples to worker i (as an attacker would)."""
    session = secrets.token_hex(8)
    channel = SocketChannel(CLIENT, 10.0, session=session)
    rules = {}
    for i, count in counts.items():
        reply = {}
        stream = connect_peer(hosts[i], CLIENT, i, session=session, timeout=10.0, reply=reply,
                              extra={"dataset": {"id": dataset_id, "owner": name, "count": count}})
        channel.attach(i, stream)
        rules[i] = reply.get("rules")
    return channel, rules


@pytest.mark.tcp
def test_over_tcp_an_owner_that_lies_to_the_workers_is_refused_and_training_goes_on():
    """mallory announces and sends 3 rows to P0 and 5 to P1; trudy announces 4 to P1 and sends 6.
    P1 refuses trudy at once; closing with mallory is refused by both workers, naming her; the
    honest owner's data then closes on the same cluster."""
    from pysmpc.runtime.tcp import TcpCluster

    with TcpCluster(ephemeral_ports=True) as cluster:
        data = SharedDataset.open(cluster, "d", SHAPE, CLASSES)
        x, y = _examples(8)
        DataOwner(cluster, "clinic-a").share_dataset("d", x, y)
        channel, rules = _raw_dataset_owner(cluster.hosts, "mallory", "d", {P0: 3, P1: 5})
        assert rules[P0]["sample_shape"] == list(SHAPE)
        for i, n in ((P0, 3), (P1, 5)):
            images, labels = _random_shares(n, n)
            channel.send(i, images, tag="train:images")
            channel.send(i, labels, tag="train:labels")
        assert [channel.recv_control(i, timeout=10)[0] for i in (P0, P1)] == ["train:ok", "train:ok"]
        channel.close()
        channel, _ = _raw_dataset_owner(cluster.hosts, "trudy", "d", {P1: 4})
        images, labels = _random_shares(6, 6)
        channel.send(P1, images, tag="train:images")
        channel.send(P1, labels, tag="train:labels")
        tag, why = channel.recv_control(P1, timeout=10)
        assert tag == "train:error" and b"announced 4" in bytes(why), (tag, why)
        channel.close()
        with pytest.raises(ValueError, match="mallory"):
            data.close({"clinic-a": 8, "mallory": 3})
        # The cluster is not broken and both workers close the honest owner's data. (Training over TCP is
        # test_training's slow test: its first step compiles kernels in three processes.)
        assert data.close({"clinic-a": 8}) == 8
