"""Model import: every format against the frameworks' own outputs, errors, shipped model accuracy.

The fixtures and expected outputs are committed (tests/fixtures/make_fixtures.py
wrote them with Keras 3 and PyTorch); no framework is needed here, except by
the from_keras/from_torch tests, which skip without one.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from pysmpc.graph import run_fixed_point, run_float
from pysmpc.models import load_graph, load_samples, read_idx, shipped_model_path

FIXTURES = Path(__file__).resolve().parent / "fixtures"
MNIST = Path(os.environ.get("PYSMPC_MNIST_DIR", Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"))
EXPECTED = np.load(FIXTURES / "expected.npz")

KERAS_FILES = ["tiny_keras2.hdf5", "tiny_keras3.h5", "tiny.keras"]
ONNX_FILES = ["tiny_torch.onnx", "tiny_torch_legacy.onnx"]
KINDS = ["conv2d", "relu", "conv2d", "relu", "max_pool2d", "flatten", "dense", "relu", "dense"]
# ONNX flattens C-H-W: the NHWC graph transposes (locally, free on shares) before it flattens.
ONNX_KINDS = ["conv2d", "relu", "conv2d", "relu", "max_pool2d", "transpose", "flatten", "dense", "relu", "dense"]


def softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def load(name):
    if name.endswith(".onnx"):
        pytest.importorskip("onnx")
    return load_graph(FIXTURES / name)


@pytest.mark.parametrize("name", KERAS_FILES + ONNX_FILES)
def test_format_matches_framework_outputs(name):
    framework = "torch" if name.endswith(".onnx") else "keras"
    graph = load(name)
    x = EXPECTED["x"]
    logits = run_float(graph, x)
    np.testing.assert_allclose(logits, EXPECTED[f"{framework}_logits"], atol=1e-4,
                               err_msg=f"{name}: input shape {x.shape}")
    np.testing.assert_allclose(softmax(logits), EXPECTED[f"{framework}_probs"], atol=1e-4)
    assert [layer.kind for layer in graph.layers] == (ONNX_KINDS if name.endswith(".onnx") else KINDS), graph.summary()
    assert graph.input_shape == (12, 12, 2) and graph.output_shape() == (3,)
    fixed = run_fixed_point(graph, x, frac_bits=16)
    assert np.abs(fixed - logits).max() < 1e-3
    assert str(FIXTURES / name) == graph.source


@pytest.mark.parametrize("name", KERAS_FILES + ONNX_FILES)
def test_final_softmax_dropped_with_note(name):
    notes = load(name).notes
    assert any("softmax" in n.lower() and "client applies" in n for n in notes), notes


@pytest.mark.parametrize("name, folded", [
    ("tiny_keras2.hdf5", ["'batch_normalization' folded into 'conv2d'", "'batch_normalization_1' folded into 'dense'"]),
    ("tiny_keras3.h5", ["'bn_a' folded into 'conv_a'", "'bn_b' folded into 'fc1'"]),
    ("tiny.keras", ["'bn_a' folded into 'conv_a'", "'bn_b' folded into 'fc1'"]),
    ("tiny_torch_legacy.onnx", ["BatchNormalization' folded into '/net/net.8/Gemm'"]),
])
def test_batch_norm_folded_with_note(name, folded):
    notes = " | ".join(load(name).notes)
    for needle in folded:
        assert needle in notes, notes


@pytest.mark.parametrize("name, layout", [("tiny_keras2.hdf5", "Keras 2"), ("tiny_keras3.h5", "Keras 3")])
def test_hdf5_layout_detected(name, layout):
    assert load(name).notes[0] == f"read as a {layout} HDF5 file"


@pytest.mark.parametrize("name, needles", [
    ("unsupported_lambda.h5", ["'double'", "class Lambda", "supported layers: InputLayer, Conv2D"]),
    ("unsupported_dilation.keras", ["'dilated'", "class Conv2D", "dilation"]),
    ("unsupported_leaky.onnx", ["op type LeakyRelu", "supported ops: Conv", "'node_leaky_relu'"]),
])
def test_unsupported_layer_error_names_it(name, needles):
    with pytest.raises(ValueError) as info:
        load(name)
    for needle in needles:
        assert needle in str(info.value), str(info.value)


def edited_keras2(tmp_path, edit):
    """Copy the Keras 2 fixture and apply ``edit`` to its layer config list."""
    path = tmp_path / "edited.hdf5"
    shutil.copyfile(FIXTURES / "tiny_keras2.hdf5", path)
    with h5py.File(path, "r+") as f:
        config = json.loads(f.attrs["model_config"])
        edit(config["config"]["layers"])
        f.attrs["model_config"] = json.dumps(config)
    return path


def test_batch_norm_after_activation_folds_into_the_conv_that_reads_it(tmp_path):
    def move_bn_after_relu(layers):
        layers[2], layers[3] = layers[3], layers[2]
    graph = load_graph(edited_keras2(tmp_path, move_bn_after_relu))
    kinds = [layer.kind for layer in graph.layers]
    assert kinds[:3] == ["conv2d", "relu", "conv2d"], graph.summary()  # conv2d_1 is unpadded: it takes it in
    assert "batch normalization 'batch_normalization' folded into 'conv2d_1' (it reads it)" in graph.notes


def test_softmax_before_the_last_layer_is_computed(tmp_path):
    def softmax_in_middle(layers):
        layers[4]["config"]["activation"] = "softmax"
    graph = load_graph(edited_keras2(tmp_path, softmax_in_middle))
    assert [layer.kind for layer in graph.layers][3:5] == ["softmax", "max_pool2d"], graph.summary()


def test_unsupported_activation_named(tmp_path):
    def elu(layers):
        layers[4]["config"]["activation"] = "elu"
    with pytest.raises(ValueError, match="'conv2d_1' of class Conv2D \\(activation 'elu'\\).*activations linear, relu"):
        load_graph(edited_keras2(tmp_path, elu))


@pytest.mark.parametrize("name", KERAS_FILES + ONNX_FILES)
def test_truncated_file_gives_clear_error(tmp_path, name):
    if name.endswith(".onnx"):
        pytest.importorskip("onnx")
    data = (FIXTURES / name).read_bytes()
    path = tmp_path / name
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="corrupt or truncated|missing|not valid"):
        load_graph(path)


@pytest.mark.parametrize("suffix", [".h5", ".hdf5", ".keras", ".onnx"])
def test_garbage_and_empty_files_give_clear_errors(tmp_path, suffix):
    if suffix == ".onnx":
        pytest.importorskip("onnx")
    path = tmp_path / f"garbage{suffix}"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 2000, dtype=np.uint8).tobytes())
    with pytest.raises(ValueError, match=str(path)):
        load_graph(path)
    path.write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        load_graph(path)


def test_missing_file_and_unknown_extension(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.h5"):
        load_graph(tmp_path / "nope.h5")
    (tmp_path / "model.pt").write_bytes(b"x")
    with pytest.raises(ValueError, match="unknown model format '.pt'"):
        load_graph(tmp_path / "model.pt")


def test_weights_only_hdf5_is_rejected(tmp_path):
    path = tmp_path / "weights.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("conv/kernel", data=np.zeros(3))
    with pytest.raises(ValueError, match="not a full Keras model file"):
        load_graph(path)


def test_read_idx_raw_and_gzip(tmp_path):
    values = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    raw = b"\x00\x00\x08\x03" + b"".join(int(d).to_bytes(4, "big") for d in values.shape) + values.tobytes()
    (tmp_path / "a-idx3-ubyte").write_bytes(raw)
    (tmp_path / "a-idx3-ubyte.gz").write_bytes(gzip.compress(raw))
    for name in ("a-idx3-ubyte", "a-idx3-ubyte.gz"):
        np.testing.assert_array_equal(read_idx(tmp_path / name), values)
    (tmp_path / "short").write_bytes(raw[:-1])
    with pytest.raises(ValueError, match="header says"):
        read_idx(tmp_path / "short")
    (tmp_path / "bad").write_bytes(b"\x12\x34\x08\x01" + raw[4:])
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "bad")


def test_shipped_samples():
    images, labels = load_samples()
    assert images.shape == (16, 28, 28, 1) and images.dtype == np.float64
    assert 0.0 <= images.min() and images.max() <= 1.0
    assert labels.shape == (16,) and set(labels) <= set(range(10))
    assert list(labels[:5]) == [7, 2, 1, 0, 4]  # the first MNIST test labels


def test_shipped_model_on_shipped_samples():
    graph = load_graph(shipped_model_path())
    assert graph.input_shape == (28, 28, 1) and graph.output_shape() == (10,)
    assert [layer.kind for layer in graph.layers] == ["conv2d", "avg_pool2d", "relu"] * 3 + ["flatten", "dense"]
    images, labels = load_samples()
    float_pred = run_float(graph, images).argmax(axis=1)
    fixed_pred = run_fixed_point(graph, images, frac_bits=16).argmax(axis=1)
    assert np.mean(float_pred == labels) >= 15 / 16, (float_pred, labels)
    np.testing.assert_array_equal(fixed_pred, float_pred)


@pytest.fixture(scope="module")
def mnist_test_1000():
    names = ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
    if not all((MNIST / n).exists() for n in names):
        pytest.skip(f"MNIST IDX files not found in {MNIST} (set PYSMPC_MNIST_DIR)")
    images = read_idx(MNIST / names[0])[:1000].astype(np.float64)[..., None] / 255.0
    return images, read_idx(MNIST / names[1])[:1000].astype(np.int64)


def test_shipped_model_accuracy_on_1000_mnist_test_images(mnist_test_1000):
    images, labels = mnist_test_1000
    graph = load_graph(shipped_model_path())
    logits = run_float(graph, images)
    fixed = run_fixed_point(graph, images, frac_bits=16)
    accuracy = np.mean(logits.argmax(axis=1) == labels)
    max_diff = np.abs(fixed - logits).max()
    print(f"float accuracy {accuracy:.4f}; fixed-point (F=16) max logit difference {max_diff:.2e}")
    assert accuracy >= 0.97
    np.testing.assert_array_equal(fixed.argmax(axis=1), logits.argmax(axis=1))
    assert max_diff < 1e-2


def test_from_keras_live():
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "torch":
        pytest.importorskip("tensorflow")
    from pysmpc.models import from_keras

    model = keras.models.load_model(FIXTURES / "tiny.keras")
    graph = from_keras(model)
    np.testing.assert_allclose(run_float(graph, EXPECTED["x"]), EXPECTED["keras_logits"], atol=1e-4)
    assert graph.source == "keras:tiny"


def test_from_torch_live():
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    from pysmpc.models import from_torch

    torch.manual_seed(0)
    nn = torch.nn
    net = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.AvgPool2d(2),
                        nn.Flatten(), nn.Linear(3 * 6 * 6, 4))
    net.train()
    with torch.no_grad():
        net[1].running_mean.uniform_(-0.5, 0.5)
        net[1].running_var.uniform_(0.5, 2.0)
    graph = from_torch(net, torch.zeros(1, 2, 12, 12))
    assert net.training  # mode restored
    x = np.random.default_rng(3).random((4, 12, 12, 2))
    with torch.no_grad():
        want = net.eval()(torch.tensor(x, dtype=torch.float32).permute(0, 3, 1, 2)).double().numpy()
    np.testing.assert_allclose(run_float(graph, x), want, atol=1e-4)


# -- branching models: Functional Keras (2 and 3), the new layers, PyTorch ONNX at opsets 13 and 21 -------
DAG = np.load(FIXTURES / "expected_dag.npz")
DAG_FILES = [("dag_keras3.keras", "keras_logits"), ("dag_keras3.h5", "keras_logits"),
             ("dag_keras2.hdf5", "keras_logits"), ("seq_keras3.keras", "seq_logits"),
             ("dag_torch13.onnx", "torch_logits"), ("dag_torch.onnx", "torch_logits")]


@pytest.mark.parametrize("name, key", DAG_FILES)
def test_branching_models_match_framework_outputs(name, key):
    graph = load(name)
    logits = run_float(graph, DAG["x"])
    np.testing.assert_allclose(logits, DAG[key], atol=1e-4, err_msg=f"{name}\n{graph.summary()}")
    assert np.abs(run_fixed_point(graph, DAG["x"]) - logits).max() < 1e-3
    kinds = {layer.kind for layer in graph.layers}
    if name.startswith("dag_keras"):
        assert {"add", "concat", "depthwise_conv2d", "clip", "sigmoid", "tanh", "softmax", "batch_norm",
                "zero_pad", "max_pool2d", "avg_pool2d", "global_avg_pool", "global_max_pool", "reshape"} <= kinds
        assert any("final softmax of 'out' dropped" in n for n in graph.notes), graph.notes
        # 'bn' reads an add and feeds a clip: it stays; 'bn_fc' (after a relu) folds into the dense reading it.
        assert "bn" in {layer.name for layer in graph.layers if layer.kind == "batch_norm"}
        assert "batch normalization 'bn_fc' folded into 'fc2' (it reads it)" in graph.notes
    elif name.startswith("dag_torch"):
        assert {"add", "concat", "depthwise_conv2d", "clip", "sigmoid", "tanh", "softmax", "zero_pad",
                "global_avg_pool", "global_max_pool"} <= kinds, graph.summary()
        # x * 0.5 + 0.1, - offset, / 2: one affine layer (the legacy exporter folds the BatchNorm2d itself).
        assert sum("merged into" in n for n in graph.notes) == 3, graph.notes


def test_keras3_weights_file_with_its_config():
    graph = load_graph(FIXTURES / "dag_keras3.weights.h5", config=FIXTURES / "dag_keras3.json")
    np.testing.assert_allclose(run_float(graph, DAG["x"]), DAG["keras_logits"], atol=1e-4)
    config = json.loads((FIXTURES / "dag_keras3.json").read_text())
    graph = load_graph(FIXTURES / "dag_keras3.weights.h5", config=config)  # a dict works as well
    np.testing.assert_allclose(run_float(graph, DAG["x"]), DAG["keras_logits"], atol=1e-4)
    with pytest.raises(ValueError, match="holds weights only; pass the model's config"):
        load_graph(FIXTURES / "dag_keras3.weights.h5")


def test_from_keras_functional_live():
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "torch":
        pytest.importorskip("tensorflow")
    from pysmpc.models import from_keras

    graph = from_keras(keras.models.load_model(FIXTURES / "dag_keras3.keras"))
    np.testing.assert_allclose(run_float(graph, DAG["x"]), DAG["keras_logits"], atol=1e-4)


@pytest.mark.parametrize("name", ["dag_keras3.keras", "seq_keras3.keras", "dag_torch.onnx"])
def test_branching_models_private_run_matches_plaintext(name):
    """LocalCluster: within the nonlinearities' documented bounds of the fixed-point twin, rounds as planned."""
    from pysmpc import LocalCluster
    from pysmpc.serve.model import Model

    graph = load(name)
    x = DAG["x"][:2]
    with LocalCluster() as cluster:
        shared = Model(graph).share(cluster)
        cluster.reset_stats()
        # The model takes its source's layout: NCHW for the ONNX one, as the PyTorch module does.
        logits = shared.predict(x.transpose(0, 3, 1, 2) if graph.input_layout == "NCHW" else x)
        stats = cluster.stats()["P1"]
    # sigmoid and tanh within 2^-13 and 2^-12, softmax 2^-13, each through a dense layer or two:
    # 5e-3 holds them with room; the float model is within the quantization error more.
    np.testing.assert_allclose(logits, run_fixed_point(graph, x), atol=5e-3)
    np.testing.assert_allclose(logits, run_float(graph, x), atol=1e-2)
    rounds = sum(s["rounds"] for t, s in stats.items() if not t.startswith(("dealer", "setup"))
                 and t not in ("input", "output"))
    assert rounds == sum(c.rounds for _, c in shared.cost(2))
    assert [(p["name"], p["rounds"]) for p in shared.profile] == [(n, c.rounds) for n, c in shared.cost(2)]


def keras2_dag_edited(tmp_path, edit):
    path = tmp_path / "dag_edited.hdf5"
    shutil.copyfile(FIXTURES / "dag_keras2.hdf5", path)
    with h5py.File(path, "r+") as f:
        config = json.loads(f.attrs["model_config"])
        edit(config["config"])
        f.attrs["model_config"] = json.dumps(config)
    return path


def test_unsupported_layer_in_a_functional_model_is_named(tmp_path):
    def leaky(config):
        layer = next(spec for spec in config["layers"] if spec["name"] == "relu4")
        layer["class_name"] = "LeakyReLU"
    with pytest.raises(ValueError, match="unsupported layer 'relu4' of class LeakyReLU; supported layers: InputLayer"):
        load_graph(keras2_dag_edited(tmp_path, leaky))

    def batch_axis(config):
        next(spec for spec in config["layers"] if spec["name"] == "cat")["config"]["axis"] = 0
    with pytest.raises(ValueError, match="'cat' of class Concatenate \\(axis 0 is the batch axis\\)"):
        load_graph(keras2_dag_edited(tmp_path, batch_axis))


def test_functional_model_with_two_outputs_or_a_shared_layer_is_refused(tmp_path):
    def two_outputs(config):
        config["output_layers"] = [["out", 0, 0], ["fc2", 0, 0]]
    with pytest.raises(ValueError, match="only one input and one output"):
        load_graph(keras2_dag_edited(tmp_path, two_outputs))

    def shared(config):
        layer = next(spec for spec in config["layers"] if spec["name"] == "conv")
        layer["inbound_nodes"] = layer["inbound_nodes"] * 2
    with pytest.raises(ValueError, match="'conv' of class Conv2D \\(a layer applied more than once"):
        load_graph(keras2_dag_edited(tmp_path, shared))


def test_onnx_opset_below_13_or_ops_redefined_after_21_are_refused():
    onnx = pytest.importorskip("onnx")
    from pysmpc.models.onnx_import import graph_from_onnx

    model = onnx.load(FIXTURES / "dag_torch.onnx")
    model.opset_import[0].version = 12
    with pytest.raises(ValueError, match="ONNX opset 12; supported opsets: 13 to 21"):
        graph_from_onnx(model)
    # Newer opsets: an op redefined after 21 (Conv, for new types at 22) is refused, naming it.
    model.opset_import[0].version = 22
    with pytest.raises(ValueError, match="of op type Conv \\(its definition at opset 22 is from opset 22"):
        graph_from_onnx(model)


def test_onnx_ops_the_graph_cannot_compute_exactly_are_refused():
    """Sub of two tensors, a per-sample reshape that mixes the batch, a reduction over channels."""
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    from pysmpc.models.onnx_import import graph_from_onnx

    def model(nodes, inits=()):
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
        return helper.make_model(helper.make_graph(nodes, "g", [x], [y], list(inits)),
                                 opset_imports=[helper.make_opsetid("", 17)])

    relu = helper.make_node("Relu", ["x"], ["r"], name="r")
    cases = [
        (model([relu, helper.make_node("Sub", ["x", "r"], ["y"], name="sub")]), "'sub' of op type Sub"),
        (model([helper.make_node("Reshape", ["x", "s"], ["y"], name="flat_all")],
               [helper.make_tensor("s", TensorProto.INT64, [1], [-1])]), "'flat_all' of op type Reshape"),
        (model([helper.make_node("ReduceMean", ["x", "a"], ["y"], name="cmean")],
               [helper.make_tensor("a", TensorProto.INT64, [1], [1])]), "'cmean' of op type ReduceMean"),
    ]
    for proto, needle in cases:
        with pytest.raises(ValueError, match=needle):
            graph_from_onnx(proto)


def test_from_torch_model_takes_nchw_and_export_options():
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnx")
    import pysmpc as sy

    torch.manual_seed(1)
    nn = torch.nn
    net = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 10 * 10, 4))
    x = np.random.default_rng(4).random((3, 2, 12, 12)).astype(np.float32)  # NCHW, as the module takes it
    with torch.no_grad():
        want = net(torch.from_numpy(x)).double().numpy()
    # dynamo=False: torch's TorchScript exporter, which names nodes '/0/Conv' (the default one: 'node_conv2d')
    model = sy.from_torch(net, x[:1], dynamo=False, opset_version=17)
    assert model.input_layout == "NCHW" and model.input_shape == (2, 12, 12)
    assert model.graph.layers[0].name == "/0/Conv", model.summary()
    np.testing.assert_allclose(model.predict(x), want, atol=1e-4)
    with pytest.raises(TypeError, match="sets f of torch.onnx.export itself"):
        sy.from_torch(net, x[:1], f="elsewhere.onnx")
    with pytest.raises(TypeError, match="takes a torch.nn.Module, got function"):
        sy.from_torch(lambda t: t, x[:1])


def test_a_recorded_input_range_is_read_from_hdf5_and_onnx(tmp_path):
    assert load_graph(shipped_model_path()).input_range == (0.0, 1.0)  # trained on pixels / 255
    assert load(KERAS_FILES[1]).input_range is None  # not recorded: unknown
    h5 = tmp_path / "ranged.h5"
    shutil.copyfile(FIXTURES / KERAS_FILES[1], h5)
    with h5py.File(h5, "r+") as f:
        f.attrs["pysmpc_input_range"] = np.array([-1.0, 1.0])
    assert load_graph(h5).input_range == (-1.0, 1.0)
    with h5py.File(h5, "r+") as f:
        f.attrs["pysmpc_input_range"] = np.array([1.0, 0.0])
    with pytest.raises(ValueError, match="pysmpc_input_range.*low < high"):
        load_graph(h5)
    onnx = pytest.importorskip("onnx")
    model = onnx.load(FIXTURES / ONNX_FILES[0])
    entry = model.metadata_props.add()
    entry.key, entry.value = "pysmpc_input_range", "0,255"
    onnx.save(model, tmp_path / "ranged.onnx")
    assert load_graph(tmp_path / "ranged.onnx").input_range == (0.0, 255.0)
