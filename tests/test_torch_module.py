"""graph.to_torch: the graph as a PyTorch module with the same weights computes the same function."""

import numpy as np
import pytest

from pysmpc.graph import Graph, Layer, run_float, to_torch
from pysmpc.models import load_graph, load_samples, shipped_model_path

torch = pytest.importorskip("torch")


def _run_torch(graph: Graph, x: np.ndarray, dtype=None) -> np.ndarray:
    module = to_torch(graph, dtype=dtype)
    nchw = x.transpose(0, 3, 1, 2) if x.ndim == 4 else x
    with torch.inference_mode():
        return module(torch.from_numpy(np.ascontiguousarray(nchw)).to(dtype or torch.float32)).double().numpy()


def test_the_shipped_cnn_matches_the_float_executor():
    graph = load_graph(shipped_model_path())
    x, labels = load_samples()
    reference = run_float(graph, x)
    out = _run_torch(graph, x)
    assert out.shape == reference.shape == (16, 10)
    np.testing.assert_allclose(out, reference, atol=1e-4)  # float32 against float64
    assert (out.argmax(axis=1) == labels).all()
    np.testing.assert_allclose(_run_torch(graph, x, torch.float64), reference, atol=1e-10)


def test_padding_strides_max_pool_and_flatten_order():
    rng = np.random.default_rng(0)
    # 'same' with an even kernel pads unevenly (a ZeroPad2d); flatten of a 2 x 3 x 3 map must take
    # the graph's NHWC order, which the dense weights below depend on.
    graph = Graph(input_shape=(9, 8, 2), layers=[
        Layer("conv2d", "c1", {"stride": (2, 1), "padding": "same"},
              {"kernel": rng.normal(size=(2, 4, 2, 5)), "bias": rng.normal(size=5)}),
        Layer("relu", "r1"),
        Layer("conv2d", "c2", {"padding": (1, 0, 2, 1)},
              {"kernel": rng.normal(size=(3, 3, 5, 3)), "bias": rng.normal(size=3)}),
        Layer("max_pool2d", "m1", {"pool": (2, 3)}),
        Layer("avg_pool2d", "a1", {"pool": 1}),
        Layer("flatten", "f"),
        Layer("dense", "d", {}, {"kernel": rng.normal(size=(18, 4)), "bias": rng.normal(size=4)}),
    ])
    x = rng.random((5, 9, 8, 2))
    np.testing.assert_allclose(_run_torch(graph, x, torch.float64), run_float(graph, x), atol=1e-10)


def test_a_dense_only_graph_takes_flat_input():
    rng = np.random.default_rng(1)
    graph = Graph(input_shape=(7,), layers=[
        Layer("dense", "d1", {}, {"kernel": rng.normal(size=(7, 5)), "bias": rng.normal(size=5)}),
        Layer("relu", "r"),
        Layer("dense", "d2", {}, {"kernel": rng.normal(size=(5, 2)), "bias": rng.normal(size=2)}),
    ])
    x = rng.random((3, 7))
    np.testing.assert_allclose(_run_torch(graph, x, torch.float64), run_float(graph, x), atol=1e-10)
