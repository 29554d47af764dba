"""Federated training of a Graph across data owners, aggregated by the cluster.

Each data owner is its own ``Owner`` (its own PRG; with
``owner_processes``, its own process that loads its own data and submits
to the workers over TCP). The model owner drives an ``Aggregator``: it opens
a round, asks the owners to take part, and receives only the round's sum.
It never holds an owner's data or update. Two modes:

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
import os
import secrets
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from pysmpc.fl.aggregate import Aggregator, RoundRefused
from pysmpc.fl.dp import clip_and_sum, noise_multiplier_for
from pysmpc.fl.owner import Owner
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
    # owners
    owner_processes: bool = False     # each owner in its own process, submitting to the workers over TCP
    data_dir: str | None = None       # owner processes load their part of MNIST from here themselves
    tls_dir: str | None = None        # the owners' TLS directory (owner-NAME.pem/.key and ca.pem)
    owner_timeout: float = 300.0      # seconds an owner process may take for one round before it counts as dropped


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
    counted: list = field(default_factory=list)               # per round: names of the owners counted (last aggregation)
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
    """Which owners are asked to take part (dropout simulation); at least two are."""
    present = [rng.random() >= cfg.dropout for _ in range(cfg.owners)]
    while sum(present) < min(2, cfg.owners):
        present[int(rng.integers(cfg.owners))] = True
    return present


def owner_part(labels, cfg, index: int) -> np.ndarray:
    """Indices of owner `index`'s examples in the non-IID split (the same in every process)."""
    from pysmpc.fl.data import non_iid_split

    return non_iid_split(labels, cfg.owners, np.random.default_rng(cfg.seed), cfg.skew)[index]


def local_update(graph, weights, x, y, task: dict, rng, sampler, bar=None) -> list:
    """What an owner submits for `task`: its FedAvg weight change, or its DP-SGD sum of clipped gradients."""
    if task["mode"] == "dp":
        return _dp_owner_sum(graph, weights, x, y, task["q"], task["clip_norm"], sampler)
    cfg = FederatedConfig(local_epochs=task["local_epochs"], batch_size=task["batch_size"], lr=task["lr"],
                          momentum=task["momentum"])
    return _local_sgd(graph, weights, x, y, cfg, rng, bar)


class _OwnerInProcess:
    """An owner as an object of this process (tests, simulations): its own Owner, PRG, data and generators."""

    def __init__(self, cluster, name: str, data, seed: int, graph):
        self.owner = Owner(cluster, name)
        self.name = name
        self._x, self._y = data
        self._graph = graph
        self._rng = np.random.default_rng(seed)
        # The owner's sampling must be unpredictable to the model owner (amplification by sampling).
        self._sampler = np.random.default_rng(secrets.randbits(128))
        self.examples = len(self._x)
        self.classes = np.bincount(self._y, minlength=10).argsort()[::-1][:3].tolist()
        self._reply: dict | None = None

    def start_task(self, task: dict, bar=None) -> None:
        start = time.perf_counter()
        try:
            update = local_update(self._graph, task["weights"], self._x, self._y, task, self._rng, self._sampler, bar)
            receipt = self.owner.submit(task["round"], update)
            self._reply = {"ok": True, "bytes": sum(receipt.bytes_sent.values()),
                           "seconds": time.perf_counter() - start}
        except Exception as exc:  # noqa: BLE001 - an owner that fails is a dropout
            self._reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}

    def finish_task(self, timeout: float) -> dict:
        reply, self._reply = self._reply, None
        return reply or {"ok": False, "error": "no task was started"}

    def close(self) -> None:
        pass


class _OwnerProcess:
    """An owner in its own process: loads its own data, trains, submits its shares to P0 and P1 over TCP.

    The model owner sends it tasks (the round id and the current weights)
    on a pipe and hears back only whether it submitted; its update and
    data stay in that process.
    """

    def __init__(self, spec: dict, context):
        self.name = spec["name"]
        self._conn, child = context.Pipe()
        self._process = context.Process(target=_owner_main, args=(child, spec), name=f"pysmpc-owner-{self.name}",
                                        daemon=True)
        self._process.start()
        child.close()
        self.examples = None

    def wait_ready(self, timeout: float) -> None:
        if not self._conn.poll(timeout):
            raise RuntimeError(f"data owner {self.name} did not start within {timeout:g} s")
        hello = self._conn.recv()
        if "error" in hello:
            raise RuntimeError(f"data owner {self.name} failed to start: {hello['error']}")
        self.examples = hello["examples"]
        self.classes = hello["classes"]

    def start_task(self, task: dict, bar=None) -> None:
        self._conn.send(task)

    def finish_task(self, timeout: float) -> dict:
        try:
            if self._conn.poll(timeout):
                return self._conn.recv()
        except (EOFError, OSError):
            pass
        return {"ok": False, "error": f"no answer within {timeout:g} s (the owner process is gone or stalled)"}

    def close(self) -> None:
        try:
            self._conn.send(None)
        except (OSError, ValueError):
            pass
        self._process.join(timeout=5)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join()


def _owner_main(conn, spec: dict) -> None:
    """An owner process: load this owner's part of the training set, then train and submit per task."""
    try:
        from pysmpc.fl.data import load_mnist

        cfg = spec["config"]
        x_all, y_all = load_mnist(spec["data_dir"])
        if cfg.train_subset:
            x_all, y_all = x_all[: cfg.train_subset], y_all[: cfg.train_subset]
        part = owner_part(y_all, cfg, spec["index"])
        x, y = x_all[part], y_all[part]
        del x_all, y_all
        owner = Owner(spec["hosts"], spec["name"], tls_dir=spec["tls_dir"], timeout=60.0)
        graph = spec["graph"] or seed_cnn()
        rng = np.random.default_rng([cfg.seed, spec["index"]])
        sampler = np.random.default_rng(secrets.randbits(128))
        conn.send({"examples": len(x), "classes": np.bincount(y, minlength=10).argsort()[::-1][:3].tolist()})
    except Exception as exc:  # noqa: BLE001 - told to the model owner
        conn.send({"error": f"{type(exc).__name__}: {exc}"})
        return
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        start = time.perf_counter()
        try:
            update = local_update(graph, task["weights"], x, y, task, rng, sampler)
            receipt = owner.submit(task["round"], update)
            conn.send({"ok": True, "bytes": sum(receipt.bytes_sent.values()), "seconds": time.perf_counter() - start})
        except Exception as exc:  # noqa: BLE001 - a failed round is a dropout, told to the model owner
            conn.send({"ok": False, "error": f"{type(exc).__name__}: {exc}"})


_BLAS_THREADS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def _start_owners(cluster, cfg, train, graph, log) -> list:
    names = [f"hospital-{k}" for k in range(cfg.owners)]
    if not cfg.owner_processes:
        x_train, y_train = train
        if cfg.train_subset:
            x_train, y_train = x_train[: cfg.train_subset], y_train[: cfg.train_subset]
        owners: list = []
        for k, name in enumerate(names):
            part = owner_part(y_train, cfg, k)
            owners.append(_OwnerInProcess(cluster, name, (x_train[part], y_train[part]), cfg.seed * 1000 + k,
                                          graph or seed_cnn()))
        return owners
    import multiprocessing

    hosts = getattr(cluster, "hosts", None)
    if hosts is None:
        raise ValueError("owner processes submit over TCP: run the cluster as a TcpCluster")
    context = multiprocessing.get_context("spawn")  # no copy of this process's memory in the owners
    # Several owners share the machine's cores: one BLAS thread each (a spawned
    # child reads these when it imports numpy), else their threads thrash.
    saved = {var: os.environ.get(var) for var in _BLAS_THREADS}
    os.environ.update({var: os.environ.get(var) or "1" for var in _BLAS_THREADS})
    try:
        processes = [_OwnerProcess({"name": name, "index": k, "hosts": hosts, "tls_dir": cfg.tls_dir, "config": cfg,
                                 "data_dir": cfg.data_dir, "graph": graph}, context)
                  for k, name in enumerate(names)]
    finally:
        for var, value in saved.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value
    try:
        for process in processes:
            process.wait_ready(120.0)
    except BaseException:
        for process in processes:
            process.close()
        raise
    return processes


def run_federated(cluster, cfg: FederatedConfig, train, test, graph=None, log=print) -> FederatedResult:
    """Train ``graph`` (default: the seed CNN) across ``cfg.owners`` owners of a non-IID split of the training set.

    Args:
        cluster: a started LocalCluster or TcpCluster (the aggregator drives it).
        cfg: the run's settings. With ``cfg.owner_processes`` each owner is
            a process of its own that loads its part of MNIST from
            ``cfg.data_dir`` and submits to the workers over TCP (``train``
            is then not used, and may be None).
        train, test: (images NHWC float32, labels) pairs.
        graph: the model structure; weights start from He initialisation.
        log: called with one line per round.

    Returns:
        FederatedResult with per-round accuracy (and epsilon with DP, as
        the workers' accountant reports it).
    """
    start = time.perf_counter()
    if cfg.owners < 2:
        raise ValueError(f"secure aggregation needs at least 2 data owners (a sum of one is its update), got "
                         f"{cfg.owners}")
    rng = np.random.default_rng(cfg.seed)
    x_test, y_test = test
    if cfg.test_subset:
        x_test, y_test = x_test[: cfg.test_subset], y_test[: cfg.test_subset]
    owners = _start_owners(cluster, cfg, train, graph, log)
    graph = seed_cnn() if graph is None else graph
    try:
        return _train(cluster, cfg, owners, graph, rng, x_test, y_test, log, start)
    finally:
        for owner in owners:
            owner.close()


def _train(cluster, cfg, owners, graph, rng, x_test, y_test, log, start) -> FederatedResult:
    aggregator = Aggregator(cluster)
    weights = init_weights(graph, rng)
    shapes = [p.shape for p in _flat(weights)]
    result = FederatedResult()
    mix = ", ".join(f"{o.name}: {o.examples} images, {o.classes} most" for o in owners)
    where = "own processes, over TCP" if cfg.owner_processes else "objects of this process"
    log(f"{cfg.owners} data owners ({where}), non-IID split ({mix})")

    dp = cfg.epsilon is not None
    n_total = sum(o.examples for o in owners)  # public: each owner says how many examples it holds
    if dp:
        q = min(1.0, cfg.lot_size / n_total)
        steps_per_round = max(1, int(round(cfg.epochs_per_round / q)))
        total_steps = steps_per_round * cfg.rounds
        sigma = cfg.noise_multiplier or noise_multiplier_for(cfg.epsilon, cfg.delta, q, total_steps)
        series = aggregator.open_dp_series(noise_multiplier=sigma, clip_norm=cfg.clip_norm, sample_rate=q,
                                           epsilon=cfg.epsilon, delta=cfg.delta)
        result.noise_multiplier, result.sample_rate = sigma, q
        velocity = [np.zeros_like(p) for p in _flat(weights)]
        log(f"DP-SGD: budget epsilon {cfg.epsilon} at delta {cfg.delta}, fixed on the workers; q = {q:.4g} "
            f"(expected lot {q * n_total:.0f}), {total_steps} steps; noise multiplier sigma = {sigma:.4f} "
            f"(dp-accounting RDP); clip C = {cfg.clip_norm}; P0 and P1 each add noise std sigma*C = "
            f"{sigma * cfg.clip_norm:.4f}, so the revealed sum carries std {math.sqrt(2) * sigma * cfg.clip_norm:.4f}")
        work = total_steps
    else:
        work = cfg.rounds * len(owners)
    bar = None
    if cfg.progress:
        from tqdm import tqdm

        bar = tqdm(total=work, unit="step" if dp else "owner-round", file=sys.stderr, leave=False, desc="training")
        log_line = bar.write
    else:
        log_line = log

    def aggregate(task: dict, mean: bool, series_id=None):
        """One secure-aggregation round: open it, ask the present owners, reveal the sum."""
        present = _present(cfg, rng)
        round_id = aggregator.open_round(shapes, min_owners=2, series=series_id)
        task = {**task, "round": round_id, "weights": weights}
        asked = [o for o, p in zip(owners, present) if p]
        for owner in asked:
            owner.start_task(task)
        dropped = []
        for owner in asked:
            reply = owner.finish_task(cfg.owner_timeout)
            if not reply.get("ok"):
                dropped.append(owner.name)
                log_line(f"  {owner.name} dropped out of {round_id}: {reply.get('error')}")
            if bar is not None and not dp:
                bar.update(1)
        dropped += [o.name for o, p in zip(owners, present) if not p]
        try:
            return aggregator.reveal(round_id, mean=mean), sorted(dropped)
        except RoundRefused as exc:  # too few owners this time: no update, the training goes on
            log_line(f"  no update from {round_id}: {exc}")
            return None, sorted(dropped)

    for r in range(1, cfg.rounds + 1):
        round_start = time.perf_counter()
        agg_seconds, sent = 0.0, 0
        if dp:
            for _ in range(steps_per_round):
                rep, dropped = aggregate({"mode": "dp", "q": q, "clip_norm": cfg.clip_norm}, False, series)
                if rep is None:
                    continue
                agg_seconds += rep.seconds
                sent += 2 * max(rep.bytes_per_owner.values())
                lr, mom = np.float32(cfg.dp_lr), np.float32(cfg.dp_momentum)
                for p, v, g in zip(_flat(weights), velocity, rep.total):
                    v *= mom
                    v += (g / (q * n_total)).astype(np.float32)
                    p -= lr * v
                if bar is not None:
                    bar.update(1)
            result.epsilons.append(aggregator.series(series)["epsilon_spent"])
        else:
            task = {"mode": "fedavg", "local_epochs": cfg.local_epochs, "batch_size": cfg.batch_size, "lr": cfg.lr,
                    "momentum": cfg.momentum}
            rep, dropped = aggregate(task, True)
            if rep is not None:
                agg_seconds, sent = rep.seconds, 2 * max(rep.bytes_per_owner.values())
                _apply(weights, rep.total, 1.0)
        acc = accuracy(graph, weights, x_test, y_test)
        result.accuracies.append(acc)
        result.aggregation_seconds.append(agg_seconds)
        result.bytes_per_owner.append(sent)
        counted = rep.counted if rep is not None else []
        result.counted.append(counted)
        line = (f"round {r}/{cfg.rounds}: test accuracy {acc:.4f}; owners counted {counted}"
                + (f" (dropped {dropped})" if dropped else "")
                + f"; secure aggregation {sent / 1e3:.0f} kB per owner, {agg_seconds * 1e3:.0f} ms"
                + f"; round {time.perf_counter() - round_start:.1f} s")
        if dp:
            line += f"; epsilon {result.epsilons[-1]:.3f} (delta {cfg.delta}, from the workers' accountant)"
        log_line(line)
    if bar is not None:
        bar.close()
    result.steps = total_steps if dp else cfg.rounds
    result.seconds = time.perf_counter() - start
    result.weights = weights
    return result
