"""`pysmpc train-demo`: data owners share MNIST (non-IID), the cluster trains the seed CNN on shares."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from pysmpc.graph import backward as plain
from pysmpc.fl.data import load_mnist, non_iid_split
from pysmpc.fl.data_owner import DataOwner
from pysmpc.serve.training import SharedDataset, SharedTrainingModel

__all__ = ["TrainDemoConfig", "run_train_demo"]


@dataclass
class TrainDemoConfig:
    epochs: int = 5
    owners: int = 3
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    data_dir: str | None = None
    train_subset: int | None = None
    test_subset: int | None = None
    max_steps: int | None = None
    seed: int = 0
    progress: bool = True
    report: bool = False


@dataclass
class TrainDemoResult:
    accuracy: float
    images_per_second: float
    history: list


# Test images per private evaluation batch: large batches amortize the rounds.
_EVAL_BATCH = 500


def run_train_demo(cluster, cfg: TrainDemoConfig, log=print) -> TrainDemoResult:
    """Share the training set from `cfg.owners` owners, train from a shared random init, evaluate each epoch.

    After each epoch the model owner (this caller) evaluates the weights as
    they are, still shared: `SharedTrainingModel.shared_model()` runs the
    test set privately and reveals only the predicted labels to it. Nobody
    sees the weights, during or after the run.
    """
    x, y = load_mnist(cfg.data_dir, "train")
    xt, yt = load_mnist(cfg.data_dir, "test")
    if cfg.train_subset:
        x, y = x[: cfg.train_subset], y[: cfg.train_subset]
    if cfg.test_subset:
        xt, yt = xt[: cfg.test_subset], yt[: cfg.test_subset]
    rng = np.random.default_rng(cfg.seed)
    graph = plain.seed_cnn()
    data = SharedDataset.open(cluster, "mnist-train", (28, 28, 1), 10)
    counts = {}
    start = time.perf_counter()
    for k, idx in enumerate(non_iid_split(y, cfg.owners, rng)):
        name = f"hospital-{k}"
        counts[name] = DataOwner(cluster, name).share_dataset("mnist-train", x[idx], y[idx])
    data.close(counts)
    log(f"{cfg.owners} owners shared {data.size} images (non-IID: {', '.join(f'{k} {v}' for k, v in counts.items())})"
        f" in {time.perf_counter() - start:.1f} s")
    model = SharedTrainingModel(graph, cluster)
    accuracy = [0.0]

    def evaluate(epoch: int, entry: dict) -> None:
        shared = model.shared_model()  # a snapshot of the shared weights, served privately
        try:
            correct = 0
            for s in range(0, len(xt), _EVAL_BATCH):
                labels = shared.predict(xt[s : s + _EVAL_BATCH].astype(np.float64), reveal="argmax")
                correct += int((np.asarray(labels).reshape(-1) == yt[s : s + _EVAL_BATCH]).sum())
        finally:
            shared.stop()
        accuracy[0] = correct / len(xt)
        steps = max(entry["steps"], 1)
        extra = (f", train loss {entry['loss']:.3f}" if "loss" in entry else "")
        log(f"epoch {epoch}: test accuracy {accuracy[0]:.4f}, {entry['seconds']:.0f} s "
            f"({entry['images'] / entry['seconds']:.1f} images/s), per step {entry['bytes_sent'] / steps / 1e6:.1f} MB "
            f"sent by each computing party, {entry['rounds'] / steps:.0f} rounds{extra}")

    history = model.fit(data, epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, momentum=cfg.momentum,
                        report=cfg.report, progress=cfg.progress, seed=cfg.seed, on_epoch=evaluate,
                        max_steps=cfg.max_steps)
    images = sum(h["images"] for h in history)
    seconds = sum(h["seconds"] for h in history)
    model.end()
    return TrainDemoResult(accuracy[0], images / seconds, history)
