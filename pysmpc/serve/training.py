"""The model owner's training API: a dataset shared by data owners, a model trained on it, still shared.

    with LocalCluster() as cluster:
        data = SharedDataset.open(cluster, "mnist", (28, 28, 1), classes=10)
        for name, (x, y) in owners.items():
            DataOwner(cluster, name).share_dataset("mnist", x, y)   # each owner, from its own thread/process
        data.close({name: len(y) for name, (x, y) in owners.items()})
        model = SharedTrainingModel(seed_cnn(), cluster)             # shared random init: nobody knows it
        history = model.fit(data, epochs=5, batch_size=128, lr=0.1)
        served = model.shared_model()                                # serve() it: the weights are never revealed
        # or: weights = model.reveal_weights()                       # to this caller (the model owner) only

The model owner drives the cluster: it sees the architecture, the number of
examples each owner gave, the public batch order, and what it asks to be
revealed (docs/TRAINING.md). It never sees the data, the labels or, unless
it reveals them, the weights.
"""

from __future__ import annotations

import itertools
import time

import numpy as np

from pysmpc.graph.graph import Graph
from pysmpc.graph.secure_train import check_trainable
from pysmpc.parties.party import P0, P1
from pysmpc.runtime.training_ops import REPORT_TAG, graph_spec
from pysmpc.serve.model import SharedModel

__all__ = ["SharedDataset", "SharedTrainingModel", "TrainedSharedModel"]

_keys = itertools.count()


class SharedDataset:
    """Labelled examples shared by data owners to the cluster; the model owner holds only this handle."""

    def __init__(self, cluster, dataset_id: str, sample_shape, classes: int):
        self.cluster = cluster
        self.dataset_id = dataset_id
        self.sample_shape = tuple(int(s) for s in sample_shape)
        self.classes = int(classes)
        self.owners: dict[str, int] | None = None

    @classmethod
    def open(cls, cluster, dataset_id: str, sample_shape, classes: int) -> "SharedDataset":
        """Open dataset `dataset_id` on the workers; owners then share into it (fl.data_owner.DataOwner)."""
        dataset = cls(cluster, dataset_id, sample_shape, classes)
        cluster.call("train_data_open", dataset_id, list(dataset.sample_shape), dataset.classes, cluster.frac_bits)
        return dataset

    def close(self, owners: dict) -> int:
        """Keep the union of these owners' examples ({name: count}); returns the total.

        ValueError if P0 and P1 hold other counts, or disagree on an owner
        (that owner's rows are dropped on both; the dataset stays open, so
        close again without it).
        """
        if not owners:
            raise ValueError("a dataset needs at least one owner")
        owners = {str(k): int(v) for k, v in owners.items()}
        results, _ = self.cluster.call("train_data_close", self.dataset_id, owners, list(self.sample_shape),
                                       self.classes)
        refusals = [r["refused"] for r in (results[P0], results[P1]) if isinstance(r, dict)]
        if refusals or results[P0] != results[P1]:
            self.cluster.call("train_data_free", self.dataset_id)  # P2 kept the shapes; P0 and P1 kept nothing
            raise ValueError(refusals[0] if refusals else f"P0 and P1 disagree on dataset {self.dataset_id!r}: "
                             f"{results[P0]} vs {results[P1]}")
        self.owners = owners
        return int(results[0])

    @property
    def size(self) -> int:
        if self.owners is None:
            raise RuntimeError(f"dataset {self.dataset_id!r} is not closed yet: call close(owners)")
        return sum(self.owners.values())


class SharedTrainingModel:
    """A model trained on the cluster: its weights exist only as shares on P0 and P1.

    `weights` (one dict per layer, as graph.backward.get_weights) are the
    model owner's initial weights, shared from here; None (the default)
    has P0 and P1 draw a shared He-normal initialisation nobody knows.
    """

    def __init__(self, graph: Graph, cluster, weights: list | None = None):
        check_trainable(graph)
        self.graph = graph
        self.cluster = cluster
        self.key = f"train-{next(_keys)}"
        self.history: list[dict] = []
        tids = None
        if weights is not None:
            self._initial = [{k: cluster.share(np.asarray(v, dtype=np.float64)) for k, v in w.items()}
                             for w in weights]
            tids = [{k: t.tid for k, t in w.items()} for w in self._initial]
        cluster.call("train_begin", self.key, graph_spec(graph), tids, cluster.frac_bits)
        if weights is not None:
            cluster.call("free", [t.tid for w in self._initial for t in w.values()])

    def fit(self, dataset: SharedDataset, epochs: int = 1, batch_size: int = 128, lr: float = 0.1,
            momentum: float = 0.9, report: bool = False, progress: bool = False, seed: int | None = None,
            steps_per_call: int = 10, on_epoch=None, max_steps: int | None = None) -> list[dict]:
        """Train with SGD (momentum) on the shared dataset; returns one dict per epoch.

        Batches follow a public random permutation per epoch (drawn here,
        `seed`); a last incomplete batch is dropped. With `report` this
        caller receives each example's probability of its true class and
        the epoch's dict has `loss` (mean cross-entropy) and
        `confident_accuracy` (the fraction with that probability above
        1/2, a lower bound of the training accuracy); docs/TRAINING.md says
        what that reveals. `on_epoch(epoch, entry)` runs after each epoch
        (e.g. to evaluate). `max_steps` caps the steps per epoch (tests).
        """
        if dataset.owners is None:
            raise RuntimeError("the dataset is not closed: call dataset.close(owners) first")
        if not (isinstance(epochs, int) and epochs >= 1 and isinstance(batch_size, int) and batch_size >= 1):
            raise ValueError(f"epochs and batch_size must be positive ints, got {epochs!r}, {batch_size!r}")
        if dataset.sample_shape != tuple(self.graph.input_shape):
            raise ValueError(f"the dataset's examples are {dataset.sample_shape}, the model takes "
                             f"{tuple(self.graph.input_shape)}")
        rng = np.random.default_rng(seed)
        steps = dataset.size // batch_size
        if max_steps is not None:
            steps = min(steps, int(max_steps))
        if steps == 0:
            raise ValueError(f"{dataset.size} examples make no batch of {batch_size}")
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=epochs * steps, unit="step", desc="training on shares", leave=False)
        try:
            for epoch in range(epochs):
                order = rng.permutation(dataset.size)[: steps * batch_size]
                entry = {"epoch": epoch + 1, "steps": 0, "seconds": 0.0, "bytes_sent": 0, "rounds": 0}
                p_true = []
                start = time.perf_counter()
                for first in range(0, steps, steps_per_call):
                    count = min(steps_per_call, steps - first)
                    chunk = order[first * batch_size : (first + count) * batch_size]
                    client = self._receive_report if report else None
                    results, revealed = self.cluster.call(
                        "train_epoch", self.key, dataset.dataset_id, chunk, batch_size, float(lr), float(momentum),
                        report=report, client=client, wait=60.0 + 60.0 * count)
                    entry["steps"] += count
                    entry["bytes_sent"] += results[P0]["bytes_sent"]
                    entry["rounds"] += results[P0]["rounds"]
                    if report:
                        p_true.append(revealed)
                    if bar is not None:
                        bar.update(count)
                entry["seconds"] = time.perf_counter() - start
                entry["images"] = entry["steps"] * batch_size
                if report:
                    p = np.concatenate(p_true)
                    entry["loss"] = float(np.mean(-np.log(np.clip(p, 2.0**-self.cluster.frac_bits, None))))
                    entry["confident_accuracy"] = float(np.mean(p > 0.5))
                self.history.append(entry)
                if on_epoch is not None:
                    on_epoch(epoch + 1, entry)
        finally:
            if bar is not None:
                bar.close()
        return self.history[-epochs:]

    def _receive_report(self) -> np.ndarray:
        channel = self.cluster.client_channel
        ring = channel.recv(P0, tag=REPORT_TAG) + channel.recv(P1, tag=REPORT_TAG)
        # Probability times a one-hot label: 2F fractional bits.
        return ring.view(np.int64) / float(1 << (2 * self.cluster.frac_bits))

    def _export(self) -> list[dict]:
        ids = [{k: self.cluster.new_id() for k in layer.weights} for layer in self.graph.layers]
        self.cluster.call("train_export", self.key, ids)
        return ids

    def reveal_weights(self) -> list[dict]:
        """Reveal the current weights to this caller (the model owner) alone: one dict of float arrays per layer."""
        from pysmpc.runtime.tensor import SharedTensor

        out = []
        for layer, ids in zip(self.graph.layers, self._export()):
            w = {}
            for k, tid in ids.items():
                tensor = SharedTensor(self.cluster, tid, layer.weights[k].shape, self.cluster.frac_bits)
                ring = self.cluster.reveal_ring(tensor)
                w[k] = ring.view(np.int64) / float(1 << self.cluster.frac_bits)
                self.cluster.call("free", [tid])
            out.append(w)
        return out

    def shared_model(self) -> "TrainedSharedModel":
        """The trained model as a SharedModel on the same cluster, its weights still shared (never revealed)."""
        return TrainedSharedModel(self.graph, self.cluster, self._export())

    def end(self) -> None:
        """Drop the training state (weights, velocities) from the parties."""
        if self.cluster.running:
            self.cluster.call("train_end", self.key)


class TrainedSharedModel(SharedModel):
    """A SharedModel whose weights were never plaintext here: the trained shares, loaded as they are.

    The graph held here has zero weights. Serving works as for any
    SharedModel; a restarted cluster (TcpCluster.restart) cannot have them
    shared again, as nobody holds them in the clear.
    """

    def __init__(self, graph: Graph, cluster, weight_ids: list[dict]):
        self._weight_ids = {id(layer.weights[k]): tid for layer, ids in zip(graph.layers, weight_ids)
                            for k, tid in ids.items()}
        super().__init__(graph, cluster)

    def _load(self) -> None:
        from pysmpc.runtime.tensor import SharedTensor
        from pysmpc.serve.model import make_plan

        if getattr(self, "_loaded", False):
            raise RuntimeError("a model trained on shares cannot be shared again: its weights exist only as the "
                               "shares the restarted workers lost")
        self._loaded = True
        self._tensors = []
        self._input_masks = {}

        def existing(array):
            tid = self._weight_ids[id(array)]
            self._tensors.append(SharedTensor(self.cluster, tid, array.shape, self.cluster.frac_bits))
            return tid

        self.plan = make_plan(self.graph, existing)
        self.cluster.call("load_model", self.key, self.plan, description=self.describe())
