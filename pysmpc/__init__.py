"""pysmpc: secure multi-party computation for private machine learning.

Three parties compute on secret-shared fixed-point tensors; see
docs/PROTOCOL.md for the protocols and their costs.
"""

from pysmpc import ring
from pysmpc.runtime.cluster import ClusterError
from pysmpc.runtime.local import LocalCluster
from pysmpc.runtime.tensor import SharedTensor, conv2d, relu
from pysmpc.runtime.tcp import TcpCluster
from pysmpc.serve.client import Client
from pysmpc.serve.cluster import Cluster, Worker
from pysmpc.serve.model import Model, SharedModel
from pysmpc.sharing.fixedpoint import FixedPoint

__version__ = "0.1.0"


def load_model(path) -> Model:
    """Load a Keras (.hdf5, .h5, .keras) or ONNX (.onnx) model file for private serving.

    The Model takes inputs in the file's own layout: NHWC for Keras, NCHW
    for ONNX image models (``Model.input_layout``).
    """
    from pysmpc.models import load_graph

    return Model(load_graph(path))


def from_keras(keras_model) -> Model:
    """Wrap a live Keras model (read through its config and weights)."""
    from pysmpc.models import from_keras as _from_keras

    return Model(_from_keras(keras_model))


def from_torch(module, example_input, **export_kwargs) -> Model:
    """Wrap a live PyTorch module: export it to ONNX, then import it.

    Args:
        module: a ``torch.nn.Module`` (exported in eval mode; its mode is restored).
        example_input: one input batch as the module takes it, e.g.
            ``torch.zeros(1, 1, 28, 28)`` (NCHW).
        export_kwargs: passed to ``torch.onnx.export``, e.g.
            ``opset_version=18`` or ``dynamo=False`` (torch's TorchScript exporter).

    The Model takes NCHW inputs like the module (``Model.input_layout``).
    Needs ``pip install 'pysmpc[torch]'`` (torch, onnx, onnxscript).
    """
    from pysmpc.models import from_torch as _from_torch

    return Model(_from_torch(module, example_input, **export_kwargs))


__all__ = [
    "Client",
    "Cluster",
    "ClusterError",
    "FixedPoint",
    "LocalCluster",
    "Model",
    "SharedModel",
    "SharedTensor",
    "TcpCluster",
    "Worker",
    "conv2d",
    "from_keras",
    "from_torch",
    "load_model",
    "relu",
    "ring",
    "__version__",
]
