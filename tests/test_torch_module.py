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


def test_the_zoo_resnet20_with_residual_adds_matches_the_float_executor():
    from pathlib import Path

    zoo = Path(__file__).resolve().parent / "zoo"
    graph = load_graph(zoo / "resnet20.onnx")
    assert not graph.is_sequential()
    images = np.load(zoo / "resnet20_expected.npz")["images"][:8].astype(np.float64) / 255.0
    x = np.repeat(images[..., None], 3, axis=-1)  # NHWC, as the graph computes
    reference = run_float(graph, x)
    out = _run_torch(graph, x)
    assert out.shape == reference.shape == (8, 10)
    assert np.max(np.abs(out - reference)) <= 1e-4, np.max(np.abs(out - reference))
    np.testing.assert_allclose(_run_torch(graph, x, torch.float64), reference, atol=1e-10)


def branching_graph(rng) -> Graph:
    """Every kind to_torch knows, in two branches joined by a concat and a residual add."""
    def conv(name, k, cin, cout, inputs, **params):
        return Layer("conv2d", name, params, {"kernel": rng.normal(0, 0.4, (k, k, cin, cout)),
                                               "bias": rng.normal(0, 0.1, cout)}, inputs=inputs)
    return Graph((7, 6, 2), [
        conv("stem", 3, 2, 4, ["input"], padding="same"),
        Layer("batch_norm", "bn", {}, {"scale": rng.normal(1, 0.2, 4), "shift": rng.normal(0, 0.2, 4)}),
        Layer("relu", "stem_relu"),
        Layer("depthwise_conv2d", "dw", {"padding": "same"},
              {"kernel": rng.normal(0, 0.4, (2, 2, 4, 2)), "bias": rng.normal(0, 0.1, 8)}),
        Layer("clip", "relu6", {"lo": 0.0, "hi": 6.0}),
        conv("left", 1, 8, 4, ["relu6"]),
        Layer("avg_pool2d", "left_pool", {"pool": 2, "stride": 1, "padding": "same"}),
        conv("right", 3, 4, 4, ["stem_relu"], padding=(1, 0, 2, 1)),
        Layer("zero_pad", "right_pad", {"pads": (1, 0, 0, 0)}),
        Layer("max_pool2d", "right_pool", {"pool": 2, "stride": 1, "padding": (0, 1, 0, 0)}),
        Layer("tanh", "right_tanh", inputs=["right_pool"]),
        Layer("add", "residual", inputs=["left_pool", "stem_relu"]),
        Layer("sigmoid", "left_sigmoid"),
        Layer("concat", "cat", {"axis": 0}, inputs=["left_sigmoid", "right_tanh"]),
        Layer("batch_norm", "bn_hwc", {}, {"scale": rng.normal(1, 0.2, (1, 6, 4)),
                                                "shift": rng.normal(0, 0.2, (1, 6, 4))}),
        Layer("transpose", "t", {"perm": (2, 0, 1)}),
        Layer("reshape", "r", {"shape": (14, 4, 6)}),
        Layer("global_max_pool", "gmax", {"keepdims": True}),
        Layer("global_avg_pool", "gavg", {}, inputs=["r"]),
        Layer("flatten", "f", inputs=["gmax"]),
        Layer("concat", "cat_channels", {"axis": -1}, inputs=["residual", "right_tanh"]),
        Layer("avg_pool2d", "cat_pool", {"pool": 3}),
        Layer("flatten", "cat_flat"),  # (2, 2, 8): the dense weights below depend on the NHWC order
        Layer("concat", "joined", {"axis": -1}, inputs=["f", "gavg", "cat_flat"]),
        Layer("dense", "d", {}, {"kernel": rng.normal(0, 0.3, (44, 3)), "bias": rng.normal(0, 0.1, 3)}),
        Layer("softmax", "probs"),
    ])


def test_a_branching_graph_of_every_kind_matches_the_float_executor():
    rng = np.random.default_rng(3)
    graph = branching_graph(rng)
    x = rng.uniform(-1, 1, (4, *graph.input_shape))
    np.testing.assert_allclose(_run_torch(graph, x, torch.float64), run_float(graph, x), atol=1e-10)
    assert np.max(np.abs(_run_torch(graph, x) - run_float(graph, x))) <= 1e-5
