"""Model import: Keras (HDF5, .keras, .weights.h5), ONNX and live Keras/PyTorch models into a Graph.

Readers use h5py, json and the onnx protobuf parser only: loading a file
never runs code from it.
"""

from pysmpc.models._errors import ModelFormatError
from pysmpc.models.loader import from_keras, from_torch, load_graph
from pysmpc.models.samples import load_samples, read_idx, shipped_model_path

__all__ = ["ModelFormatError", "from_keras", "from_torch", "load_graph", "load_samples", "read_idx",
           "shipped_model_path"]
