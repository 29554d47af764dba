"""The model zoo (tests/zoo): models trained by the real frameworks, imported and run privately.

Each model file was written by Keras 3 or by torch.onnx.export
(tests/zoo/make_zoo.py), with the framework's own outputs on the test
inputs in tests/zoo/<model>_expected.npz, so these tests need neither framework.
For each model: the plaintext import equals the framework's output
(max abs error <= 1e-4); the private run, on >= 1,000 inputs, gives the
plaintext argmax (or, for the sigmoid head, the same side of 1/2), and
its outputs stay within the truncation bound of the fixed-point model
(``truncation_bound``, tests/zoo/README.md); ``pysmpc inspect`` prints
each one's per-layer plan.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

import pysmpc as sy
from pysmpc.cli import main as cli_main
from pysmpc.graph import Graph
from pysmpc.protocols import sigmoid as sigmoid_protocol

ZOO = Path(__file__).resolve().parent / "zoo"
F = 16
UNIT = 2.0**-F
PLAIN_TOLERANCE = 1e-4  # issue 14: the import equals the framework's output to this


def _mnist_nhwc() -> np.ndarray:
    with np.load(ZOO / "mnist_test_1000.npz") as data:
        return (data["images"].astype(np.float64) / 255.0)[..., None]


def _expected(model: str, key: str) -> np.ndarray:
    with np.load(ZOO / f"{model}_expected.npz") as data:
        return data[key]


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


# file -> (inputs as the model takes them, key of the framework's output, what the graph outputs)
ZOO_MODELS = {
    "mnist_convnet.keras": ("mnist_nhwc", "mnist_convnet", "logits"),
    "mnist_convnet.h5": ("mnist_nhwc", "mnist_convnet", "logits"),
    "lenet5.onnx": ("mnist_nchw", "lenet5", "logits"),
    "mobilenet_mini.keras": ("mnist_nhwc", "mobilenet_mini", "logits"),
    "digits_mlp.keras": ("digits", "digits_mlp", "probs"),
}


def _inputs(kind: str) -> np.ndarray:
    if kind == "mnist_nhwc":
        return _mnist_nhwc()
    if kind == "mnist_nchw":
        return _mnist_nhwc().transpose(0, 3, 1, 2)
    return _expected("digits_mlp", "x").astype(np.float64)


def truncation_bound(graph: Graph, frac_bits: int = F) -> float:
    """The largest gap between a private run's outputs and run_fixed_point's that the protocols allow.

    run_fixed_point's contract: a secure run differs from it by at most one
    unit (2^-F) per truncation, propagated through later layers, and by the
    nonlinearities' ABS_ERROR. Carried per channel (the last axis), as the
    largest error over the other axes, in units: a product layer gives
    |weights| applied to the input's bounds, + 1 (conv: sum over the window
    and input channels; depthwise: over the window; dense: over the inputs;
    batch norm: |scale|); average pools keep the largest bound, + 1; relu
    and max pools are 1-Lipschitz, clip too and it caps the error at hi - lo;
    zero padding keeps the bounds, flatten gives each feature its channel's,
    transpose and reshape give every channel the largest;
    sigmoid gives E / 4 + its ABS_ERROR + the twin's half-unit rounding.
    """
    shapes = graph.tensor_shapes()
    bound = {graph.input_name: np.zeros(shapes[graph.input_name][-1])}
    sigmoid_units = sigmoid_protocol.ABS_ERROR * 2**frac_bits + 0.5
    for layer in graph.layers:
        e, kind = bound[layer.inputs[0]], layer.kind
        if kind == "conv2d":
            e = np.einsum("hwio,i->o", np.abs(layer.weights["kernel"]), e) + 1
        elif kind == "depthwise_conv2d":
            e = (np.abs(layer.weights["kernel"]).sum(axis=(0, 1)) * e[:, None]).reshape(-1) + 1
        elif kind == "dense":
            e = np.abs(layer.weights["kernel"]).T @ e + 1
        elif kind == "batch_norm":
            e = np.abs(layer.weights["scale"]) * e + 1
        elif kind in ("avg_pool2d", "global_avg_pool"):
            e = e + 1
        elif kind == "clip":
            lo, hi = layer.params["lo"], layer.params["hi"]
            e = e if lo is None or hi is None else np.minimum(e, (hi - lo) * 2**frac_bits)
        elif kind == "flatten":
            e = np.tile(e, int(np.prod(shapes[layer.inputs[0]][:-1])))  # NHWC order: channels vary fastest
        elif kind in ("transpose", "reshape"):  # channels may move: every channel takes the largest bound
            e = np.full(shapes[layer.name][-1], e.max())
        elif kind == "sigmoid":
            e = e / 4 + sigmoid_units
        elif kind not in ("relu", "max_pool2d", "global_max_pool", "zero_pad"):
            raise NotImplementedError(f"no bound for {kind} in this test: no zoo model has one")
        bound[layer.name] = e
    return float(bound[graph.output].max()) * 2.0**-frac_bits


@pytest.fixture(scope="module")
def cluster():
    # A chunk of 250 MobileNet inputs takes over 30 s (the default timeout) on a loaded 2-core machine.
    with sy.LocalCluster(timeout=600) as c:
        yield c


@pytest.mark.parametrize("file", list(ZOO_MODELS))
def test_plaintext_import_equals_the_frameworks_output(file):
    inputs, key, output = ZOO_MODELS[file]
    model = sy.load_model(ZOO / file)
    x = _inputs(inputs)
    assert len(x) >= 1000
    ours = model.predict(x)
    theirs = _expected(key, output)
    error = np.abs(ours - theirs).max()
    assert error <= PLAIN_TOLERANCE, f"{file}: plaintext import differs from the framework by {error:.2e}"
    if output == "logits" and file.endswith((".keras", ".h5")):
        # The Keras models end in Dense(softmax): the importer drops it (noted) and the
        # softmax of its logits is the framework's own output.
        assert any("softmax" in note for note in model.graph.notes), model.graph.notes
        error = np.abs(_softmax(ours) - _expected(key, "probs")).max()
        assert error <= PLAIN_TOLERANCE, f"{file}: softmax of the logits differs by {error:.2e}"


def _private(shared, x, chunk: int, reveal: str) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    out = np.concatenate([shared.predict(x[i:i + chunk], reveal=reveal) for i in range(0, len(x), chunk)])
    return out, time.perf_counter() - start


def _check_private_run(file: str, cluster, count: int, chunk: int = 250) -> None:
    """Run `count` inputs privately: same argmax (or side of 1/2) as plaintext, outputs within the bound."""
    inputs, _, output = ZOO_MODELS[file]
    model = sy.load_model(ZOO / file)
    x = _inputs(inputs)[:count]
    private, seconds = _private(model.share(cluster), x, chunk, "logits")
    plain = model.predict(x)
    fixed = model.predict_fixed_point(x)
    bound = truncation_bound(model.graph)
    gap = np.abs(private - fixed).max()
    float_gap = np.abs(private - plain).max()
    print(f"{file}: {len(x)} inputs privately in {seconds:.1f} s; |private - fixed point| {gap:.2e} "
          f"(bound {bound:.2e}); |private - float| {float_gap:.2e}")
    assert gap <= bound, f"{file}: private outputs differ from the fixed-point model by {gap:.2e} > {bound:.2e}"
    if output == "logits":
        mismatched = np.flatnonzero(private.argmax(axis=1) != plain.argmax(axis=1))
        top2 = np.sort(plain, axis=1)[:, -2:]
        assert not len(mismatched), (f"{file}: private argmax differs on inputs {mismatched[:20]}, plaintext "
                                     f"top-2 margins {(top2[mismatched, 1] - top2[mismatched, 0])[:20]}")
    else:
        mismatched = np.flatnonzero((private > 0.5) != (plain > 0.5))
        assert not len(mismatched), (f"{file}: private class differs on inputs {mismatched[:20]}: "
                                     f"{private[mismatched][:20]}")


def _check_private_argmax(file: str, cluster, count: int, chunk: int = 250) -> None:
    """The secure argmax protocol (reveal="argmax": labels only) gives the plaintext argmax."""
    inputs, _, _ = ZOO_MODELS[file]
    model = sy.load_model(ZOO / file)
    x = _inputs(inputs)[:count]
    labels, seconds = _private(model.share(cluster), x, chunk, "argmax")
    print(f"{file}: secure argmax of {len(x)} inputs in {seconds:.1f} s")
    mismatched = np.flatnonzero(labels != model.predict(x).argmax(axis=1))
    assert not len(mismatched), f"{file}: secure argmax differs from plaintext on inputs {mismatched[:20]}"


# The default suite runs every model privately: LeNet-5, MobileNet and the MLP on all
# their test inputs, the convnet on a quarter (its relu over 21,632 activations per
# image and its max pools dominate: about 45 s for 1,000 on two idle cores); the slow
# tests run all 1,000 on the convnet, from both files, and the secure argmax of each.
def test_private_lenet5_onnx_on_1000_inputs(cluster):
    _check_private_run("lenet5.onnx", cluster, 1000)


def test_private_mobilenet_mini_keras_on_1000_inputs(cluster):
    _check_private_run("mobilenet_mini.keras", cluster, 1000)


def test_private_digits_mlp_keras_on_1797_inputs(cluster):
    _check_private_run("digits_mlp.keras", cluster, 1797, chunk=1797)


def test_private_mnist_convnet_keras(cluster):
    _check_private_run("mnist_convnet.keras", cluster, 250)


def test_secure_argmax_of_lenet5(cluster):
    _check_private_argmax("lenet5.onnx", cluster, 250)


@pytest.mark.slow
@pytest.mark.parametrize("file", ["mnist_convnet.keras", "mnist_convnet.h5"])
def test_private_convnet_on_1000_inputs(file, cluster):
    _check_private_run(file, cluster, 1000)


@pytest.mark.slow
@pytest.mark.parametrize("file", ["mnist_convnet.keras", "lenet5.onnx", "mobilenet_mini.keras"])
def test_secure_argmax_on_1000_inputs(file, cluster):
    _check_private_argmax(file, cluster, 1000)


@pytest.mark.parametrize("file", list(ZOO_MODELS))
def test_inspect_prints_each_layers_plan(file, capsys):
    assert cli_main(["inspect", str(ZOO / file)]) == 0
    out = capsys.readouterr().out
    model = sy.load_model(ZOO / file)
    plan_rows = [line.split()[0] for line in out.split("secure cost per inference")[1].splitlines()[2:]]
    names = [name for name, _ in model.cost(1)]
    assert plan_rows == names + ["total"], out
    for layer in model.graph.layers:
        assert layer.name in out, f"{file}: layer {layer.name} missing from the summary:\n{out}"
