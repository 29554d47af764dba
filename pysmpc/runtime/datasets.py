"""A worker's book of training data shared by data owners (images and one-hot labels).

Each data owner encodes its labelled examples, splits them into two shares
with its own PRG and hands one share to P0 and one to P1 (in-process: to
the book directly; `pysmpc.fl.data_owner.DataOwner`). The book keeps each
owner's share apart until the cluster closes the dataset: the union is
then the owners' shares concatenated in the order of their names, the
order the model owner stated (the counts are public; the rows are not).

Row i of P0's share and row i of P1's share must be shares of one example.
A data owner can hand P0 and P1 different numbers of rows, and the model
owner (who calls each worker itself over TCP) can state different counts
to each; every worker's own check against the counts it was told then
passes. So before a dataset is kept, P0 and P1 exchange what each holds
per owner and what each was told, and both refuse unless all agree.
"""

from __future__ import annotations

import json
import math
import threading

import numpy as np

from pysmpc.parties.frames import FRAME_HEADER_ROOM
from pysmpc.parties.party import CLIENT, P0, P1, Party
from pysmpc.runtime.owner_shares import computing_book, take_owner_shares
from pysmpc.runtime.rounds import check_owner_name
from pysmpc.sharing.shares import AShare

__all__ = ["DatasetBook", "dataset_book_of", "stored_dataset"]

# At most this many examples per owner (2^24 MNIST images are 105 GB of shares).
_MAX_EXAMPLES = 1 << 24


class DatasetBook:
    """One worker's datasets being collected; thread-safe (owners hand in shares from their threads)."""

    def __init__(self, party_index: int):
        self.party_index = party_index
        self._open: dict[str, dict] = {}
        self._lock = threading.Lock()

    def open(self, dataset_id: str, sample_shape, classes: int, frac_bits: int) -> dict:
        check_owner_name(dataset_id)
        sample_shape = [int(s) for s in sample_shape]
        if not sample_shape or min(sample_shape) < 1 or not 2 <= int(classes) <= 1 << 16:
            raise ValueError(f"a dataset takes examples of a non-empty shape and 2 or more classes, got "
                             f"{sample_shape} and {classes}")
        with self._lock:
            if dataset_id in self._open:
                raise ValueError(f"P{self.party_index}: dataset {dataset_id!r} is open already")
            self._open[dataset_id] = {"rules": {"sample_shape": sample_shape, "classes": int(classes),
                                                "frac_bits": int(frac_bits)}, "parts": {}, "closing": False}
        return self.rules(dataset_id)

    def rules(self, dataset_id: str) -> dict:
        with self._lock:
            return dict(self._get(dataset_id)["rules"])

    def contribute(self, dataset_id: str, owner: str, images, labels) -> None:
        """Take an owner's shares: images (n, *sample_shape) and one-hot labels (n, classes), uint64."""
        check_owner_name(owner)
        with self._lock:
            entry = self._get(dataset_id)
            rules = entry["rules"]
            for what, share, tail in (("images", images, rules["sample_shape"]), ("labels", labels,
                                                                                  [rules["classes"]])):
                if not isinstance(share, np.ndarray) or share.dtype != np.uint64 or list(share.shape[1:]) != tail:
                    got = f"{share.dtype} {share.shape}" if isinstance(share, np.ndarray) else type(share).__name__
                    raise ValueError(f"dataset {dataset_id!r} takes {what} shares uint64 (n, {tail}), got {got}")
            if images.shape[0] != labels.shape[0] or not 1 <= images.shape[0] <= _MAX_EXAMPLES:
                raise ValueError(f"owner {owner!r}: {images.shape[0]} images and {labels.shape[0]} labels "
                                 f"(1 to {_MAX_EXAMPLES} each, as many of both)")
            if entry["closing"]:
                raise ValueError(f"dataset {dataset_id!r} is being closed and takes no more shares")
            if owner in entry["parts"]:
                raise ValueError(f"owner {owner!r} has contributed to dataset {dataset_id!r} already")
            entry["parts"][owner] = (images.copy(), labels.copy())

    def close(self, party: Party, dataset_id: str, owners: dict) -> tuple[np.ndarray, np.ndarray]:
        """Agree with the peer on every owner's examples, then return this party's shares of the union.

        1. Stop taking shares; note the rules and each owner's number of
           examples here, and `owners` ({owner: count}, as the model owner
           stated it to this party): local.
        2. Exchange these notes with the other computing party (1 round;
           public counts only, never a share).
        3. Refuse (ValueError) unless P0 and P1 hold the dataset under the
           same rules, hold as many examples of every owner, were told the
           same counts, and hold what they were told. An owner whose counts
           differ gave P0 and P1 different rows: both drop its rows and name
           it. Both see the same two notes, so both reach the same verdict
           and the dataset stays open on both.
        4. Concatenate the owners' parts in name order: local.
        """
        with self._lock:
            entry = self._open.get(dataset_id) if isinstance(dataset_id, str) else None
            if entry is not None:
                entry["closing"] = True
                mine = {"rules": entry["rules"], "holds": {n: int(p[0].shape[0]) for n, p in entry["parts"].items()}}
            else:
                mine = None
        note = {"dataset": mine, "stated": _stated_counts(owners)}
        theirs = json.loads(bytes(party.channel.exchange(party.peer, json.dumps(note, sort_keys=True).encode(),
                                                         tag="train:owners")))
        notes = {party.index: note, party.peer: theirs}
        try:
            why, liars = _disagreement(str(dataset_id)[:64], notes[P0], notes[P1])
        except (KeyError, TypeError, AttributeError):
            why, liars = f"P{party.peer} sent a malformed note on dataset {str(dataset_id)[:64]!r}", []
        with self._lock:
            if why is not None:
                if entry is not None:
                    for name in liars:
                        entry["parts"].pop(name, None)
                    entry["closing"] = False
                raise ValueError(why)
            parts = entry["parts"]
            names = sorted(parts)
            images = np.concatenate([parts[n][0] for n in names])
            labels = np.concatenate([parts[n][1] for n in names])
            del self._open[dataset_id]
        return images, labels

    def _get(self, dataset_id: str) -> dict:
        entry = self._open.get(dataset_id) if isinstance(dataset_id, str) else None
        if entry is None:
            raise ValueError(f"P{self.party_index}: dataset {str(dataset_id)[:64]!r} is not open")
        return entry


def _stated_counts(owners) -> dict | str:
    """The model owner's {owner: count} as plain data, or why it is not one (still exchanged: no hang)."""
    try:
        return {check_owner_name(str(k)): int(v) for k, v in dict(owners).items()}
    except (TypeError, ValueError) as exc:
        return f"not a map of owner names to counts ({str(exc)[:200]})"


def _disagreement(dataset_id: str, note_0: dict, note_1: dict) -> tuple[str | None, list]:
    """Why P0's and P1's notes on a dataset refuse closing it (None: they agree), and the owners to drop.

    A pure function of the two notes, so P0 and P1 reach the same verdict.
    """
    for i, note in ((P0, note_0), (P1, note_1)):
        if note["dataset"] is None:
            return f"dataset {dataset_id!r} is not open on P{i}: refused on both", []
    if note_0["dataset"]["rules"] != note_1["dataset"]["rules"]:
        return (f"dataset {dataset_id!r} was opened under different rules on P0 ({note_0['dataset']['rules']}) "
                f"and P1 ({note_1['dataset']['rules']}): refused on both"), []
    held = {P0: note_0["dataset"]["holds"], P1: note_1["dataset"]["holds"]}
    liars = sorted(n for n in set(held[P0]) | set(held[P1]) if held[P0].get(n) != held[P1].get(n))
    if liars:
        gave = "; ".join(f"owner {n!r} gave P0 {held[P0].get(n, 0)} examples and P1 {held[P1].get(n, 0)}"
                         for n in liars)
        return (f"dataset {dataset_id!r}: {gave}. Their rows would not line up: both workers dropped them; the "
                "dataset stays open without them"), liars
    stated = {P0: note_0["stated"], P1: note_1["stated"]}
    for i in (P0, P1):
        if isinstance(stated[i], str):
            return f"dataset {dataset_id!r}: the counts stated to P{i} are {stated[i]}: refused on both", []
    if stated[P0] != stated[P1]:
        return (f"dataset {dataset_id!r}: the caller stated different counts to P0 ({stated[P0]}) and P1 "
                f"({stated[P1]}): refused on both"), []
    if held[P0] != stated[P0]:
        return (f"dataset {dataset_id!r} holds {held[P0]} on P0 and P1, the caller expects {stated[P0]}: "
                "refused; the dataset stays open"), []
    return None, []


def dataset_book_of(party: Party) -> DatasetBook | None:
    """The party's DatasetBook (P0, P1), made on first use; None on P2, which holds no shares."""
    return computing_book(party, "dataset_book", DatasetBook)


def stored_dataset(party: Party, dataset_id: str) -> tuple[AShare, AShare]:
    """The closed dataset's (images, one-hot labels) shares on this party (P2: shapes only)."""
    try:
        return party.store[("dataset", dataset_id)]
    except KeyError:
        raise KeyError(f"{party.name}: no closed dataset {dataset_id!r}") from None


# Rows per message over TCP: 4096 MNIST images are 25.7 MB of shares.
CHUNK_ROWS = 4096


def take_dataset(index: int, hello: dict, stream, book: DatasetBook | None, timeout: float) -> None:
    """A data owner's shares of a dataset over TCP: tell it the rules, read its shares, say whether they count.

    The owner's hello names the dataset, itself and its number of examples
    ({"dataset": {"id", "owner", "count"}}); with TLS its name must match
    its certificate (accept_peer checks). The shares reach this worker's
    DatasetBook, never the client driving the session. Images come in
    messages of at most CHUNK_ROWS rows (tag "train:images"), then the
    labels likewise ("train:labels").
    """
    asked = {}

    def admit(request):
        if book is None:
            raise ValueError(f"P{index} holds no shares of data: owners share to P0 and P1 only")
        if not isinstance(request, dict):
            raise ValueError("the dataset request is not a JSON object")
        dataset_id, owner, count = request.get("id"), check_owner_name(request.get("owner")), request.get("count")
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= _MAX_EXAMPLES:
            raise ValueError(f"an owner shares 1 to {_MAX_EXAMPLES} examples, got {count!r}")
        rules = book.rules(dataset_id)
        asked.update(dataset_id=dataset_id, owner=owner, count=count)
        row = max(math.prod(rules["sample_shape"]), rules["classes"])
        return f"dataset {dataset_id}, data owner {owner}", rules, 8 * row * CHUNK_ROWS + FRAME_HEADER_ROOM

    def receive(channel) -> str:
        count = asked["count"]
        parts = {}
        for what in ("images", "labels"):
            chunks = [channel.recv(CLIENT, tag=f"train:{what}") for _ in range(0, count, CHUNK_ROWS)]
            if not all(isinstance(c, np.ndarray) for c in chunks):
                raise ValueError(f"the {what} shares are not arrays")
            parts[what] = np.concatenate(chunks)
            if parts[what].shape[0] != count:
                raise ValueError(f"owner {asked['owner']!r} announced {count} examples and sent "
                                 f"{parts[what].shape[0]} rows of {what}")
        book.contribute(asked["dataset_id"], asked["owner"], parts["images"], parts["labels"])
        return f"shared {count} examples"

    take_owner_shares(index, hello, stream, timeout, request_key="dataset", tag="train", admit=admit,
                      receive=receive)
