"""Load a model into a Graph: from a file by extension, or from a live Keras/PyTorch model."""

from __future__ import annotations

import os
import struct
import tempfile
import zlib

import numpy as np

from pysmpc.graph.graph import Graph
from pysmpc.models._errors import ModelFormatError

__all__ = ["from_keras", "from_torch", "load_graph"]

_FORMATS = ".h5/.hdf5 (Keras 2 or 3 HDF5), .keras (Keras 3 archive), .onnx"
# What a parser library may raise on a malformed file that a reader did not
# turn into a clear error itself; load_graph reports these as ModelFormatError.
_MALFORMED = (OSError, RuntimeError, KeyError, IndexError, TypeError, AttributeError, OverflowError, EOFError,
              RecursionError, NotImplementedError, struct.error, zlib.error)


def load_graph(path: str | os.PathLike) -> Graph:
    """Load a model file as a Graph, choosing the reader by extension.

    ``.h5``/``.hdf5``: Keras HDF5 (Keras 2 and Keras 3 layouts are told
    apart from the file); ``.keras``: Keras 3 archive; ``.onnx``: ONNX.
    No code from the file runs.

    Raises:
        FileNotFoundError: no such file.
        ModelFormatError (a ValueError): a corrupt, truncated or malformed
            file; the message names the file (and the layer, where known).
        ValueError: unknown extension, or an unsupported layer (the message
            names it); GraphError (a ValueError): the layers' shapes do not fit.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"model file not found: {path}")
    ext = os.path.splitext(path)[1].lower()
    if os.path.getsize(path) == 0:
        raise ModelFormatError(f"{path}: the file is empty")
    if ext in (".h5", ".hdf5"):
        from pysmpc.models.keras_h5 import load_keras_h5 as reader
    elif ext == ".keras":
        from pysmpc.models.keras_v3 import load_keras_v3 as reader
    elif ext == ".onnx":
        from pysmpc.models.onnx_import import load_onnx as reader
    else:
        raise ValueError(f"{path}: unknown model format {ext!r}; supported: {_FORMATS}")
    try:
        return reader(path)
    except PermissionError:
        raise
    except _MALFORMED as exc:
        raise ModelFormatError(f"{path}: cannot read the model, the file is corrupt or malformed: "
                               f"{type(exc).__name__}: {str(exc)[:300]}") from None


def from_keras(model) -> Graph:
    """Convert a live Keras 3 model (any backend, no TensorFlow needed) to a Graph.

    Reads the model's config and its layers' weights (``get_weights``), then
    translates them as the file readers do.
    """
    from pysmpc.models._keras import graph_from_keras

    config = {"class_name": type(model).__name__, "config": model.get_config()}
    if config["class_name"] not in ("Sequential", "Functional"):
        config["class_name"] = "Functional" if "input_layers" in config["config"] else "Sequential"
    by_name = {layer.name: layer for layer in model.layers}

    def weights(spec: dict, index: int) -> dict:
        layer = by_name.get(spec.get("config", {}).get("name"))
        if layer is None:
            return {}
        names = [v.name.rsplit("/", 1)[-1].split(":", 1)[0] for v in layer.weights]
        return {n: np.asarray(w, dtype=np.float64) for n, w in zip(names, layer.get_weights())}

    shape = None
    try:
        shape = tuple(model.inputs[0].shape[1:])
    except (AttributeError, IndexError, TypeError, ValueError):
        pass
    return graph_from_keras(config, weights, source=f"keras:{model.name}", input_shape=shape)


def from_torch(module, example_input, **export_kwargs) -> Graph:
    """Convert a PyTorch module to a Graph by exporting it to ONNX in memory.

    The module is exported in eval mode (its mode is restored afterwards)
    with ``torch.onnx.export`` to a temporary file on ``example_input`` (NCHW, batch of 1 is
    enough), then read by the ONNX importer; the graph takes NHWC input.
    Needs ``torch`` and ``onnx`` (and ``onnxscript`` for torch's default
    exporter); ``export_kwargs`` go to ``torch.onnx.export``.
    """
    import torch

    from pysmpc.models.onnx_import import _onnx, graph_from_onnx

    onnx = _onnx()
    was_training = module.training
    module.eval()
    try:
        # torch deprecates exporting to a BytesIO, so go through a private temporary
        # directory; the exporter may put the weights in a side file next to the model.
        with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
            path = os.path.join(tmp, "model.onnx")
            torch.onnx.export(module, (example_input,), path, **export_kwargs)
            model = onnx.load(path)
    finally:
        module.train(was_training)
    return graph_from_onnx(model, source=f"torch:{type(module).__name__}")
