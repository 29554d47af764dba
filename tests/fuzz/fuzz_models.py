#!/usr/bin/env python3
"""atheris harness: the model readers and the query image reader on arbitrary files.

    python tests/fuzz/fuzz_models.py -max_total_time=60 -timeout=20

(add -fork=1 -ignore_timeouts=1 to go on past the HDF5 library's own
endless loops, which load_graph stops; see README.md)

The first byte picks the reader, the rest is the file:
0 Keras HDF5 (.h5), 1 Keras 3 archive (.keras), 2 ONNX (.onnx),
3/4 a Keras model config (JSON) read with the weights of the shipped
MNIST CNN / the tiny Keras 2 fixture, 5 a PNG image, 6 a .npy image.
A reader may return a Graph (which must validate) or an image (float64,
(H, W, C), finite, in [0, 1]), or raise ValueError (ModelFormatError,
GraphError); anything else is a finding. See README.md.
"""

from __future__ import annotations

import io
import os
import tempfile

import atheris

from _harness import REPO, run, use_working_copy

use_working_copy()
with atheris.instrument_imports(include=["pysmpc"]):
    import h5py
    import numpy as np

    from pysmpc.graph import Graph
    from pysmpc.models import shipped_model_path
    from pysmpc.models.loader import _read
    from pysmpc.models.keras_h5 import load_keras_h5
    from pysmpc.models.keras_v3 import load_keras_v3
    from pysmpc.models.onnx_import import load_onnx
    from pysmpc.models._keras import graph_from_keras, parse_config
    from pysmpc.models.keras_h5 import _layer_weights
    from pysmpc.serve.images import load_image

FIXTURES = REPO / "tests" / "fixtures"
MODEL_FILES = {0: (".h5", shipped_model_path()), 1: (".keras", FIXTURES / "tiny.keras"),
               2: (".onnx", FIXTURES / "tiny_torch.onnx")}
READERS = {0: load_keras_h5, 1: load_keras_v3, 2: load_onnx}
CONFIG_SOURCES = {3: shipped_model_path(), 4: FIXTURES / "tiny_keras2.hdf5"}
IMAGE_SUFFIX = {5: ".png", 6: ".npy"}
WORKDIR = tempfile.mkdtemp(prefix="pysmpc-fuzz-models-")
_weights = {mode: h5py.File(path, "r") for mode, path in CONFIG_SOURCES.items()}


def check_graph(graph) -> None:
    assert isinstance(graph, Graph)
    graph.validate()
    for layer in graph.layers:
        for w in layer.weights.values():
            assert np.isfinite(w).all()


def test_one_input(data: bytes) -> None:
    if not data:
        return
    mode, body = data[0] % 7, data[1:]
    try:
        if mode in MODEL_FILES or mode in IMAGE_SUFFIX:
            suffix = MODEL_FILES[mode][0] if mode in MODEL_FILES else IMAGE_SUFFIX[mode]
            path = os.path.join(WORKDIR, "input" + suffix)
            with open(path, "wb") as f:
                f.write(body)
            if mode in MODEL_FILES:
                # load_graph's own reading, in this process: a forked reader would hide its coverage
                # from the fuzzer. So an HDF5 file that loops (load_graph stops those) is a timeout here.
                check_graph(_read(READERS[mode], path))
            else:
                image = load_image(path)
                assert image.dtype == np.float64 and image.ndim == 3 and min(image.shape) >= 1
                assert np.isfinite(image).all() and 0 <= image.min() and image.max() <= 1
        else:
            f = _weights[mode]
            group = f["model_weights"] if "model_weights" in f else f

            def weights(spec, index):
                return _layer_weights(group, spec.get("config", {}).get("name", ""), "fuzz")

            check_graph(graph_from_keras(parse_config(body, "fuzz"), weights, source="fuzz"))
    except ValueError as exc:
        assert str(exc)


def seeds() -> list[bytes]:
    out = [bytes([mode]) + path.read_bytes() for mode, (_, path) in MODEL_FILES.items()]
    out.append(bytes([1]) + (FIXTURES / "unsupported_dilation.keras").read_bytes())
    out.append(bytes([0]) + (FIXTURES / "tiny_keras2.hdf5").read_bytes())
    out.append(bytes([2]) + (FIXTURES / "tiny_torch_legacy.onnx").read_bytes())
    for mode, path in CONFIG_SOURCES.items():
        with h5py.File(path, "r") as f:
            config = f.attrs["model_config"]
        out.append(bytes([mode]) + (config if isinstance(config, bytes) else config.encode()))
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    np.save(buffer, rng.integers(0, 256, (28, 28), dtype=np.uint8))
    out.append(bytes([6]) + buffer.getvalue())
    buffer = io.BytesIO()
    np.save(buffer, rng.uniform(0, 1, (28, 28, 1)))
    out.append(bytes([6]) + buffer.getvalue())
    out.append(bytes([5]) + _png(rng.integers(0, 256, (12, 9), dtype=np.uint8)))
    return out


def _png(pixels) -> bytes:
    """An 8-bit greyscale PNG, rows filtered with Sub, Up, Average and Paeth in turn."""
    import struct
    import zlib

    rows = []
    for y, row in enumerate(pixels.astype(np.int32)):
        rows.append(bytes([1 + y % 4]) + bytes(_filter(row, pixels[y - 1].astype(np.int32) if y else 0 * row,
                                                        1 + y % 4)))

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    h, w = pixels.shape
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"".join(rows))) + chunk(b"IEND", b""))


def _filter(row, up, kind):
    out = []
    for i, x in enumerate(row):
        left = row[i - 1] if i else 0
        up_left = up[i - 1] if i else 0
        if kind == 1:
            pred = left
        elif kind == 2:
            pred = up[i]
        elif kind == 3:
            pred = (left + up[i]) >> 1
        else:
            p = left + up[i] - up_left
            pa, pb, pc = abs(p - left), abs(p - up[i]), abs(p - up_left)
            pred = left if pa <= pb and pa <= pc else (up[i] if pb <= pc else up_left)
        out.append((int(x) - int(pred)) & 0xFF)
    return out


if __name__ == "__main__":
    run(test_one_input, seeds(), "models")
