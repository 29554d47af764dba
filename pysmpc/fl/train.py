"""Federated training of a Graph across data owners, aggregated by the cluster.

Two modes, both with the owners' contributions summed by
``secure_aggregate`` so the model owner sees only sums:

* FedAvg (no DP): each round every present owner trains the current model
  locally (minibatch SGD with momentum, ``local_epochs`` over its own data)
  and sends its weight change; the model owner adds the mean change.
* DP-SGD (``epsilon`` set): each round runs ``epochs_per_round / q`` steps.
  At each step every owner Poisson-samples its examples with rate q, clips
  each example's gradient to norm C and sends the sum; P0 and P1 add noise
  std sigma*C each inside the cluster; the model owner divides the noisy sum
  by the expected lot size q*N and takes a momentum SGD step. sigma is set so
  that dp-accounting's RDP accountant gives epsilon <= the target at the
  last step (see ``pysmpc.fl.dp``).

Gradients come from ``pysmpc.graph.backward`` in float32.
"""

from __future__ import annotations

import math
import secrets
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from pysmpc.fl.aggregate import secure_aggregate
from pysmpc.fl.dp import PrivacyAccountant, clip_and_sum, noise_multiplier_for
from pysmpc.graph.backward import forward, init_weights, loss_and_grads, seed_cnn

__all__ = ["FederatedConfig", "FederatedResult", "accuracy", "run_federated"]


@dataclass
class FederatedConfig:
    """Settings of a federated run (defaults: the fl-demo's)."""

    owners: int = 3
    rounds: int = 10
    epsilon: float | None = None      # None: no DP (FedAvg)
    delta: float = 1e-5
    # FedAvg
    local_epochs: float = 1.0
    batch_size: int = 32
    lr: float = 0.05
    momentum: float = 0.9
    # DP-SGD
    clip_norm: float = 1.0
    lot_size: int = 2000              # expected examples per step over all owners (q = lot_size / N)
    epochs_per_round: float = 1.0
    dp_lr: float = 2.0
    dp_momentum: float = 0.9
    noise_multiplier: float | None = None  # DP: use this sigma instead of calibrating it to epsilon
    # data
    skew: float = 0.8                 # fraction of a class held by its main owner
    train_subset: int | None = None   # use the first N training images (quick runs)
    test_subset: int | None = None
    dropout: float = 0.0              # probability that an owner misses a round (or DP step)
    seed: int = 0                     # data split, initialisation and dropout simulation (not DP noise)
    progress: bool = True


@dataclass
class FederatedResult:
    accuracies: list = field(default_factory=list)   # test accuracy after each round
    epsilons: list = field(default_factory=list)     # epsilon after each round (DP)
    noise_multiplier: float | None = None
    sample_rate: float | None = None
    steps: int = 0
    seconds: float = 0.0
    aggregation_seconds: list = field(default_factory=list)   # per round
    bytes_per_owner: list = field(default_factory=list)       # per round: max over owners
    counted: list = field(default_factory=list)               # per round: owners counted (last aggregation)
    weights: list | None = None

    @property
    def accuracy(self) -> float:
        return self.accuracies[-1] if self.accuracies else float("nan")

    @property
    def epsilon(self) -> float | None:
        return self.epsilons[-1] if self.epsilons else None


def _flat(weights: list) -> list:
    return [w[k] for w in weights for k in ("kernel", "bias") if k in w]


def _apply(weights: list, deltas: list, scale: float) -> None:
    for w, d in zip(_flat(weights), deltas):
        w += np.asarray(d, dtype=w.dtype) * w.dtype.type(scale)


def accuracy(graph, weights, x, y, batch: int = 500) -> float:
    """Return the fraction of ``x`` whose argmax logit equals ``y``."""
    correct = 0
    for i in range(0, len(x), batch):
        logits, _ = forward(graph, x[i : i + batch], weights)
        correct += int((logits.argmax(axis=1) == y[i : i + batch]).sum())
    return correct / max(len(x), 1)


def _local_sgd(graph, weights, x, y, cfg, rng, bar) -> list:
    """Train a copy of the model on one owner's data; return the weight change."""
    local = [{k: v.copy() for k, v in w.items()} for w in weights]
    params = _flat(local)
    velocity = [np.zeros_like(p) for p in params]
    steps = max(1, int(cfg.local_epochs * len(x) / cfg.batch_size))
    order = np.concatenate([rng.permutation(len(x)) for _ in range(int(math.ceil(cfg.local_epochs)) + 1)])
    lr, mom = np.float32(cfg.lr), np.float32(cfg.momentum)
    for s in range(steps):
        idx = order[s * cfg.batch_size : (s + 1) * cfg.batch_size]
        _, grads = loss_and_grads(graph, x[idx], y[idx], local)
        for p, v, g in zip(params, velocity, _flat(grads)):
            v *= mom
            v += g / np.float32(len(idx))
            p -= lr * v
        if bar is not None:
            bar.update(1)
    return [p - q for p, q in zip(params, _flat(weights))]


def _dp_owner_sum(graph, weights, x, y, q, clip_norm, sampler, chunk: int = 256) -> list:
    """Poisson-sample an owner's examples with rate q; return the sum of their clipped gradients."""
    idx = np.flatnonzero(sampler.random(len(x)) < q)
    sums = [np.zeros_like(p) for p in _flat(weights)]
    for i in range(0, len(idx), chunk):
        part = idx[i : i + chunk]
        _, grads = loss_and_grads(graph, x[part], y[part], weights, per_example=True)
        clipped, _ = clip_and_sum(_flat(grads), clip_norm)
        for s, c in zip(sums, clipped):
            s += c
    return sums


def _present(cfg, rng) -> list:
    """Which owners take part (dropout simulation); at least min(2, owners) do."""
    present = [rng.random() >= cfg.dropout for _ in range(cfg.owners)]
    while sum(present) < min(2, cfg.owners):
        present[int(rng.integers(cfg.owners))] = True
    return present


def run_federated(cluster, cfg: FederatedConfig, train, test, graph=None, log=print) -> FederatedResult:
    """Train ``graph`` (default: the seed CNN) across ``cfg.owners`` owners of a non-IID split of ``train``.

    Args:
        cluster: a started LocalCluster or TcpCluster (the aggregator).
        cfg: the run's settings.
        train, test: (images NHWC float32, labels) pairs.
        graph: the model structure; weights start from He initialisation.
        log: called with one line per round.

    Returns:
        FederatedResult with per-round accuracy (and epsilon with DP).
    """
    from pysmpc.fl.data import non_iid_split

    start = time.perf_counter()
    rng = np.random.default_rng(cfg.seed)
    graph = seed_cnn() if graph is None else graph
    x_train, y_train = train
    x_test, y_test = test
    if cfg.train_subset:
        x_train, y_train = x_train[: cfg.train_subset], y_train[: cfg.train_subset]
    if cfg.test_subset:
        x_test, y_test = x_test[: cfg.test_subset], y_test[: cfg.test_subset]
    parts = non_iid_split(y_train, cfg.owners, rng, cfg.skew)
    owners = [(x_train[p], y_train[p]) for p in parts]
    weights = init_weights(graph, rng)
    result = FederatedResult()
    mix = ", ".join(f"owner {k}: {len(p)} images, {np.bincount(y_train[p], minlength=10).argsort()[::-1][:3].tolist()}"
                    " most" for k, p in enumerate(parts))
    log(f"{cfg.owners} data owners, non-IID split ({mix})")

    dp = cfg.epsilon is not None
    n_total = len(x_train)
    if dp:
        q = min(1.0, cfg.lot_size / n_total)
        steps_per_round = max(1, int(round(cfg.epochs_per_round / q)))
        total_steps = steps_per_round * cfg.rounds
        epsilon = cfg.epsilon
        assert epsilon is not None  # dp is on exactly when an epsilon is given
        sigma = cfg.noise_multiplier or noise_multiplier_for(epsilon, cfg.delta, q, total_steps)
        accountant = PrivacyAccountant(sigma, q, cfg.delta)
        result.noise_multiplier, result.sample_rate = sigma, q
        # The owners' sampling must be unpredictable to the model owner (amplification by sampling).
        samplers = [np.random.default_rng(secrets.randbits(128)) for _ in range(cfg.owners)]
        velocity = [np.zeros_like(p) for p in _flat(weights)]
        log(f"DP-SGD: target epsilon {cfg.epsilon} at delta {cfg.delta}; q = {q:.4g} (expected lot {q * n_total:.0f}), "
            f"{total_steps} steps; noise multiplier sigma = {sigma:.4f} (dp-accounting RDP); clip C = {cfg.clip_norm}; "
            f"P0 and P1 each add noise std sigma*C = {sigma * cfg.clip_norm:.4f}, so the revealed sum carries "
            f"std {math.sqrt(2) * sigma * cfg.clip_norm:.4f}")
        work = total_steps
    else:
        work = cfg.rounds * sum(max(1, int(cfg.local_epochs * len(o[0]) / cfg.batch_size)) for o in owners)
    bar = None
    if cfg.progress:
        from tqdm import tqdm

        bar = tqdm(total=work, unit="step", file=sys.stderr, leave=False, desc="training")
        log_line = bar.write
    else:
        log_line = log

    for r in range(1, cfg.rounds + 1):
        round_start = time.perf_counter()
        agg_seconds, sent = 0.0, 0
        if dp:
            for _ in range(steps_per_round):
                present = _present(cfg, rng)
                updates = [(lambda k=k: _dp_owner_sum(graph, weights, owners[k][0], owners[k][1], q, cfg.clip_norm,
                                                            samplers[k]))
                           if present[k] else None for k in range(cfg.owners)]
                total, rep = secure_aggregate(updates, cluster, noise_std=sigma * cfg.clip_norm, report=True,
                                              min_owners=min(2, cfg.owners))
                agg_seconds += rep.seconds
                sent += max(rep.bytes_per_owner.values())
                lr, mom = np.float32(cfg.dp_lr), np.float32(cfg.dp_momentum)
                for p, v, g in zip(_flat(weights), velocity, total):
                    v *= mom
                    v += (g / (q * n_total)).astype(np.float32)
                    p -= lr * v
                accountant.step()
                if bar is not None:
                    bar.update(1)
            result.epsilons.append(accountant.epsilon())
        else:
            present = _present(cfg, rng)
            deltas = [_local_sgd(graph, weights, *owners[k], cfg, rng, bar) if present[k] else None
                      for k in range(cfg.owners)]
            mean, rep = secure_aggregate(deltas, cluster, mean=True, report=True, min_owners=min(2, cfg.owners))
            agg_seconds, sent = rep.seconds, max(rep.bytes_per_owner.values())
            _apply(weights, mean, 1.0)
        acc = accuracy(graph, weights, x_test, y_test)
        result.accuracies.append(acc)
        result.aggregation_seconds.append(agg_seconds)
        result.bytes_per_owner.append(sent)
        result.counted.append(rep.counted)
        line = (f"round {r}/{cfg.rounds}: test accuracy {acc:.4f}; owners counted {rep.counted}"
                + (f" (dropped {rep.dropped})" if rep.dropped else "")
                + f"; secure aggregation {sent / 1e3:.0f} kB per owner, {agg_seconds * 1e3:.0f} ms"
                + f"; round {time.perf_counter() - round_start:.1f} s")
        if dp:
            line += f"; epsilon {result.epsilons[-1]:.3f} (delta {cfg.delta})"
        log_line(line)
    if bar is not None:
        bar.close()
    result.steps = total_steps if dp else cfg.rounds
    result.seconds = time.perf_counter() - start
    result.weights = weights
    return result
