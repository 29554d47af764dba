"""Backward pass: numerical gradients per layer kind and for the CNN, per-example gradients, PyTorch."""

from __future__ import annotations

import numpy as np
import pytest

from pysmpc.graph import Graph, Layer, run_float
from pysmpc.graph.backward import (
    backward,
    forward,
    get_weights,
    init_weights,
    loss_and_grads,
    seed_cnn,
    softmax_cross_entropy,
)


def _numeric_grad(f, arr, eps=1e-6):
    """Central differences of scalar f() with respect to every entry of arr (modified in place)."""
    grad = np.zeros_like(arr)
    flat, gflat = arr.reshape(-1), grad.reshape(-1)
    for k in range(flat.size):
        old = flat[k]
        flat[k] = old + eps
        up = f()
        flat[k] = old - eps
        down = f()
        flat[k] = old
        gflat[k] = (up - down) / (2 * eps)
    return grad


def _check_graph(graph, x, labels, weights, rtol=1e-5, atol=1e-7):
    """Analytic (summed and per-example) gradients of the summed loss equal numerical ones."""
    def total_loss():
        logits, _ = forward(graph, x, weights)
        return softmax_cross_entropy(logits, labels)[0].sum()

    loss, grads = loss_and_grads(graph, x, labels, weights)
    _, per_example = loss_and_grads(graph, x, labels, weights, per_example=True)
    logits, caches = forward(graph, x, weights)
    _, dlogits = softmax_cross_entropy(logits, labels)
    _, dx = backward(graph, caches, dlogits, weights, need_dx=True)
    np.testing.assert_allclose(dx, _numeric_grad(total_loss, x), rtol=rtol, atol=atol, err_msg="input gradient")
    for i, layer in enumerate(graph.layers):
        for key in layer.weights:
            numeric = _numeric_grad(total_loss, weights[i][key])
            np.testing.assert_allclose(grads[i][key], numeric, rtol=rtol, atol=atol,
                                       err_msg=f"layer {i} {layer.kind} {key}, x shape {x.shape}")
            assert per_example[i][key].shape == (len(x),) + numeric.shape
            np.testing.assert_allclose(per_example[i][key].sum(axis=0), grads[i][key], rtol=1e-10, atol=1e-12)
            # Per-example gradient n is the gradient of loss_n alone.
            for n in range(len(x)):
                _, single = loss_and_grads(graph, x[n : n + 1], labels[n : n + 1], weights)
                np.testing.assert_allclose(per_example[i][key][n], single[i][key], rtol=1e-10, atol=1e-12)


def _dense_head(shape, classes=3):
    return [Layer("flatten", "flat"),
            Layer("dense", "head", {}, {"kernel": np.zeros((int(np.prod(shape)), classes)), "bias": np.zeros(classes)})]


def _graph_with(layer, in_shape):
    out_shape = layer.output_shape(in_shape)
    return Graph(in_shape, [layer, *_dense_head(out_shape)])


def _random_weights(graph, rng):
    return [{k: rng.standard_normal(v.shape) * 0.5 for k, v in layer.weights.items()} for layer in graph.layers]


def _conv(stride, padding, cin=2, cout=3, k=3):
    return Layer("conv2d", "conv", {"stride": stride, "padding": padding},
                 {"kernel": np.zeros((k, k, cin, cout)), "bias": np.zeros(cout)})


@pytest.mark.parametrize(
    "layer",
    [
        _conv(1, "valid"),
        _conv(2, "valid"),
        _conv(1, "same"),
        _conv((2, 1), "same"),
        _conv(1, (1, 0, 2, 1)),
        _conv(2, (0, 2, 1, 0)),
        Layer("avg_pool2d", "pool", {"pool": 2}),
        Layer("avg_pool2d", "pool", {"pool": 3, "stride": 2}),  # overlapping windows, uncovered border
        Layer("max_pool2d", "pool", {"pool": 2}),
        Layer("max_pool2d", "pool", {"pool": 3, "stride": 1}),
        Layer("relu", "relu"),
    ],
    ids=lambda layer: f"{layer.kind}-{layer.params}",
)
def test_layer_gradients_match_numerical(layer):
    rng = np.random.default_rng(1)
    graph = _graph_with(layer, (7, 6, 2))
    x = rng.standard_normal((3, 7, 6, 2))  # continuous values: no ties in max pooling, no relu kinks
    labels = rng.integers(0, 3, 3)
    _check_graph(graph, x, labels, _random_weights(graph, rng))


def test_dense_and_softmax_gradients_match_numerical():
    rng = np.random.default_rng(2)
    graph = Graph((5,), [Layer("dense", "d1", {}, {"kernel": np.zeros((5, 4)), "bias": np.zeros(4)}),
                         Layer("relu", "r"),
                         Layer("dense", "d2", {}, {"kernel": np.zeros((4, 3)), "bias": np.zeros(3)})])
    _check_graph(graph, rng.standard_normal((4, 5)), rng.integers(0, 3, 4), _random_weights(graph, rng))


def test_cnn_gradients_match_numerical():
    """The seed CNN's layer sequence on a tiny input (14x14, so the numerical check stays fast)."""
    rng = np.random.default_rng(3)
    layers = [
        _conv(1, "valid", cin=1, cout=2), Layer("avg_pool2d", "p1", {"pool": 2}), Layer("relu", "r1"),
        Layer("conv2d", "c2", {}, {"kernel": np.zeros((3, 3, 2, 3)), "bias": np.zeros(3)}),
        Layer("max_pool2d", "p2", {"pool": 2}), Layer("relu", "r2"),
        Layer("flatten", "flat"),
        Layer("dense", "logits", {}, {"kernel": np.zeros((12, 4)), "bias": np.zeros(4)}),
    ]
    graph = Graph((14, 14, 1), layers)
    weights = _random_weights(graph, rng)
    _check_graph(graph, rng.random((2, 14, 14, 1)), np.array([0, 3]), weights)


def test_forward_matches_run_float():
    rng = np.random.default_rng(4)
    graph = seed_cnn()
    weights = init_weights(graph, rng, dtype=np.float64)
    for layer, w in zip(graph.layers, weights):
        layer.weights.update(w)
    x = rng.random((5, 28, 28, 1))
    np.testing.assert_allclose(forward(graph, x, get_weights(graph))[0], run_float(graph, x), rtol=1e-12, atol=1e-12)


def test_gradients_match_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    graph = seed_cnn()
    weights = init_weights(graph, rng, dtype=np.float64)
    x = rng.random((4, 28, 28, 1))
    labels = rng.integers(0, 10, 4)

    tx = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
    params = []
    h = tx
    for layer, w in zip(graph.layers, weights):
        if layer.kind == "conv2d":
            k = torch.tensor(w["kernel"].transpose(3, 2, 0, 1), requires_grad=True)  # HWIO -> OIHW
            b = torch.tensor(w["bias"], requires_grad=True)
            params.append((k, b))
            h = torch.nn.functional.conv2d(h, k, b)
        elif layer.kind == "avg_pool2d":
            h = torch.nn.functional.avg_pool2d(h, 2)
        elif layer.kind == "relu":
            h = torch.relu(h)
        elif layer.kind == "flatten":
            h = h.permute(0, 2, 3, 1).reshape(h.shape[0], -1)  # NHWC order
        else:
            k = torch.tensor(w["kernel"], requires_grad=True)
            b = torch.tensor(w["bias"], requires_grad=True)
            params.append((k, b))
            h = h @ k + b
    loss_t = torch.nn.functional.cross_entropy(h, torch.tensor(labels), reduction="sum")
    loss_t.backward()

    loss, grads = loss_and_grads(graph, x, labels, weights)
    assert abs(loss.sum() - loss_t.item()) < 1e-9
    ours = [g for g in grads if g]
    for (k, b), g, layer in zip(params, ours, [la for la in graph.layers if la.weights]):
        expected_k = k.grad.numpy()
        if layer.kind == "conv2d":
            expected_k = expected_k.transpose(2, 3, 1, 0)
        np.testing.assert_allclose(g["kernel"], expected_k, rtol=1e-9, atol=1e-11, err_msg=layer.name)
        np.testing.assert_allclose(g["bias"], b.grad.numpy(), rtol=1e-9, atol=1e-11, err_msg=layer.name)


def test_max_pool_and_strided_padded_conv_match_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(6)
    layer = _conv(2, (1, 2, 0, 1), cin=2, cout=3)
    # conv output: ((8 + 3 - 3) // 2 + 1, (7 + 1 - 3) // 2 + 1) = (5, 3); max pool 2 -> (2, 1, 3)
    graph = Graph((8, 7, 2), [layer, Layer("max_pool2d", "mp", {"pool": 2}), *_dense_head((2, 1, 3), 4)])
    weights = _random_weights(graph, rng)
    x = rng.standard_normal((3, 8, 7, 2))
    labels = rng.integers(0, 4, 3)
    _, grads = loss_and_grads(graph, x, labels, weights)

    tx = torch.tensor(x.transpose(0, 3, 1, 2))
    k = torch.tensor(weights[0]["kernel"].transpose(3, 2, 0, 1), requires_grad=True)
    b = torch.tensor(weights[0]["bias"], requires_grad=True)
    h = torch.nn.functional.pad(tx, (0, 1, 1, 2))  # (left, right, top, bottom)
    h = torch.nn.functional.max_pool2d(torch.nn.functional.conv2d(h, k, b, stride=2), 2)
    h = h.permute(0, 2, 3, 1).reshape(3, -1) @ torch.tensor(weights[3]["kernel"]) + torch.tensor(weights[3]["bias"])
    torch.nn.functional.cross_entropy(h, torch.tensor(labels), reduction="sum").backward()
    np.testing.assert_allclose(grads[0]["kernel"], k.grad.numpy().transpose(2, 3, 1, 0), rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(grads[0]["bias"], b.grad.numpy(), rtol=1e-9, atol=1e-11)


def test_float32_training_step_lowers_the_loss():
    rng = np.random.default_rng(7)
    graph = seed_cnn()
    weights = init_weights(graph, rng)
    x = rng.random((32, 28, 28, 1), dtype=np.float32)
    labels = rng.integers(0, 10, 32)
    before, grads = loss_and_grads(graph, x, labels, weights)
    assert grads[0]["kernel"].dtype == np.float32
    for w, g in zip(weights, grads):
        for key in w:
            w[key] -= 0.05 * g[key] / len(x)
    after, _ = loss_and_grads(graph, x, labels, weights)
    assert after.mean() < before.mean()
