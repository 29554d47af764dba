"""Input layouts (graph.layout): NCHW models from PyTorch/ONNX take NCHW at the Model and Client API."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import pysmpc as sy
from pysmpc.graph import Graph, GraphError, Layer
from pysmpc.graph.layout import batch_to_nhwc, check_layout, model_input_to_nhwc, shape_in_layout
from pysmpc.models import shipped_model_path

FIXTURES = Path(__file__).resolve().parent / "fixtures"
EXPECTED = np.load(FIXTURES / "expected.npz")  # x is NHWC (5, 12, 12, 2); torch_logits from the PyTorch model


def onnx_model() -> sy.Model:
    pytest.importorskip("onnx")
    return sy.load_model(FIXTURES / "tiny_torch.onnx")


def test_check_layout():
    assert check_layout("NCHW", 3) == "NCHW" and check_layout("NHWC", 1) == "NHWC"
    with pytest.raises(ValueError, match="input_layout must be one of 'NHWC', 'NCHW', got 'nchw'"):
        check_layout("nchw", 3)
    with pytest.raises(ValueError, match="'NCHW' is for image inputs.*has 1"):
        check_layout("NCHW", 1)


def test_graph_rejects_a_layout_that_does_not_fit_its_input():
    dense = Layer("dense", "fc", weights={"kernel": np.ones((4, 2)), "bias": np.zeros(2)})
    with pytest.raises(GraphError, match="'NCHW' is for image inputs"):
        Graph((4,), [dense], input_layout="NCHW")
    with pytest.raises(GraphError, match="input_layout must be one of"):
        Graph((4,), [dense], input_layout="CHW")


def test_shape_and_batch_conversion():
    assert shape_in_layout((28, 28, 1), "NCHW") == (1, 28, 28)
    assert shape_in_layout((28, 28, 1), "NHWC") == (28, 28, 1)
    assert shape_in_layout((784,), "NHWC") == (784,)
    x = np.arange(2 * 3 * 4 * 5, dtype=np.float64).reshape(2, 3, 4, 5)  # (N, C, H, W)
    before = x.copy()
    y = batch_to_nhwc(x, "NCHW")
    assert y.shape == (2, 4, 5, 3) and y.flags.c_contiguous
    assert y[1, 2, 3, 0] == x[1, 0, 2, 3]
    np.testing.assert_array_equal(x, before)  # the caller's array is not modified
    assert batch_to_nhwc(x, "NHWC") is x


def test_model_input_with_and_without_batch_axis():
    x = np.random.default_rng(0).random((3, 2, 12, 12))  # NCHW batch of a (12, 12, 2) graph
    np.testing.assert_array_equal(model_input_to_nhwc(x, (12, 12, 2), "NCHW"), x.transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(model_input_to_nhwc(x[0], (12, 12, 2), "NCHW"), x[0].transpose(1, 2, 0))
    view = x[:, :, ::-1]  # a non-contiguous view converts like its copy
    np.testing.assert_array_equal(model_input_to_nhwc(view, (12, 12, 2), "NCHW"),
                                  model_input_to_nhwc(view.copy(), (12, 12, 2), "NCHW"))
    nhwc = x.transpose(0, 2, 3, 1)
    assert model_input_to_nhwc(nhwc, (12, 12, 2), "NHWC").shape == nhwc.shape
    with pytest.raises(ValueError, match=r"input shape \(3, 12, 12, 2\) does not fit the model's NCHW input "
                                         r"\(2, 12, 12\).*looks channels-last.*x.transpose\(0, 3, 1, 2\)"):
        model_input_to_nhwc(nhwc, (12, 12, 2), "NCHW")
    with pytest.raises(ValueError, match=r"input shape \(2, 12\) does not fit"):
        model_input_to_nhwc(np.zeros((2, 12)), (12, 12, 2), "NCHW")


def test_keras_model_keeps_nhwc():
    model = sy.load_model(shipped_model_path())
    assert model.input_layout == "NHWC" and model.input_shape == (28, 28, 1)


def test_onnx_model_takes_nchw_like_pytorch():
    model = onnx_model()
    assert model.input_layout == "NCHW" and model.graph.input_layout == "NCHW"
    assert model.input_shape == (2, 12, 12) and model.graph.input_shape == (12, 12, 2)
    assert "callers pass NCHW (2, 12, 12)" in model.summary()
    x_nchw = EXPECTED["x"].transpose(0, 3, 1, 2)  # what the PyTorch model was given
    np.testing.assert_allclose(model.predict(x_nchw), EXPECTED["torch_logits"], atol=1e-4)
    np.testing.assert_allclose(model.predict(x_nchw[0]), EXPECTED["torch_logits"][0], atol=1e-4)
    np.testing.assert_allclose(model.predict_fixed_point(x_nchw), EXPECTED["torch_logits"], atol=1e-3)
    with pytest.raises(ValueError, match="looks channels-last"):
        model.predict(EXPECTED["x"])


def test_onnx_graph_with_flat_input_has_no_image_layout():
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    from pysmpc.models.onnx_import import graph_from_onnx

    w = numpy_helper.from_array(np.ones((4, 3), dtype=np.float32), "w")
    node = helper.make_node("MatMul", ["x", "w"], ["y"])
    graph = helper.make_graph([node], "flat", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])], [w])
    imported = graph_from_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert imported.input_shape == (4,) and imported.input_layout == "NHWC"


def test_shared_model_predicts_nchw_input():
    model = onnx_model()
    x_nchw = EXPECTED["x"][:2].transpose(0, 3, 1, 2)
    with sy.LocalCluster() as cluster:
        logits = model.share(cluster).predict(x_nchw)
        labels = model.shared.predict(x_nchw, reveal="argmax")
    np.testing.assert_allclose(logits, model.predict_fixed_point(x_nchw), atol=1e-3,
                               err_msg=f"input {x_nchw.shape}")
    np.testing.assert_array_equal(labels, EXPECTED["torch_logits"][:2].argmax(axis=1))


class RecordingCluster:
    """Stands in for a Cluster: records what Client.query_model would send to the workers."""

    def __init__(self):
        self.sent = None

    def submit_query(self, x, reveal, timeout):
        self.sent = x
        return np.zeros((x.shape[0], 3))


def test_client_transposes_nchw_queries_before_sharing():
    cluster = RecordingCluster()
    client = sy.Client().connect_to_model(batch_input_shape=(1, 2, 12, 12), batch_output_shape=(1, 3),
                                          cluster=cluster, input_layout="NCHW")
    x_nchw = EXPECTED["x"][:2].transpose(0, 3, 1, 2)
    assert client.query_model(x_nchw).shape == (2, 3)
    np.testing.assert_array_equal(cluster.sent, EXPECTED["x"][:2])  # the workers get NHWC
    client.query_model(x_nchw[0])
    np.testing.assert_array_equal(cluster.sent, EXPECTED["x"][:1])
    with pytest.raises(ValueError, match="does not fit the model's input"):
        client.query_model(EXPECTED["x"][:2])  # NHWC given to an NCHW client
    with pytest.raises(ValueError, match="'NCHW' is for image inputs"):
        sy.Client().connect_to_model(batch_input_shape=(1, 784), batch_output_shape=(1, 10), cluster=cluster,
                                     input_layout="NCHW")
    nhwc_client = sy.Client().connect_to_model(batch_input_shape=(1, 12, 12, 2), batch_output_shape=(1, 3),
                                               cluster=cluster)
    nhwc_client.query_model(EXPECTED["x"][:2])
    np.testing.assert_array_equal(cluster.sent, EXPECTED["x"][:2])
