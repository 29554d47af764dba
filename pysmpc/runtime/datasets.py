"""A worker's book of training data shared by data owners (images and one-hot labels).

Each data owner encodes its labelled examples, splits them into two shares
with its own PRG and hands one share to P0 and one to P1 (in-process: to
the book directly; `pysmpc.fl.data_owner.DataOwner`). The book keeps each
owner's share apart until the cluster closes the dataset: the union is
then the owners' shares concatenated in the order of their names, the
order the model owner stated (the counts are public; the rows are not).
"""

from __future__ import annotations

import threading

import numpy as np

from pysmpc.parties.party import P0, P1, Party
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
                                                "frac_bits": int(frac_bits)}, "parts": {}}
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
            if owner in entry["parts"]:
                raise ValueError(f"owner {owner!r} has contributed to dataset {dataset_id!r} already")
            entry["parts"][owner] = (images.copy(), labels.copy())

    def close(self, dataset_id: str, owners: dict) -> tuple[np.ndarray, np.ndarray]:
        """Return this party's shares of the union: the named owners' parts in name order.

        `owners` maps each owner to its number of examples, as the model
        owner states it; a missing owner, an extra one or another count is
        refused (ValueError) and the dataset stays open.
        """
        with self._lock:
            entry = self._get(dataset_id)
            parts = entry["parts"]
            have = {name: int(p[0].shape[0]) for name, p in parts.items()}
            want = {str(k): int(v) for k, v in owners.items()}
            if have != want:
                raise ValueError(f"P{self.party_index}: dataset {dataset_id!r} holds {have}, the caller expects {want}")
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


def dataset_book_of(party: Party) -> DatasetBook | None:
    """The party's DatasetBook (P0, P1), made on first use; None on P2, which holds no shares."""
    if party.index not in (P0, P1):
        return None
    book = party.store.get("dataset_book")
    if book is None:
        book = party.store["dataset_book"] = DatasetBook(party.index)
    return book


def stored_dataset(party: Party, dataset_id: str) -> tuple[AShare, AShare]:
    """The closed dataset's (images, one-hot labels) shares on this party (P2: shapes only)."""
    try:
        return party.store[("dataset", dataset_id)]
    except KeyError:
        raise KeyError(f"{party.name}: no closed dataset {dataset_id!r}") from None


# Rows per message over TCP: 4096 MNIST images are 25.7 MB of shares.
CHUNK_ROWS = 4096


def take_dataset(index: int, hello: dict, stream, book: "DatasetBook | None", timeout: float) -> None:
    """A data owner's shares of a dataset over TCP: tell it the rules, read its shares, say whether they count.

    The owner's hello names the dataset, itself and its number of examples
    ({"dataset": {"id", "owner", "count"}}); with TLS its name must match
    its certificate (accept_peer checks). The shares reach this worker's
    DatasetBook, never the client driving the session. Images come in
    messages of at most CHUNK_ROWS rows (tag "train:images"), then the
    labels likewise ("train:labels").
    """
    import logging
    import math

    from pysmpc.parties.channel import ChannelError
    from pysmpc.parties.party import CLIENT
    from pysmpc.parties.frames import FRAME_HEADER_ROOM
    from pysmpc.parties.socket import SocketChannel, reply_hello

    log = logging.getLogger("pysmpc.worker")
    session = str(hello.get("session"))[:64]
    request = hello.get("dataset")
    try:
        if book is None:
            raise ValueError(f"P{index} holds no shares of data: owners share to P0 and P1 only")
        if not isinstance(request, dict):
            raise ValueError("the dataset request is not a JSON object")
        dataset_id, owner, count = request.get("id"), check_owner_name(request.get("owner")), request.get("count")
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= _MAX_EXAMPLES:
            raise ValueError(f"an owner shares 1 to {_MAX_EXAMPLES} examples, got {count!r}")
        rules = book.rules(dataset_id)
    except ValueError as exc:
        reply_hello(stream, index, session, error=str(exc))
        log.warning("refused a data owner's dataset: %s", exc)
        return
    row = max(math.prod(rules["sample_shape"]), rules["classes"])
    channel = SocketChannel(index, timeout, session=session, max_recv_bytes=8 * row * CHUNK_ROWS + FRAME_HEADER_ROOM)
    try:
        reply_hello(stream, index, session, extra={"rules": rules})
        channel.attach(CLIENT, stream)
        parts = {}
        for what in ("images", "labels"):
            chunks = [channel.recv(CLIENT, tag=f"train:{what}") for _ in range(0, count, CHUNK_ROWS)]
            if not all(isinstance(c, np.ndarray) for c in chunks):
                raise ValueError(f"the {what} shares are not arrays")
            parts[what] = np.concatenate(chunks)
        book.contribute(dataset_id, owner, parts["images"], parts["labels"])
    except ChannelError as exc:
        log.info("data owner %s left before its shares of %s arrived (%s): not counted", owner, dataset_id, exc)
        channel.close()
        return
    except ValueError as exc:
        log.warning("refused data owner %s's shares of dataset %s: %s", owner, dataset_id, exc)
        _tell(channel, "train:error", str(exc))
        return
    log.info("dataset %s: data owner %s shared %d examples", dataset_id, owner, count)
    _tell(channel, "train:ok", "")


def _tell(channel, tag: str, text: str) -> None:
    from pysmpc.parties.channel import ChannelError
    from pysmpc.parties.party import CLIENT

    try:
        channel.send_control(CLIENT, tag, text.encode()[:2000])
    except ChannelError:
        pass
    channel.close()
