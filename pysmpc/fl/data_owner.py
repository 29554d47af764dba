"""A data owner that secret-shares its labelled examples for training on the cluster.

The owner encodes its images and one-hot labels in the dataset's fixed
point, splits them into two uniform shares with a PRG seeded by a fresh
secret only it knows, and hands one share to P0 and the other to P1. The
model owner (who drives the cluster) never handles the data in any form;
it learns only each owner's number of examples.

    owner = DataOwner(cluster, "hospital-a")
    owner.share_dataset("mnist", images, labels)

In-process (`LocalCluster`) the shares go to the workers' dataset books
directly (runtime.datasets). Over TCP (a `TcpCluster`, or the workers'
"host:port" list) the owner connects to P0 and P1 itself, as
`fl.owner.Owner` does for updates (mutual TLS with its own certificate
"owner:NAME" when the cluster uses TLS), reads the dataset's rules from
both and sends each its share (runtime.datasets.take_dataset).
"""

from __future__ import annotations

import json

import numpy as np

from pysmpc.parties.party import CLIENT, P0, P1
from pysmpc.runtime.rounds import check_owner_name
from pysmpc.sharing.fixedpoint import FixedPoint
from pysmpc.sharing.prg import PRG
from pysmpc.sharing.shares import share

__all__ = ["DataOwner"]


class DataOwner:
    """One data owner's connection to the cluster's training-data books."""

    def __init__(self, cluster, name: str, int_bits: int = 15, *, tls_dir=None, timeout: float = 60.0,
                 allow_cleartext: bool = False):
        self.name = check_owner_name(name)
        self.int_bits = int(int_bits)
        self.timeout = float(timeout)
        self._prg = PRG.fresh()  # this owner's own: no other endpoint knows its seed
        self._books: dict = {}
        self.hosts: list = []
        if hasattr(cluster, "dataset_books"):
            self._books = cluster.dataset_books()
        else:
            from pysmpc.parties.addresses import check_cleartext, parse_hosts
            from pysmpc.parties.streams import TlsConfig
            from pysmpc.runtime.certs import owner_stem

            self.hosts = list(cluster.hosts) if hasattr(cluster, "hosts") else parse_hosts(cluster)
            if tls_dir is None and getattr(cluster, "tls_dir", None) is not None:
                tls_dir = cluster.tls_dir
            check_cleartext(self.hosts, tls_dir, f"data owner {name}", allow_cleartext=allow_cleartext)
            self._tls = None if tls_dir is None else TlsConfig(tls_dir, CLIENT, stem=owner_stem(self.name))

    def share_dataset(self, dataset_id: str, images, labels) -> int:
        """Share images (n, *sample_shape) and integer labels (n,) to P0 and P1; returns n.

        Reads the dataset's rules (sample shape, classes, fixed point) from
        both workers and refuses (ValueError, nothing sent) if they differ
        or do not fit the data.
        """
        images = np.asarray(images, dtype=np.float64)
        labels = np.asarray(labels)
        if not self._books:
            return self._share_over_tcp(dataset_id, images, labels)
        rules = self._books[P0].rules(dataset_id)
        if json.dumps(rules, sort_keys=True) != json.dumps(self._books[P1].rules(dataset_id), sort_keys=True):
            raise ValueError(f"owner {self.name}: P0 and P1 state different rules for dataset {dataset_id!r}")
        image_shares, label_shares = self._shares(dataset_id, rules, images, labels)
        for i in (P0, P1):
            self._books[i].contribute(dataset_id, self.name, image_shares[i], label_shares[i])
        return int(images.shape[0])

    def _shares(self, dataset_id: str, rules: dict, images: np.ndarray, labels: np.ndarray):
        """Check the data against the rules; encode and split images and one-hot labels (local)."""
        if list(images.shape[1:]) != rules["sample_shape"] or images.shape[0] != labels.shape[0] or labels.ndim != 1:
            raise ValueError(f"owner {self.name}: dataset {dataset_id!r} takes images (n, {rules['sample_shape']}) "
                             f"and labels (n,), got {images.shape} and {labels.shape}")
        if not np.all(np.isfinite(images)):
            raise ValueError(f"owner {self.name}: images contain NaN or infinity")
        classes = rules["classes"]
        if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 or labels.max() >= classes:
            raise ValueError(f"owner {self.name}: labels must be integers in [0, {classes}), got "
                             f"{labels.dtype} in [{labels.min()}, {labels.max()}]")
        fmt = FixedPoint(frac_bits=rules["frac_bits"], int_bits=self.int_bits)
        image_shares = share(fmt.encode(images), self._prg)
        label_shares = share(fmt.encode(np.eye(classes)[labels]), self._prg)
        return image_shares, label_shares

    def _share_over_tcp(self, dataset_id: str, images: np.ndarray, labels: np.ndarray) -> int:
        import secrets

        from pysmpc.parties.channel import ChannelError
        from pysmpc.parties.socket import SocketChannel, connect_peer
        from pysmpc.runtime.datasets import CHUNK_ROWS

        session = secrets.token_hex(16)
        channel = SocketChannel(CLIENT, self.timeout, session=session)
        replies: dict[int, dict] = {}
        count = int(images.shape[0])
        try:
            for i in (P0, P1):
                replies[i] = {}
                stream = connect_peer(self.hosts[i], CLIENT, i, session=session, tls=self._tls, timeout=self.timeout,
                                      extra={"dataset": {"id": dataset_id, "owner": self.name, "count": count}},
                                      reply=replies[i])
                channel.attach(i, stream)
            rules = [replies[i].get("rules") for i in (P0, P1)]
            if not isinstance(rules[0], dict) or json.dumps(rules[0], sort_keys=True) != json.dumps(rules[1],
                                                                                                    sort_keys=True):
                raise ValueError(f"owner {self.name}: P0 and P1 state different rules for dataset {dataset_id!r}")
            image_shares, label_shares = self._shares(dataset_id, rules[0], images, labels)
            for i in (P0, P1):
                for what, part in (("images", image_shares[i]), ("labels", label_shares[i])):
                    for start in range(0, count, CHUNK_ROWS):
                        channel.send(i, np.ascontiguousarray(part[start : start + CHUNK_ROWS]), tag=f"train:{what}")
            for i in (P0, P1):
                tag, payload = channel.recv_control(i, timeout=self.timeout)
                if tag != "train:ok":
                    why = bytes(payload).decode(errors="replace") if isinstance(payload, bytes) else tag
                    raise ValueError(f"owner {self.name}: P{i} refused the shares of dataset {dataset_id!r}: {why}")
        except ChannelError as exc:
            raise ValueError(f"owner {self.name}: sharing dataset {dataset_id!r} failed: {exc}") from None
        finally:
            channel.close()
        return count
