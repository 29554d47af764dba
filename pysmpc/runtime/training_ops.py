"""The operations a party runs to train a model on shared data (registered in runtime.ops.OPS).

* `train_data_open` / `train_data_close`: collect the data owners' shares
  (runtime.datasets) and keep their union as one shared dataset.
* `train_begin`: shared initial weights, from tensors the model owner
  shared or drawn by P0 and P1 (each adds its own Gaussian: nobody knows
  the sum).
* `train_epoch`: SGD steps over public batch indices (graph.secure_train).
* `train_export`: the current weights as stored tensors (to reveal to the
  model owner, or to serve still shared).
"""

from __future__ import annotations

import time

import numpy as np

from pysmpc.graph.graph import Graph, Layer
from pysmpc.graph.secure_train import TrainingState, train_step
from pysmpc.parties.party import CLIENT, P0, P1, Party
from pysmpc.protocols.mul import mul
from pysmpc.protocols.open import reveal_to
from pysmpc.runtime.datasets import dataset_book_of, stored_dataset
from pysmpc.sharing.gaussian import standard_normal
from pysmpc.sharing.prg import PRG, new_seed
from pysmpc.sharing.shares import AShare

__all__ = ["TRAINING_OPS", "graph_spec", "graph_from_spec", "REPORT_TAG"]

REPORT_TAG = "train:report"


def graph_spec(graph: Graph) -> dict:
    """The graph's architecture as plain data (no weights): what a training call carries."""
    return {"input_shape": list(graph.input_shape),
            "layers": [{"kind": layer.kind, "name": layer.name, "params": _plain(layer.params),
                        "weights": {k: list(v.shape) for k, v in layer.weights.items()}} for layer in graph.layers]}


def graph_from_spec(spec: dict) -> Graph:
    """A Graph of zero weights from `graph_spec` data."""
    layers = [Layer(item["kind"], item["name"], dict(item["params"]),
                    {k: np.zeros(tuple(s)) for k, s in item["weights"].items()}) for item in spec["layers"]]
    return Graph(tuple(spec["input_shape"]), layers)


def _plain(params: dict) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in params.items()}


def _tensor(party: Party, tid: int) -> AShare:
    try:
        return party.store[("tensor", tid)]
    except KeyError:
        raise KeyError(f"{party.name}: no tensor with id {tid}") from None


# -- data ------------------------------------------------------------------------------
def op_train_data_open(party: Party, dataset_id: str, sample_shape, classes: int, frac_bits: int):
    """Open a dataset for owners' shares on P0 and P1 (P2 holds none); returns its rules."""
    book = dataset_book_of(party)
    return None if book is None else book.open(dataset_id, sample_shape, classes, frac_bits)


def op_train_data_close(party: Party, dataset_id: str, owners: dict, sample_shape, classes: int) -> int | dict:
    """Keep the union of the named owners' shares as dataset `dataset_id`; returns its size.

    The counts per owner are public: the model owner states them, and P0
    and P1 check them against what each holds and against each other
    (DatasetBook.close, 1 round). P2 learns the shapes from the call, not
    from P0 or P1. A refusal is {"refused": why} on P0 and P1 alike (the
    dataset stays open); the caller raises it and frees P2's shapes.
    """
    total = sum(int(v) for v in owners.values())
    book = dataset_book_of(party)
    if book is None:
        images = AShare(None, party.index, (total, *sample_shape))
        labels = AShare(None, party.index, (total, classes))
    else:
        try:
            images_v, labels_v = book.close(party, dataset_id, owners)
        except ValueError as exc:
            return {"refused": str(exc)}
        images, labels = AShare(images_v, party.index), AShare(labels_v, party.index)
    party.store[("dataset", dataset_id)] = (images, labels)
    return total


def op_train_data_free(party: Party, dataset_id: str) -> None:
    party.store.pop(("dataset", dataset_id), None)


# -- model -------------------------------------------------------------------------------
def op_train_begin(party: Party, model_key: str, spec: dict, weight_tids: list | None, frac_bits: int) -> None:
    """Start training `spec` from shared weights (tensor ids per layer) or, with None, from a shared random init.

    Random init: each of P0 and P1 draws He-normal kernels with half the
    variance from a PRG on a fresh seed of its own, so the sum is He-normal
    and no party knows it (biases 0). No communication.
    """
    graph = graph_from_spec(spec)
    weights = []
    prg = PRG(new_seed()) if party.index in (P0, P1) else None
    for i, layer in enumerate(graph.layers):
        w = {}
        for k, arr in layer.weights.items():
            if weight_tids is not None:
                w[k] = _tensor(party, weight_tids[i][k])
                if w[k].shape != arr.shape:
                    raise ValueError(f"layer {layer.name!r} {k}: tensor of shape {w[k].shape}, expected {arr.shape}")
            elif prg is None:
                w[k] = AShare(None, party.index, arr.shape)
            elif k == "kernel":
                std = np.sqrt(2.0 / np.prod(arr.shape[:-1]) / 2.0)
                half = np.rint(standard_normal(prg, arr.shape) * std * (1 << frac_bits)).astype(np.int64)
                w[k] = AShare(half.view(np.uint64), party.index)
            else:
                w[k] = AShare(np.zeros(arr.shape, np.uint64), party.index)
        weights.append(w)
    party.store[("training", model_key)] = TrainingState(graph, weights, frac_bits)


def _state(party: Party, model_key: str) -> TrainingState:
    try:
        return party.store[("training", model_key)]
    except KeyError:
        raise KeyError(f"{party.name}: no model {model_key!r} in training") from None


def op_train_epoch(party: Party, model_key: str, dataset_id: str, order, batch_size: int, lr: float,
                   momentum: float, report: bool = False) -> dict:
    """Run SGD steps on batches of `order` (public example indices, a permutation drawn by the caller).

    Batches of exactly `batch_size` (a last smaller batch is dropped, as
    its bytes and rounds would differ). With `report`, the model owner (the
    caller) receives, once at the end, each example's softmax probability
    of its true class, sum(p * onehot) per row (one mul per step, 1 round;
    docs/TRAINING.md says what this reveals).
    Returns this party's time, traffic and rounds for the epoch.
    """
    state = _state(party, model_key)
    images, labels = stored_dataset(party, dataset_id)
    order = np.asarray(order, dtype=np.int64)
    if order.ndim != 1 or (order.size and (order.min() < 0 or order.max() >= images.shape[0])):
        raise ValueError(f"{party.name}: batch order must be indices into the {images.shape[0]} examples")
    batch_size = int(batch_size)
    steps = order.size // batch_size
    if steps == 0:
        raise ValueError(f"{party.name}: {order.size} examples make no batch of {batch_size}")
    before = party.channel.totals(online=True)
    start = time.perf_counter()
    reported = []
    for s in range(steps):
        idx = order[s * batch_size : (s + 1) * batch_size]
        x = _rows(party, images, idx)
        y = _rows(party, labels, idx)
        result = train_step(party, state, x, y, lr=lr, momentum=momentum)
        if report:
            p_true = mul(party, result.probabilities, y, tag="train:report")
            reported.append(p_true.sum(axis=1))
    if report:
        share = None if not party.computes else np.concatenate([r.value for r in reported])
        reveal_to(party, share, CLIENT, tag=REPORT_TAG)
    after = party.channel.totals(online=True)
    return {"steps": steps, "seconds": time.perf_counter() - start,
            "bytes_sent": after.bytes_sent - before.bytes_sent, "rounds": after.rounds - before.rounds}


def _rows(party: Party, share: AShare, idx: np.ndarray) -> AShare:
    if share.value is None:
        return AShare(None, party.index, (idx.size, *share.shape[1:]))
    return AShare(np.ascontiguousarray(share.value[idx]), party.index)


def op_train_export(party: Party, model_key: str, weight_tids: list) -> None:
    """Store the current weights as tensors `weight_tids[i][k]` (to reveal or to serve)."""
    state = _state(party, model_key)
    for i, w in enumerate(state.weights):
        for k, share in w.items():
            party.store[("tensor", weight_tids[i][k])] = share


def op_train_end(party: Party, model_key: str) -> None:
    party.store.pop(("training", model_key), None)


TRAINING_OPS = {name[3:]: fn for name, fn in globals().items() if name.startswith("op_train") and callable(fn)}
