"""A data owner that secret-shares its labelled examples for training on the cluster.

The owner encodes its images and one-hot labels in the dataset's fixed
point, splits them into two uniform shares with a PRG seeded by a fresh
secret only it knows, and hands one share to P0 and the other to P1. The
model owner (who drives the cluster) never handles the data in any form;
it learns only each owner's number of examples.

    owner = DataOwner(cluster, "hospital-a")
    owner.share_dataset("mnist", images, labels)

In-process (`LocalCluster`) the shares go to the workers' dataset books
directly (runtime.datasets). Over TCP an owner would connect to P0 and P1
itself as `fl.owner.Owner` does for updates: not implemented yet (the
workers have no accept path for datasets), and refused with that message.
"""

from __future__ import annotations

import json

import numpy as np

from pysmpc.parties.party import P0, P1
from pysmpc.runtime.rounds import check_owner_name
from pysmpc.sharing.fixedpoint import FixedPoint
from pysmpc.sharing.prg import PRG
from pysmpc.sharing.shares import share

__all__ = ["DataOwner"]


class DataOwner:
    """One data owner's connection to the cluster's training-data books."""

    def __init__(self, cluster, name: str, int_bits: int = 15):
        self.name = check_owner_name(name)
        self.int_bits = int(int_bits)
        self._prg = PRG.fresh()  # this owner's own: no other endpoint knows its seed
        if not hasattr(cluster, "dataset_books"):
            raise NotImplementedError("data owners share datasets with in-process clusters only for now "
                                      "(no TCP path for training data yet)")
        self._books = cluster.dataset_books()

    def share_dataset(self, dataset_id: str, images, labels) -> int:
        """Share images (n, *sample_shape) and integer labels (n,) to P0 and P1; returns n.

        Reads the dataset's rules (sample shape, classes, fixed point) from
        both workers and refuses (ValueError, nothing sent) if they differ
        or do not fit the data.
        """
        images = np.asarray(images, dtype=np.float64)
        labels = np.asarray(labels)
        rules = self._books[P0].rules(dataset_id)
        if json.dumps(rules, sort_keys=True) != json.dumps(self._books[P1].rules(dataset_id), sort_keys=True):
            raise ValueError(f"owner {self.name}: P0 and P1 state different rules for dataset {dataset_id!r}")
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
        for i in (P0, P1):
            self._books[i].contribute(dataset_id, self.name, image_shares[i], label_shares[i])
        return int(images.shape[0])
