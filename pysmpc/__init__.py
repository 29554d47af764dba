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


def load_model(path, input_range=None) -> Model:
    """Load a Keras (.hdf5, .h5, .keras) or ONNX (.onnx) model file for private serving.

    input_range: (low, high), the values the model was trained on, e.g.
    (0, 1) for pixels divided by 255. The file's own record (the HDF5
    attribute or ONNX metadata entry "pysmpc_input_range") is used when
    present; this argument overrides it. Clients check their queries
    against it (a uint8 image is divided by 255 for a [0, 1] model, with a
    note; values outside it are refused).
    """
    from pysmpc.models import load_graph

    return Model(load_graph(path), input_range=input_range)


def from_keras(keras_model, input_range=None) -> Model:
    """Wrap a live Keras model (read through its config and weights); input_range as load_model."""
    from pysmpc.models import from_keras as _from_keras

    return Model(_from_keras(keras_model), input_range=input_range)


def from_torch(module, example_input, input_range=None) -> Model:
    """Wrap a live PyTorch module (exported to ONNX in memory, then imported); input_range as load_model."""
    from pysmpc.models import from_torch as _from_torch

    return Model(_from_torch(module, example_input), input_range=input_range)


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
