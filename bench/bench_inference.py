"""Private inference of the shipped MNIST CNN: plaintext numpy and PyTorch, in-process and TCP, batch 1/64/256.

Run: pytest bench/bench_inference.py --benchmark-only
The PyTorch baseline is the same weights as a float32 module on one thread
(pysmpc.graph.to_torch, torch.set_num_threads(1)); it is skipped without torch.
Each timed prediction runs on the dealer's material made ahead by
SharedModel.prepare (offline, in pedantic's untimed setup). extra_info holds
images/s, the offline time per batch, online bytes per image (P0 + P1),
dealer bytes per image and online rounds per inference, from cluster.stats().
"""

import numpy as np
import pytest

import pysmpc as sy
from pysmpc.models import load_samples, shipped_model_path

BATCHES = [1, 64, 256]


@pytest.fixture(scope="module")
def model():
    return sy.load_model(shipped_model_path())


@pytest.fixture(scope="module")
def images():
    x, _ = load_samples()
    return np.concatenate([x] * 16)  # 256 real MNIST test images (16 distinct)


@pytest.mark.parametrize("batch", BATCHES)
def test_plaintext_numpy(benchmark, model, images, batch):
    benchmark.group = f"inference batch={batch}"
    benchmark(model.predict, images[:batch])
    benchmark.extra_info["images_per_s"] = batch / benchmark.stats.stats.mean


@pytest.mark.parametrize("batch", BATCHES)
def test_plaintext_pytorch(benchmark, time_pytorch, model, images, batch):
    benchmark.group = f"inference batch={batch}"
    time_pytorch(model.graph, images[:batch].transpose(0, 3, 1, 2))


@pytest.mark.parametrize("batch", BATCHES)
def test_secure(benchmark, time_prepared_predict, shared, images, batch):
    kind, cluster, shared_model = shared
    benchmark.group = f"inference batch={batch}"
    measured = time_prepared_predict(cluster, shared_model, images[:batch], rounds=3 if batch > 1 else 10)
    benchmark.extra_info.update(cluster=kind, images_per_s=batch / benchmark.stats.stats.mean, **measured)
