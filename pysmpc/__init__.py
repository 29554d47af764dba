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


def load_model(path, input_range=None, config=None, frac_bits: int | None = None,
               relu_protocol: str = "bitplane", relu_bounds: dict | None = None) -> Model:
    """Load a Keras (.hdf5, .h5, .keras; .weights.h5 with its `config`) or ONNX (.onnx) model file for private serving.

    The Model takes inputs in the file's own layout: NHWC for Keras, NCHW
    for ONNX image models (``Model.input_layout``).

    input_range: (low, high), the values the model was trained on, e.g.
    (0, 1) for pixels divided by 255. The file's own record (the HDF5
    attribute or ONNX metadata entry "pysmpc_input_range") is used when
    present; this argument overrides it. Clients check their queries
    against it (a uint8 image is divided by 255 for a [0, 1] model, with a
    note; values outside it are refused).
    config: the model's config for a Keras 3 .weights.h5 file (its to_json(),
    as a path, JSON text or dict).
    frac_bits: the model's fixed-point fractional bits (default: the
    cluster's); see Model.calibrate.
    relu_protocol: "bitplane" or "fss"; relu_bounds: with "fss", each relu
    input's promised bits (see Model, Model.bound_relus).
    """
    from pysmpc.models import load_graph

    return Model(load_graph(path, config=config), input_range=input_range, frac_bits=frac_bits,
                 relu_protocol=relu_protocol, relu_bounds=relu_bounds)


def from_keras(keras_model, input_range=None) -> Model:
    """Wrap a live Keras model (read through its config and weights); input_range as load_model."""
    from pysmpc.models import from_keras as _from_keras

    return Model(_from_keras(keras_model), input_range=input_range)


def from_torch(module, example_input, input_range=None, **export_kwargs) -> Model:
    """Wrap a live PyTorch module: export it to ONNX, then import it.

    Args:
        module: a ``torch.nn.Module`` (exported in eval mode; its mode is restored).
        example_input: one input batch as the module takes it, e.g.
            ``torch.zeros(1, 1, 28, 28)`` (NCHW).
        export_kwargs: passed to ``torch.onnx.export``, e.g.
            ``opset_version=18`` or ``dynamo=False`` (torch's TorchScript exporter).

    The Model takes NCHW inputs like the module (``Model.input_layout``);
    input_range as load_model. Needs ``pip install 'pysmpc[torch]'``
    (torch, onnx, onnxscript).
    """
    from pysmpc.models import from_torch as _from_torch

    return Model(_from_torch(module, example_input, **export_kwargs), input_range=input_range)


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
