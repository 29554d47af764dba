"""Training the seed MNIST CNN on shares, beside plaintext training of the same model: images per second per step.

Run: pytest bench/bench_training.py --benchmark-only
One SGD step (momentum 0.9) at batch 64 and 128:
  numpy      graph.backward (float32 forward/backward) and the update, in this process
  pytorch    the same model as a float32 torch module (graph.to_torch), torch.set_num_threads(1)
  secure     SharedTrainingModel.fit on an in-process LocalCluster, one step per timed call, on a
             dataset of random images shared by two data owners
  secure-tcp the same over a loopback TcpCluster (three worker processes; owners connect to P0 and P1)
extra_info holds images/s and, for the secure step, the online bytes each
computing party sends, P2's bytes to P1 and the rounds, measured on the
channels (equal to graph.secure_train.cost_step, which tests assert).
"""

import numpy as np
import pytest

from pysmpc.graph import backward as plain

BATCHES = [64, 128]
LR, MOMENTUM = 0.1, 0.9


@pytest.fixture(scope="module")
def graph():
    g = plain.seed_cnn()
    plain.set_weights(g, plain.init_weights(g, np.random.default_rng(0), np.float64))
    return g


def _data(n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, 28, 28, 1), dtype=np.float32), rng.integers(0, 10, n)


@pytest.mark.parametrize("batch", BATCHES)
def test_plaintext_numpy(benchmark, graph, batch):
    x, y = _data(batch)
    weights = plain.get_weights(graph, np.float32)
    velocity = [{k: np.zeros_like(v) for k, v in w.items()} for w in weights]

    def step():
        _, grads = plain.loss_and_grads(graph, x, y, weights)
        for w, v, g in zip(weights, velocity, grads):
            for k in w:
                v[k] *= MOMENTUM
                v[k] += g[k]
                w[k] -= LR / batch * v[k]

    benchmark.group = f"training step batch={batch}"
    benchmark(step)
    benchmark.extra_info["images_per_s"] = batch / benchmark.stats.stats.mean


@pytest.mark.parametrize("batch", BATCHES)
def test_plaintext_pytorch(benchmark, graph, batch):
    torch = pytest.importorskip("torch")
    from pysmpc.graph import to_torch

    module = to_torch(graph).train()
    x_np, y_np = _data(batch)
    x = torch.from_numpy(np.ascontiguousarray(x_np.transpose(0, 3, 1, 2)))
    y = torch.from_numpy(y_np)
    opt = torch.optim.SGD(module.parameters(), lr=LR, momentum=MOMENTUM)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)

    def step():
        opt.zero_grad()
        torch.nn.functional.cross_entropy(module(x), y).backward()
        opt.step()

    benchmark.group = f"training step batch={batch}"
    try:
        benchmark(step)
    finally:
        torch.set_num_threads(threads)
    benchmark.extra_info["images_per_s"] = batch / benchmark.stats.stats.mean


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("transport", ["in-process", "tcp"])
def test_secure(benchmark, graph, batch, transport):
    from pysmpc.fl.data_owner import DataOwner
    from pysmpc.graph.secure_train import cost_step
    from pysmpc.kernels.warm import warm_up
    from pysmpc.runtime.local import LocalCluster
    from pysmpc.serve.training import SharedDataset, SharedTrainingModel

    warm_up()
    if transport == "tcp":
        from pysmpc.runtime.tcp import TcpCluster

        cluster = TcpCluster(ephemeral_ports=True, timeout=120.0)
    else:
        cluster = LocalCluster(timeout=120)
    with cluster:
        data = SharedDataset.open(cluster, "bench", (28, 28, 1), 10)
        counts = {}
        for k, name in enumerate(("owner-a", "owner-b")):
            x, y = _data(2 * batch, seed=k + 1)
            counts[name] = DataOwner(cluster, name).share_dataset("bench", x, y)
        data.close(counts)
        model = SharedTrainingModel(graph, cluster)
        model.fit(data, epochs=1, batch_size=batch, lr=LR, max_steps=1)  # first step: warm caches
        benchmark.group = f"training step batch={batch}"
        benchmark.pedantic(model.fit, args=(data,), kwargs=dict(epochs=1, batch_size=batch, lr=LR, max_steps=1,
                                                                steps_per_call=1), rounds=3, iterations=1)
        last = model.history[-1]
    cost = cost_step(graph, batch)
    benchmark.extra_info.update(images_per_s=batch / benchmark.stats.stats.mean, transport=transport,
                                online_bytes_sent_per_party=last["bytes_sent"], rounds=last["rounds"],
                                dealer_bytes=cost.dealer_bytes)
    assert (last["rounds"], last["bytes_sent"]) == (cost.rounds, cost.bytes_sent)
