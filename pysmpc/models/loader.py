"""Load a model into a Graph: from a file by extension, or from a live Keras/PyTorch model."""

from __future__ import annotations

import os
import pickle
import select
import signal
import struct
import tempfile
import time
import zlib

import numpy as np

from pysmpc.graph.graph import Graph
from pysmpc.models._errors import ModelFormatError

__all__ = ["from_keras", "from_torch", "load_graph"]

_FORMATS = ".h5/.hdf5 (Keras 2 or 3 HDF5), .keras (Keras 3 archive), .weights.h5 (Keras 3 weights, with config=), .onnx"
# What a parser library may raise on a malformed file that a reader did not
# turn into a clear error itself; load_graph reports these as ModelFormatError.
_MALFORMED = (OSError, RuntimeError, KeyError, IndexError, TypeError, AttributeError, OverflowError, EOFError,
              RecursionError, NotImplementedError, struct.error, zlib.error)


# How long an HDF5 reader (.h5, .hdf5, .keras) may take before it is
# stopped: the HDF5 C library loops for ever on some corrupt files.
READ_TIMEOUT = 300.0


def load_graph(path: str | os.PathLike, timeout: float | None = None, config=None) -> Graph:
    """Load a model file as a Graph, choosing the reader by extension.

    ``.h5``/``.hdf5``: Keras HDF5 (Keras 2 and Keras 3 layouts are told
    apart from the file); ``.keras``: Keras 3 archive; ``.weights.h5``:
    Keras 3 weights (``save_weights``), with the model's `config` (its
    ``to_json()`` as a file path, JSON text or dict); ``.onnx``: ONNX.
    No code from the file runs. Where ``os.fork`` exists, files read with
    the HDF5 library are read in a child process, stopped after `timeout`
    seconds (default READ_TIMEOUT): that library can loop for ever or crash
    on a corrupt file.

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
    if path.lower().endswith(".weights.h5") or config is not None:
        if config is None:
            raise ValueError(f"{path}: a .weights.h5 file holds weights only; pass the model's config "
                             "(config=, its to_json() or the config.json of a .keras archive)")
        if ext != ".h5":
            raise ValueError(f"{path}: config= is for Keras 3 .weights.h5 files only")
        from pysmpc.models.keras_v3 import load_keras_weights

        def reader(path):  # a closure: the forked child calls it with the path alone
            return load_keras_weights(path, config)
    elif ext in (".h5", ".hdf5"):
        from pysmpc.models.keras_h5 import load_keras_h5

        reader = load_keras_h5
    elif ext == ".keras":
        from pysmpc.models.keras_v3 import load_keras_v3

        reader = load_keras_v3
    elif ext == ".onnx":
        from pysmpc.models.onnx_import import load_onnx

        reader = load_onnx
    else:
        raise ValueError(f"{path}: unknown model format {ext!r}; supported: {_FORMATS}")
    if ext != ".onnx" and hasattr(os, "fork"):
        return _read_in_child(reader, path, READ_TIMEOUT if timeout is None else timeout)
    return _read(reader, path)


def _read(reader, path: str) -> Graph:
    try:
        return reader(path)
    except PermissionError:
        raise
    except _MALFORMED as exc:
        raise ModelFormatError(f"{path}: cannot read the model, the file is corrupt or malformed: "
                               f"{type(exc).__name__}: {str(exc)[:300]}") from None


def _fork() -> int:
    """os.fork, holding h5py's global lock: no other thread can be inside h5py at that moment,
    so the child never inherits the lock held by a thread it does not have."""
    try:
        from h5py._objects import phil
    except ImportError:
        return os.fork()
    with phil:
        return os.fork()


def _read_in_child(reader, path: str, timeout: float) -> Graph:
    """Run `_read(reader, path)` in a forked child; return its Graph or raise its error.

    A child that loops is killed after `timeout` seconds, and one that
    crashes takes only itself down: either is a ModelFormatError here. The
    child pickles back the Graph or the exception it raised; these are
    objects our own code built, so unpickling them runs nothing from the file.
    """
    read_end, write_end = os.pipe()
    pid = _fork()
    if pid == 0:  # the child: read, report, exit without running the parent's cleanup
        code = 0
        try:
            os.close(read_end)
            outcome: tuple[bool, object]
            try:
                outcome = (True, _read(reader, path))
            except Exception as exc:  # noqa: BLE001 - everything goes back to the parent
                outcome = (False, exc)
            try:
                data = pickle.dumps(outcome)
            except Exception as exc:  # noqa: BLE001 - an exception that does not pickle
                data = pickle.dumps((False, ModelFormatError(f"{path}: {type(exc).__name__}: {exc}")))
            with os.fdopen(write_end, "wb") as out:
                out.write(data)
        except BaseException:  # noqa: BLE001
            code = 1
        finally:
            os._exit(code)
    os.close(write_end)
    chunks, deadline = [], time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([read_end], [], [], left)[0]:
                os.kill(pid, signal.SIGKILL)
                raise ModelFormatError(f"{path}: reading the file did not finish within {timeout:g} s and was "
                                       "stopped (the HDF5 library loops on some corrupt files)")
            chunk = os.read(read_end, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(read_end)
        _, status = os.waitpid(pid, 0)
    if not chunks:
        how = (f"signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status)
               else f"exit code {os.waitstatus_to_exitcode(status)}")
        raise ModelFormatError(f"{path}: the reader crashed on this file ({how}); the file is corrupt")
    ok, value = pickle.loads(b"".join(chunks))
    if ok:
        return value
    raise value


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
    """Convert a PyTorch module to a Graph by exporting it to ONNX.

    The module is exported in eval mode (its mode is restored afterwards)
    with ``torch.onnx.export`` on ``example_input`` (one batch as the
    module takes it, e.g. NCHW ``torch.zeros(1, 1, 28, 28)``; a NumPy array
    is converted to a float32 tensor) to a private temporary directory,
    then read by the ONNX importer. The graph remembers the module's NCHW
    layout (``Graph.input_layout``), so ``Model`` takes the inputs the module
    takes. ``export_kwargs`` go to ``torch.onnx.export`` (``opset_version``,
    ``dynamo=False``, ...; ``verbose`` defaults to False here).

    Needs ``torch``, ``onnx`` and, for torch's default (dynamo) exporter,
    ``onnxscript``: ``pip install 'pysmpc[torch]'``.

    Raises:
        TypeError: `module` is not a torch.nn.Module, or export_kwargs
            name an argument from_torch sets itself (model, args, f).
        ImportError: onnx or onnxscript is missing (the message says what to install).
    """
    import torch

    from pysmpc.models.onnx_import import _onnx, graph_from_onnx

    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"from_torch takes a torch.nn.Module, got {type(module).__name__}")
    taken = sorted(set(export_kwargs) & {"model", "args", "f"})
    if taken:
        raise TypeError(f"from_torch sets {', '.join(taken)} of torch.onnx.export itself: pass the module and "
                        f"example_input, and other export options as keywords")
    export_kwargs.setdefault("verbose", False)  # torch's exporter otherwise prints its progress
    if isinstance(example_input, np.ndarray):
        example_input = torch.from_numpy(np.ascontiguousarray(example_input, dtype=np.float32))
    onnx = _onnx()
    was_training = module.training
    module.eval()
    try:
        # torch deprecates exporting to a BytesIO, so go through a private temporary
        # directory; the exporter may put the weights in a side file next to the model.
        with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
            path = os.path.join(tmp, "model.onnx")
            try:
                torch.onnx.export(module, (example_input,), path, **export_kwargs)
            except ImportError as exc:
                if "onnxscript" not in str(exc):
                    raise
                raise ImportError("torch's ONNX exporter needs the 'onnxscript' package: pip install "
                                  "'pysmpc[torch]' (or pass dynamo=False for torch's TorchScript exporter)") from exc
            model = onnx.load(path)
    finally:
        module.train(was_training)
    return graph_from_onnx(model, source=f"torch:{type(module).__name__}")
