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


def load_model(path, config=None, frac_bits: int | None = None) -> Model:
    """Load a Keras (.hdf5, .h5, .keras; .weights.h5 with its `config`) or ONNX (.onnx) model file for private serving.

    frac_bits: the model's fixed-point fractional bits (default: the cluster's); see Model.calibrate.
    """
    from pysmpc.models import load_graph

    return Model(load_graph(path, config=config), frac_bits=frac_bits)


def from_keras(keras_model) -> Model:
    """Wrap a live Keras model (read through its config and weights)."""
    from pysmpc.models import from_keras as _from_keras

    return Model(_from_keras(keras_model))


def from_torch(module, example_input) -> Model:
    """Wrap a live PyTorch module (exported to ONNX in memory, then imported)."""
    from pysmpc.models import from_torch as _from_torch

    return Model(_from_torch(module, example_input))


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
