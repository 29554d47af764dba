"""Read Keras HDF5 model files (``model.save("model.h5")``) into a Graph, without Keras.

Two layouts exist; both keep the architecture as JSON in the root attribute
``model_config`` and the weights under ``model_weights/<layer name>``, whose
attribute ``weight_names`` lists each weight's path inside that group:

* Keras 2 (tf.keras): ``model_weights/conv2d/conv2d/kernel:0`` (names end
  in ``:0``; root attribute ``keras_version`` 2.x).
* Keras 3 legacy HDF5: ``model_weights/conv2d/<model name>/conv2d/kernel``
  (no ``:0``; ``keras_version`` 3.x).

A root attribute ``pysmpc_input_range`` (two numbers), where present, is
the input range the model was trained on (Graph.input_range).

Only h5py and json are used: no pickle, no code from the file runs.
"""

from __future__ import annotations

import os

import h5py
import numpy as np

from pysmpc.graph.graph import INPUT_RANGE_KEY, Graph, check_input_range
from pysmpc.models._errors import ModelFormatError
from pysmpc.models._keras import graph_from_keras, parse_config

__all__ = ["load_keras_h5"]

# What h5py raises on a corrupt file: OSError and RuntimeError from the HDF5
# library, KeyError for a missing object, TypeError/ValueError for data it cannot convert.
_H5_ERRORS = (OSError, RuntimeError, KeyError, TypeError, ValueError)


def _text(value) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray) and value.shape == ():
        return _text(value[()])
    return str(value)


def _layer_weights(group: h5py.Group, layer_name: str, source: str) -> dict:
    """Return {short name: float64 array} for one layer's group, using its weight_names."""
    out = {}
    try:
        if not isinstance(layer_name, str) or layer_name not in group:
            return {}
        layer_group = group[layer_name]
        for path in np.atleast_1d(layer_group.attrs.get("weight_names", [])):
            path = _text(path)
            if path not in layer_group:
                raise ModelFormatError(f"{source}: weight {path!r} of layer {layer_name!r} is listed but missing "
                                       "from the file")
            short = path.rsplit("/", 1)[-1].split(":", 1)[0]
            out[short] = np.asarray(layer_group[path][()], dtype=np.float64)
    except ModelFormatError:
        raise
    except _H5_ERRORS as exc:
        raise ModelFormatError(f"{source}: cannot read the weights of layer {layer_name!r}, the file is corrupt: "
                               f"{type(exc).__name__}: {str(exc)[:200]}") from None
    return out


def layout(f: h5py.File) -> str:
    """Return 'keras2' or 'keras3' for an open Keras HDF5 model file."""
    version = _text(f.attrs.get("keras_version", ""))
    if version.startswith("3"):
        return "keras3"
    if version.startswith(("2", "1")):
        return "keras2"
    weights = f.get("model_weights")
    for name in weights.attrs.get("layer_names", []) if weights is not None else []:
        for path in weights[_text(name)].attrs.get("weight_names", []):
            return "keras2" if _text(path).endswith(":0") else "keras3"
    return "keras3"


def load_keras_h5(path: str | os.PathLike) -> Graph:
    """Load a Keras 2 or Keras 3 HDF5 model file as a Graph.

    Raises:
        ModelFormatError: the file is corrupt or truncated (not HDF5, a
            malformed config, unreadable weights).
        ValueError: not a Keras model file (no ``model_config``, e.g. a
            weights-only file), or a layer is unsupported.
    """
    path = os.fspath(path)
    try:
        f = h5py.File(path, "r")
    except _H5_ERRORS as exc:
        raise ModelFormatError(f"{path}: cannot read as HDF5, the file is corrupt or truncated ({exc})") from None
    with f:
        try:
            is_model = "model_config" in f.attrs
            if is_model:
                text = _text(f.attrs["model_config"])
                kind = layout(f)
                group = f["model_weights"] if "model_weights" in f else f
                input_range = f.attrs.get(INPUT_RANGE_KEY)
        except _H5_ERRORS as exc:  # also UnicodeDecodeError, a ValueError
            raise ModelFormatError(f"{path}: cannot read the model config, the file is corrupt or truncated: "
                                   f"{type(exc).__name__}: {str(exc)[:200]}") from None
        if not is_model:
            raise ValueError(
                f"{path}: no 'model_config' attribute, so this is not a full Keras model file "
                f"(a weights-only file from save_weights?); save it with model.save()"
            )
        config = parse_config(text, path)

        def weights(spec: dict, index: int) -> dict:
            return _layer_weights(group, spec.get("config", {}).get("name", ""), path)

        graph = graph_from_keras(config, weights, source=path)
    graph.notes.insert(0, f"read as a {'Keras 2' if kind == 'keras2' else 'Keras 3'} HDF5 file")
    if input_range is not None:  # recorded with the file (examples/create_model.py writes it)
        graph.input_range = check_input_range(input_range, f"{path}: root attribute {INPUT_RANGE_KEY!r}")
    return graph
