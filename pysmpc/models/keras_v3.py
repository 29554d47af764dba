"""Read Keras 3 ``.keras`` archives into a Graph, without Keras.

A ``.keras`` file is a zip with ``config.json`` (the model config),
``metadata.json`` and ``model.weights.h5``. In the weights file, the layers
of a Sequential or Functional model sit at ``layers/<folder>/vars/<i>``,
where <folder> is the snake_case class name, deduplicated in layer order
(``conv2d``, ``conv2d_1``, ...; Keras's own saving_lib does the same),
and <i> counts the layer's weights in creation order (kernel, bias; for
batch norm gamma, beta, moving_mean, moving_variance). Recent Keras also
stores the layer name as the ``name`` attribute of ``vars``; when present
it is checked.

Only zipfile, json and h5py are used: no code from the archive runs.
"""

from __future__ import annotations

import io
import os
import zipfile
import zlib

import h5py
import numpy as np

from pysmpc.graph.graph import Graph
from pysmpc.models._errors import ModelFormatError
from pysmpc.models._keras import graph_from_keras, model_layers, parse_config, snake_case, v3_weight_names

__all__ = ["load_keras_v3", "load_keras_weights"]

# Declared sizes above these are refused before anything is decompressed:
# a few kilobytes of zip can claim gigabytes (a zip bomb).
_MAX_CONFIG = 64 << 20
_MAX_WEIGHTS = 2 << 30
# What zipfile raises on a corrupt archive besides BadZipFile: a flipped
# "encrypted" flag (RuntimeError), an unknown compression method
# (NotImplementedError), bad deflate data (zlib.error), a short member (EOFError).
_ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, RuntimeError, NotImplementedError, zlib.error, EOFError,
               OSError, ValueError, OverflowError)
_H5_ERRORS = (OSError, RuntimeError, KeyError, TypeError, ValueError)


def _read_archive(path: str) -> tuple[bytes, bytes]:
    """Return the config.json and model.weights.h5 members of a .keras archive."""
    limits = {"config.json": _MAX_CONFIG, "model.weights.h5": _MAX_WEIGHTS}
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            members = []
            for member, limit in limits.items():
                if member not in names:
                    raise ModelFormatError(f"{path}: not a Keras 3 archive: member {member!r} missing "
                                           f"(has {names[:10]})")
                size = archive.getinfo(member).file_size
                if size > limit:
                    raise ModelFormatError(f"{path}: member {member!r} declares {size} bytes, more than the "
                                           f"{limit} bytes a model may have")
                members.append(archive.read(member))
    except ModelFormatError:
        raise
    except _ZIP_ERRORS as exc:
        raise ModelFormatError(f"{path}: not a valid .keras (zip) file, corrupt or truncated: "
                               f"{type(exc).__name__}: {str(exc)[:200]}") from None
    return members[0], members[1]


def load_keras_v3(path: str | os.PathLike) -> Graph:
    """Load a Keras 3 ``.keras`` model archive as a Graph.

    Raises:
        ModelFormatError: not a valid archive (corrupt, truncated, missing
            member, malformed config or weights).
        ValueError: a layer is unsupported.
    """
    path = os.fspath(path)
    config_bytes, weights_bytes = _read_archive(path)
    return _graph_from_weights_file(parse_config(config_bytes, path), io.BytesIO(weights_bytes), path,
                                    "model.weights.h5 inside the archive")



def _read_at_most(path, limit: int, cannot_read: str, too_large: str) -> bytes:
    """A file's bytes, refusing one over `limit` before holding more than limit + 1 of them."""
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as exc:
        raise ModelFormatError(f"{cannot_read}: {exc}") from None
    if len(data) > limit:
        raise ModelFormatError(too_large)
    return data


def load_keras_weights(path: str | os.PathLike, config) -> Graph:
    """Load a Keras 3 ``.weights.h5`` file (``model.save_weights``) with its model config.

    `config` is the model's config: a dict, JSON text, or the path of a
    JSON file (``model.to_json()``, or ``config.json`` from a ``.keras``
    archive). The weights file has the layout of the archive's
    ``model.weights.h5``.

    Raises:
        ModelFormatError: the weights file or the config is corrupt or
            malformed; ValueError: a layer is unsupported.
    """
    path = os.fspath(path)
    if isinstance(config, dict):
        config_dict, where = config, "the config"
    else:
        where = "the config"
        text = config
        if isinstance(config, os.PathLike) or (isinstance(config, str) and not config.lstrip().startswith("{")):
            where = os.fspath(config)
            text = _read_at_most(where, _MAX_CONFIG, f"{path}: cannot read its config {where}",
                                 f"{where}: a model config of more than {_MAX_CONFIG} bytes")
        config_dict = parse_config(text, where)
    data = _read_at_most(path, _MAX_WEIGHTS, f"{path}: cannot read the weights file",
                         f"{path}: more than the {_MAX_WEIGHTS} bytes a model may have")
    return _graph_from_weights_file(config_dict, io.BytesIO(data), path, "the weights file")


def _graph_from_weights_file(config: dict, weights_file, path: str, what: str) -> Graph:
    """Translate `config` with the weights of a Keras 3 weights file (layers/<folder>/vars/<i>)."""
    _, layer_specs = model_layers(config, path)
    folders: dict = {}
    used: dict = {}
    for spec in layer_specs:
        base = snake_case(spec.get("class_name", ""))
        used[base] = used.get(base, -1) + 1
        folders[id(spec)] = base if used[base] == 0 else f"{base}_{used[base]}"

    try:
        h5 = h5py.File(weights_file, "r")
    except _H5_ERRORS as exc:
        raise ModelFormatError(f"{path}: {what} is not valid HDF5: {exc}") from None
    with h5:
        def weights(spec: dict, index: int) -> dict:
            name = spec.get("config", {}).get("name")
            key = f"layers/{folders[id(spec)]}/vars"
            try:
                if key not in h5:
                    raise ModelFormatError(f"{path}: weights of layer {name!r} not found at {key!r}")
                group = h5[key]
                stored = group.attrs.get("name")
                if stored is not None and (stored.decode() if isinstance(stored, bytes) else str(stored)) != name:
                    raise ModelFormatError(f"{path}: {key!r} holds layer {stored!r}, expected {name!r}")
                wanted = v3_weight_names(spec)
                if len(group) != len(wanted):
                    raise ModelFormatError(f"{path}: layer {name!r} has {len(group)} weights, expected {wanted}")
                return {w: np.asarray(group[str(i)][()], dtype=np.float64) for i, w in enumerate(wanted)}
            except ModelFormatError:
                raise
            except _H5_ERRORS as exc:  # also UnicodeDecodeError, a ValueError
                raise ModelFormatError(f"{path}: cannot read the weights of layer {name!r} at {key!r}, the file "
                                       f"is corrupt: {type(exc).__name__}: {str(exc)[:200]}") from None

        return graph_from_keras(config, weights, source=path)
