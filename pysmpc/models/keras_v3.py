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
import json
import os
import zipfile

import h5py
import numpy as np

from pysmpc.graph.graph import Graph
from pysmpc.models._keras import graph_from_keras, model_layers, snake_case, v3_weight_names

__all__ = ["load_keras_v3"]


def load_keras_v3(path: str | os.PathLike) -> Graph:
    """Load a Keras 3 ``.keras`` model archive as a Graph.

    Raises:
        ValueError: not a valid archive (corrupt, truncated, missing member),
            or a layer is unsupported.
    """
    path = os.fspath(path)
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            for member in ("config.json", "model.weights.h5"):
                if member not in names:
                    raise ValueError(f"{path}: not a Keras 3 archive: member {member!r} missing (has {names})")
            config = json.loads(archive.read("config.json"))
            weights_bytes = archive.read("model.weights.h5")
    except zipfile.BadZipFile as exc:
        raise ValueError(f"{path}: not a valid .keras (zip) file, corrupt or truncated: {exc}") from None

    _, layer_specs = model_layers(config)
    folders: dict = {}
    used: dict = {}
    for spec in layer_specs:
        base = snake_case(spec.get("class_name", ""))
        used[base] = used.get(base, -1) + 1
        folders[id(spec)] = base if used[base] == 0 else f"{base}_{used[base]}"

    try:
        h5 = h5py.File(io.BytesIO(weights_bytes), "r")
    except OSError as exc:
        raise ValueError(f"{path}: model.weights.h5 inside the archive is not valid HDF5: {exc}") from None
    with h5:
        def weights(spec: dict, index: int) -> dict:
            name = spec.get("config", {}).get("name")
            key = f"layers/{folders[id(spec)]}/vars"
            if key not in h5:
                raise ValueError(f"{path}: weights of layer {name!r} not found at {key!r}")
            group = h5[key]
            stored = group.attrs.get("name")
            if stored is not None and (stored.decode() if isinstance(stored, bytes) else str(stored)) != name:
                raise ValueError(f"{path}: {key!r} holds layer {stored!r}, expected {name!r}")
            wanted = v3_weight_names(spec)
            if len(group) != len(wanted):
                raise ValueError(f"{path}: layer {name!r} has {len(group)} weights, expected {wanted}")
            return {w: np.asarray(group[str(i)][()], dtype=np.float64) for i, w in enumerate(wanted)}

        return graph_from_keras(config, weights, source=path)
