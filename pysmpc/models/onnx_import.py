"""Read ONNX models (e.g. exported from PyTorch) into an NHWC Graph.

ONNX convolutions are NCHW. A model with an image input keeps that as its
``input_layout`` ('NCHW'): ``Model.predict`` and ``Client`` (with
``input_layout="NCHW"``) take (N, C, H, W) arrays, as the source model
does, and transpose them once. The importer converts each conv kernel from
OIHW to HWIO and, for the first Gemm/MatMul after a Flatten or Reshape,
reorders the kernel rows from PyTorch's C-H-W flatten order to the graph's
H-W-C order, so the NHWC graph computes exactly what the NCHW model does.

Supported ops: Conv, AveragePool, MaxPool, GlobalAveragePool, Relu,
Flatten, Reshape (to (batch, -1)), Gemm, MatMul (+ Add of a constant),
BatchNormalization (folded into the Conv/Gemm right before it), Identity
and Dropout (skipped), Constant, and Softmax/LogSoftmax as the last op
(dropped with a note). The model must be a chain: each op reads the
previous op's output plus constants.

Uses the ``onnx`` package (protobuf parsing only: no code from the file
runs). Install it with ``pip install pysmpc[onnx]``.
"""

from __future__ import annotations

import os

import numpy as np

from pysmpc.graph.graph import INPUT_RANGE_KEY, Graph, Layer, check_input_range
from pysmpc.models._errors import ModelFormatError

__all__ = ["SUPPORTED_OPS", "graph_from_onnx", "load_onnx"]

SUPPORTED_OPS = (
    "Conv", "AveragePool", "MaxPool", "GlobalAveragePool", "Relu", "Flatten", "Reshape", "Gemm",
    "MatMul", "Add", "BatchNormalization", "Identity", "Dropout", "Constant", "Softmax", "LogSoftmax",
)


def _onnx():
    try:
        import onnx
    except ImportError:
        raise ImportError("reading ONNX needs the 'onnx' package: pip install 'pysmpc[onnx]'") from None
    return onnx


def load_onnx(path: str | os.PathLike) -> Graph:
    """Load an ``.onnx`` file as a Graph.

    Raises:
        ValueError: the file is not a valid ONNX model (corrupt or
            truncated), or uses an unsupported op.
    """
    onnx = _onnx()
    path = os.fspath(path)
    try:
        # onnx.load also reads weights kept in a side file (external data) next to the model.
        model = onnx.load(path)
    except Exception as exc:  # protobuf DecodeError, onnx ValidationError for bad external data
        raise ModelFormatError(f"{path}: not a valid ONNX model, corrupt or truncated: {str(exc)[:300]}") from None
    if not model.graph.node:
        raise ModelFormatError(f"{path}: not a valid ONNX model, corrupt or truncated: the graph has no nodes")
    return graph_from_onnx(model, source=path)


def _unsupported(node, why: str = "") -> ValueError:
    reason = f" ({why})" if why else ""
    return ValueError(
        f"unsupported ONNX node {node.name or '(unnamed)'!r} of op type {node.op_type}{reason}; "
        f"supported ops: {', '.join(SUPPORTED_OPS)}"
    )


def _attrs(onnx, node) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


# What a malformed (but parseable) model raises deep inside the translation:
# a missing attribute or input, an attribute of the wrong type.
_MALFORMED = (KeyError, IndexError, TypeError, AttributeError, OverflowError)


def graph_from_onnx(model, source: str = "onnx") -> Graph:
    """Build a Graph from an ``onnx.ModelProto`` (see the module docstring).

    Raises:
        ModelFormatError: a node or tensor is malformed (the message names it).
        ValueError: an op is unsupported; GraphError: shapes do not fit.
    """
    where = ["graph"]
    try:
        return _graph_from_onnx(model, source, where)
    except _MALFORMED as exc:
        raise ModelFormatError(f"{source}: malformed {where[0]}: {type(exc).__name__}: {str(exc)[:200]}") from None


def _tensor(numpy_helper, tensor, source: str) -> np.ndarray:
    try:
        array = numpy_helper.to_array(tensor)
    except Exception as exc:  # noqa: BLE001 - onnx raises TypeError, ValueError, even AssertionError
        raise ModelFormatError(f"{source}: tensor {tensor.name[:80]!r} cannot be read: {type(exc).__name__}: "
                               f"{str(exc)[:200]}") from None
    return array.astype(np.float64) if array.dtype.kind == "f" else array


def _graph_from_onnx(model, source: str, where: list) -> Graph:
    onnx = _onnx()
    from onnx import numpy_helper

    g = model.graph
    consts = {t.name: _tensor(numpy_helper, t, source) for t in g.initializer}
    inputs = [i for i in g.input if i.name not in consts]
    if len(inputs) != 1:
        raise ValueError(f"{source}: expected one model input, got {[i.name for i in inputs]}")
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inputs[0].type.tensor_type.shape.dim]
    sizes = [int(d) for d in dims[1:] if d is not None]  # the batch axis may be symbolic; the others must not
    shape: tuple[int, ...]
    if len(dims) == 4 and len(sizes) == 3:
        shape, layout = (sizes[1], sizes[2], sizes[0]), "NCHW"  # the graph computes HWC
    elif len(dims) == 2 and len(sizes) == 1:
        shape, layout = (sizes[0],), "NHWC"  # no channels: nothing to transpose
    else:
        raise ValueError(f"{source}: input shape {dims} is not (N, C, H, W) or (N, F) with fixed sizes")

    layers: list = []
    notes: list = []
    current = inputs[0].name
    cur_shape = shape
    flatten_from: tuple[int, ...] | None = None  # (H, W, C) at the last flatten, until the next dense uses it
    softmax = None
    foldable: Layer | None = None  # the conv2d/dense whose output is `current`, up to a bias Add or batch norm

    def emit(layer: Layer) -> None:
        nonlocal cur_shape
        layers.append(layer)
        cur_shape = layer.output_shape(cur_shape)

    def const(node, name: str) -> np.ndarray:
        if name not in consts:
            raise _unsupported(node, f"input {name!r} must be a constant")
        return consts[name]

    for index, node in enumerate(g.node):
        op = node.op_type
        name = node.name or f"{op.lower()}_{index}"
        where[0] = f"node {index} ({name[:60]!r} of op type {op[:40]})"
        a = _attrs(onnx, node)
        if op == "Constant":
            value = a.get("value")
            if value is None:
                raise _unsupported(node, "only 'value' constants")
            consts[node.output[0]] = _tensor(numpy_helper, value, source)
            continue
        if op == "Identity" and node.input[0] in consts:
            consts[node.output[0]] = consts[node.input[0]]
            continue
        if not node.input or node.input[0] != current:
            raise _unsupported(node, f"the model must be a chain: this op reads {list(node.input)}, "
                               f"not the previous output {current!r}")
        if softmax is not None:
            raise _unsupported(softmax, "softmax is only supported as the last op")
        out = node.output[0]
        if op in ("Identity", "Dropout"):
            if len(node.output) > 1 and node.output[1]:
                used = any(node.output[1] in n.input for n in g.node)
                if used:
                    raise _unsupported(node, "its mask output is used")
        elif op == "Conv":
            w = const(node, node.input[1])
            if a.get("group", 1) != 1 or any(d != 1 for d in a.get("dilations", [1, 1])):
                raise _unsupported(node, "groups or dilations")
            auto_pad = a.get("auto_pad", b"NOTSET")
            auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
            padding: str | tuple[int, int, int, int]
            if auto_pad in ("NOTSET", "VALID"):
                t, l, b, r = a.get("pads", [0, 0, 0, 0]) if auto_pad == "NOTSET" else [0, 0, 0, 0]
                padding = (t, b, l, r)
            elif auto_pad == "SAME_UPPER":
                padding = "same"  # extra padding at the end, as TensorFlow
            else:
                raise _unsupported(node, f"auto_pad {auto_pad}")
            bias = const(node, node.input[2]) if len(node.input) > 2 and node.input[2] else np.zeros(w.shape[0])
            emit(Layer("conv2d", name, {"stride": tuple(a.get("strides", [1, 1])), "padding": padding},
                       {"kernel": w.transpose(2, 3, 1, 0), "bias": bias}))
        elif op in ("AveragePool", "MaxPool"):
            if any(a.get("pads", [0])) or a.get("ceil_mode", 0) or any(d != 1 for d in a.get("dilations", [1])):
                raise _unsupported(node, "pads, ceil_mode or dilations")
            if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", b"VALID", "NOTSET", "VALID"):
                raise _unsupported(node, "auto_pad")
            if len(node.output) > 1 and node.output[1]:
                raise _unsupported(node, "indices output")
            pool = tuple(a["kernel_shape"])
            emit(Layer("avg_pool2d" if op == "AveragePool" else "max_pool2d", name,
                       {"pool": pool, "stride": tuple(a.get("strides", pool))}))
        elif op == "GlobalAveragePool":
            if len(cur_shape) != 3:
                raise _unsupported(node, f"input shape {cur_shape}")
            emit(Layer("avg_pool2d", name, {"pool": cur_shape[:2]}))
        elif op == "Relu":
            emit(Layer("relu", name))
        elif op in ("Flatten", "Reshape"):
            if op == "Flatten" and a.get("axis", 1) != 1:
                raise _unsupported(node, f"axis {a.get('axis')}")
            if op == "Reshape":
                target = [int(v) for v in const(node, node.input[1])]
                if len(target) != 2 or target[1] not in (-1, int(np.prod(cur_shape))):
                    raise _unsupported(node, f"only a reshape to (batch, features); got {target}")
            if len(cur_shape) == 3:
                flatten_from = cur_shape
                emit(Layer("flatten", name))
            elif len(cur_shape) != 1:
                raise _unsupported(node, f"input shape {cur_shape}")
        elif op in ("Gemm", "MatMul"):
            w = const(node, node.input[1])
            if op == "Gemm":
                if a.get("transA", 0):
                    raise _unsupported(node, "transA")
                kernel = (w.T if a.get("transB", 0) else w) * a.get("alpha", 1.0)
                bias = (const(node, node.input[2]) * a.get("beta", 1.0) if len(node.input) > 2 and node.input[2]
                        else np.zeros(kernel.shape[1]))
                bias = np.broadcast_to(bias, (kernel.shape[1],))
            else:
                kernel, bias = w, np.zeros(w.shape[1])
            if flatten_from is not None:
                h, wd, c = flatten_from
                if kernel.shape[0] != h * wd * c:
                    raise _unsupported(node, f"kernel rows {kernel.shape[0]} != flattened size {h * wd * c}")
                # PyTorch flattened (C, H, W); the graph flattens (H, W, C).
                kernel = kernel[np.arange(h * wd * c).reshape(c, h, wd).transpose(1, 2, 0).ravel()]
                flatten_from = None
            emit(Layer("dense", name, {}, {"kernel": kernel, "bias": bias}))
        elif op == "Add":
            other = const(node, node.input[1])
            last = foldable
            if last is None:
                raise _unsupported(node, "Add is only supported as the bias of a MatMul/Gemm/Conv")
            n_out = last.weights["bias"].shape[0]
            if other.size not in (1, n_out):
                raise _unsupported(node, f"bias shape {other.shape}")
            last.weights["bias"] = last.weights["bias"] + other.reshape(-1)
        elif op == "BatchNormalization":
            last = foldable
            if last is None:
                raise _unsupported(node, "it must directly follow a Conv or Gemm/MatMul to be folded")
            gamma, beta, mean, var = (const(node, n) for n in node.input[1:5])
            scale = gamma / np.sqrt(var + a.get("epsilon", 1e-5))
            last.weights["kernel"] = last.weights["kernel"] * scale
            last.weights["bias"] = (last.weights["bias"] - mean) * scale + beta
            notes.append(f"batch normalization {name!r} folded into {last.name!r}")
        elif op in ("Softmax", "LogSoftmax"):
            softmax = node
        else:
            raise _unsupported(node)
        current = out
        if op in ("Conv", "Gemm", "MatMul"):
            foldable = layers[-1]
        elif op not in ("Identity", "Dropout", "Add", "BatchNormalization"):
            foldable = None
    where[0] = "graph"
    outputs = [o.name for o in g.output]
    if outputs != [current]:
        raise ValueError(f"{source}: graph outputs {outputs} are not the end of the chain ({current!r})")
    if softmax is not None:
        notes.append(f"final {softmax.op_type} {softmax.name!r} dropped: the graph outputs logits, "
                     f"the client applies softmax")
    recorded = {p.key: p.value for p in model.metadata_props}.get(INPUT_RANGE_KEY)
    input_range = None if recorded is None else check_input_range(recorded, f"{source}: metadata {INPUT_RANGE_KEY!r}")
    return Graph(shape, layers, source=source, notes=notes, input_layout=layout, input_range=input_range)


