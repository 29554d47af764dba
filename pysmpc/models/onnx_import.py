"""Read ONNX models (e.g. exported from PyTorch) into an NHWC Graph.

ONNX image tensors are NCHW; the graph runs NHWC. A model with an image
input keeps NCHW as its ``input_layout``: ``Model.predict`` and ``Client``
take (N, C, H, W) arrays, as the source model does, and transpose them
once (graph.layout). Inside, each ONNX tensor is kept
as a graph tensor plus a *layout*: the order in which the graph tensor
holds the ONNX tensor's axes (batch excluded). A 4-D input is taken as
NCHW and the graph's input is NHWC (layout (1, 2, 0): H, W, C). Layers
that need channels last (Conv, pools, per-channel batch norm) get their
input in that layout; elementwise ops keep whatever layout they are given
(their constants are transposed to it); a Transpose only changes the
layout, emitting nothing; Flatten and Reshape first bring their input to
ONNX's own order, by a transpose layer (local on shares, free). So the
NHWC graph computes exactly what the NCHW model does.

Supported ops (default domain, opsets 13 to 21; a newer opset is read where
every op it uses is defined as at 21): Conv (groups 1, or
depthwise: groups = input channels; pads, strides, auto_pad SAME_UPPER),
Gemm, MatMul (by a constant matrix), Add (two tensors of one shape, or a
constant), Sub, Mul and Div by a constant (per channel or scalar), Relu,
Clip, Sigmoid, Tanh, Softmax, MaxPool and AveragePool (pads, ceil_mode 0;
the average excludes padding), GlobalAveragePool, GlobalMaxPool,
BatchNormalization, Flatten, Reshape, Transpose, Concat, Pad (constant
zeros on H and W), Identity, Dropout, Constant. A final Softmax or
LogSoftmax is dropped with a note (the graph outputs logits; the client
applies it). Batch norms and constant affine ops are folded into the
Conv or Gemm before them where they can be (notes say which). Anything
else is refused when the file is loaded, naming the node, its op and the
supported ops.

Uses the ``onnx`` package (protobuf parsing only: no code from the file
runs). Install it with ``pip install pysmpc[onnx]``.
"""

from __future__ import annotations

import os

import numpy as np

from pysmpc.graph.fold import fold_batch_norms
from pysmpc.graph.graph import INPUT_RANGE_KEY, Graph, Layer, check_input_range, reachable_layers
from pysmpc.models._errors import ModelFormatError

__all__ = ["SUPPORTED_OPS", "OPSETS", "graph_from_onnx", "load_onnx"]

SUPPORTED_OPS = (
    "Conv", "Gemm", "MatMul", "Add", "Sub", "Mul", "Div", "Relu", "Clip", "Sigmoid", "Tanh", "Softmax",
    "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "BatchNormalization", "Flatten", "Reshape",
    "Transpose", "Concat", "Pad", "ReduceMean", "ReduceMax", "Identity", "Dropout", "Constant", "LogSoftmax",
)
# Ops evaluated at load time when every input is a constant (exporters
# compute pads and shapes this way); the onnx package's NumPy reference
# implementation of the standard op runs, nothing from the file.
_CONSTANT_FOLDED = ("Cast", "ConstantOfShape", "Slice", "Concat", "Reshape", "Unsqueeze", "Squeeze", "Gather",
                    "Transpose", "Range", "Expand", "Add", "Sub", "Mul", "Div", "Neg")
OPSETS = (13, 21)
_IMAGE = (1, 2, 0)  # layout of an NCHW tensor held NHWC: graph axes are ONNX's C-H-W axes 1, 2, 0


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
    out = {}
    for a in node.attribute:
        value = onnx.helper.get_attribute_value(a)
        out[a.name] = value.decode() if isinstance(value, bytes) else value
    return out


# What a malformed (but parseable) model raises deep inside the translation:
# a missing attribute or input, an attribute of the wrong type.
_MALFORMED = (KeyError, IndexError, TypeError, AttributeError, OverflowError)


def graph_from_onnx(model, source: str = "onnx") -> Graph:
    """Build a Graph from an ``onnx.ModelProto`` (see the module docstring).

    Raises:
        ModelFormatError: a node or tensor is malformed (the message names it).
        ValueError: an op or opset is unsupported; GraphError: shapes do not fit.
    """
    where = ["graph"]
    try:
        return _Translator(model, source, where).run()
    except _MALFORMED as exc:
        raise ModelFormatError(f"{source}: malformed {where[0]}: {type(exc).__name__}: {str(exc)[:200]}") from None


def _tensor(numpy_helper, tensor, source: str) -> np.ndarray:
    try:
        array = numpy_helper.to_array(tensor)
    except Exception as exc:  # noqa: BLE001 - onnx raises TypeError, ValueError, even AssertionError
        raise ModelFormatError(f"{source}: tensor {tensor.name[:80]!r} cannot be read: {type(exc).__name__}: "
                               f"{str(exc)[:200]}") from None
    return array.astype(np.float64) if array.dtype.kind == "f" else array


class _Value:
    """An ONNX tensor as held in the graph: its graph tensor, ONNX shape (no batch) and layout."""

    __slots__ = ("name", "shape", "layout")

    def __init__(self, name: str, shape: tuple, layout: tuple):
        self.name, self.shape, self.layout = name, tuple(shape), tuple(layout)

    def graph_shape(self) -> tuple:
        return tuple(self.shape[a] for a in self.layout)


class _Translator:
    def __init__(self, model, source: str, where: list):
        self.onnx = _onnx()
        from onnx import numpy_helper

        self.numpy_helper = numpy_helper
        self.model, self.source, self.where = model, source, where
        self.layers: list = []
        self.notes: list = []
        self.names: set = set()
        self.values: dict = {}
        self.consts: dict = {}

    # -- helpers ----------------------------------------------------------------------
    def unique(self, name: str) -> str:
        base, n = name, 1
        while name in self.names or name == "input":
            name, n = f"{base}_{n}", n + 1
        self.names.add(name)
        return name

    def emit(self, kind, name, params=None, weights=None, inputs=None) -> str:
        layer = Layer(kind, self.unique(name), params or {}, weights or {}, inputs=inputs)
        self.layers.append(layer)
        return layer.name

    def value(self, node, name: str) -> _Value:
        if name in self.consts:
            raise _unsupported(node, f"input {name!r} is a constant where a tensor is expected")
        if name not in self.values:
            raise _unsupported(node, f"input {name!r} is not produced by a supported op before it")
        return self.values[name]

    def const(self, node, name: str) -> np.ndarray:
        if name not in self.consts:
            raise _unsupported(node, f"input {name!r} must be a constant")
        return self.consts[name]

    def to_layout(self, v: _Value, layout: tuple, name: str) -> _Value:
        """v in `layout`: a transpose layer (local on shares) if it is held otherwise."""
        if v.layout == tuple(layout):
            return v
        perm = tuple(v.layout.index(a) for a in layout)
        out = self.emit("transpose", f"{name}_transpose", {"perm": perm}, inputs=[v.name])
        return _Value(out, v.shape, layout)

    def image(self, node, v: _Value, name: str) -> _Value:
        """v as an NHWC image (it must be 4-D in ONNX: N, C, H, W)."""
        if len(v.shape) != 3:
            raise _unsupported(node, f"needs a 4-D (N, C, H, W) input, got shape (N, {', '.join(map(str, v.shape))})")
        return self.to_layout(v, _IMAGE, name)

    def affine_constant(self, node, v: _Value, c: np.ndarray) -> np.ndarray:
        """A constant broadcast against v (ONNX shapes), transposed to v's layout; per-channel or scalar."""
        rank = len(v.shape)
        c = np.asarray(c, dtype=np.float64)
        if c.ndim > rank + 1 or (c.ndim == rank + 1 and c.shape[0] != 1):
            raise _unsupported(node, f"constant of shape {c.shape} broadcasts over the batch")
        if c.ndim == rank + 1:
            c = c[0]
        try:
            full = np.broadcast_shapes(c.shape, v.shape)
        except ValueError:
            raise _unsupported(node, f"constant of shape {c.shape} does not broadcast to {v.shape}") from None
        if full != v.shape:
            raise _unsupported(node, f"constant of shape {c.shape} would enlarge the tensor {v.shape}")
        c = c.reshape((1,) * (rank - c.ndim) + c.shape)
        c = c.transpose(v.layout)
        # Trailing-axis broadcasting in the graph: drop leading singleton axes.
        while c.ndim > 1 and c.shape[0] == 1:
            c = c[0]
        return c

    # -- the walk -----------------------------------------------------------------------
    def run(self) -> Graph:
        onnx, g, source = self.onnx, self.model.graph, self.source
        self.opset = OPSETS[1]
        for opset in self.model.opset_import:
            if opset.domain in ("", "ai.onnx"):
                if opset.version < OPSETS[0]:
                    raise ValueError(f"{source}: ONNX opset {opset.version}; supported opsets: {OPSETS[0]} to "
                                     f"{OPSETS[1]} (and newer ones for ops unchanged since {OPSETS[1]})")
                self.opset = opset.version
        self.consts = {t.name: _tensor(self.numpy_helper, t, source) for t in g.initializer}
        inputs = [i for i in g.input if i.name not in self.consts]
        if len(inputs) != 1:
            raise ValueError(f"{source}: expected one model input, got {[i.name for i in inputs]}")
        dims = [d.dim_value if d.HasField("dim_value") else None for d in inputs[0].type.tensor_type.shape.dim]
        if len(dims) < 2 or None in dims[1:]:
            raise ValueError(f"{source}: input shape {dims} must be (N, ...) with fixed sizes after the batch axis")
        onnx_shape = tuple(dims[1:])
        layout = _IMAGE if len(onnx_shape) == 3 else tuple(range(len(onnx_shape)))
        self.values[inputs[0].name] = _Value("input", onnx_shape, layout)
        input_shape = tuple(onnx_shape[a] for a in layout)
        readers: dict = {}
        for node in g.node:
            for name in node.input:
                readers.setdefault(name, []).append(node)
        outputs = [o.name for o in g.output]
        if len(outputs) != 1:
            raise ValueError(f"{source}: expected one model output, got {outputs}")
        final_softmax = None
        for index, node in enumerate(g.node):
            op = node.op_type
            name = node.name or f"{op.lower()}_{index}"
            self.where[0] = f"node {index} ({name[:60]!r} of op type {op[:40]})"
            if node.domain not in ("", "ai.onnx"):
                raise _unsupported(node, f"domain {node.domain!r}")
            if self.opset > OPSETS[1] and op != "Constant":
                # A newer opset is read only where the op means what it meant at 21.
                try:
                    since = onnx.defs.get_schema(op, self.opset).since_version
                except Exception:  # noqa: BLE001 - onnx raises SchemaError for an op it does not know
                    since = None
                if since is None or since > OPSETS[1]:
                    raise _unsupported(node, f"its definition at opset {self.opset} is from opset {since}, newer "
                                       f"than the opsets {OPSETS[0]} to {OPSETS[1]} this importer reads")
            a = _attrs(onnx, node)
            if op in ("Softmax", "LogSoftmax") and node.output[0] in outputs:
                final_softmax = node
                self.values[node.output[0]] = self.value(node, node.input[0])
                continue
            self.translate(node, op, name, a, readers)
        self.where[0] = "graph"
        out = self.values.get(outputs[0])
        if out is None:
            raise ValueError(f"{source}: the graph output {outputs[0]!r} is a constant or made by no node")
        if len(out.shape) != 3:  # outputs other than images are given in ONNX's own order
            out = self.to_layout(out, tuple(range(len(out.shape))), "output")
        if final_softmax is not None:
            self.notes.append(f"final {final_softmax.op_type} {final_softmax.name!r} dropped: the graph outputs "
                              f"logits, the client applies softmax")
        if out.name == "input":
            raise ValueError(f"{source}: the model computes nothing on its input")
        layers = reachable_layers(self.layers, out.name)
        recorded = {p.key: p.value for p in self.model.metadata_props}.get(INPUT_RANGE_KEY)
        input_range = None if recorded is None else check_input_range(recorded, f"{source}: metadata {INPUT_RANGE_KEY!r}")
        graph = Graph(input_shape, layers, source=source, notes=self.notes, output=out.name,
                      input_layout="NCHW" if len(onnx_shape) == 3 else "NHWC", input_range=input_range)
        return fold_batch_norms(graph)

    def translate(self, node, op: str, name: str, a: dict, readers: dict) -> None:
        consts, out = self.consts, node.output[0]
        if op == "Constant":
            value = a.get("value")
            if value is None:
                raise _unsupported(node, "only 'value' constants")
            consts[out] = _tensor(self.numpy_helper, value, self.source)
            return
        if op in ("Identity", "Dropout") and node.input[0] in consts:
            consts[out] = consts[node.input[0]]
            return
        if op in _CONSTANT_FOLDED and node.input and all(n in consts for n in node.input if n):
            self.fold_constant(node)
            return
        if op in ("Identity", "Dropout"):
            if len(node.output) > 1 and node.output[1] and readers.get(node.output[1]):
                raise _unsupported(node, "its mask output is used")
            self.values[out] = self.value(node, node.input[0])
            return
        if op == "Transpose":
            v = self.value(node, node.input[0])
            perm = list(a.get("perm", range(len(v.shape), -1, -1)))
            if perm[0] != 0:
                raise _unsupported(node, f"perm {perm} moves the batch axis")
            t = [p - 1 for p in perm[1:]]
            # The graph tensor stays; only the layout changes (graph = out.transpose(new)).
            self.values[out] = _Value(v.name, tuple(v.shape[i] for i in t), tuple(t.index(p) for p in v.layout))
            return
        if op == "Conv":
            self.conv(node, name, a)
        elif op in ("Gemm", "MatMul"):
            self.gemm(node, op, name, a)
        elif op in ("Add", "Sub", "Mul", "Div"):
            self.arithmetic(node, op, name)
        elif op in ("Relu", "Sigmoid", "Tanh"):
            v = self.value(node, node.input[0])
            self.values[out] = _Value(self.emit(op.lower(), name, inputs=[v.name]), v.shape, v.layout)
        elif op == "Clip":
            v = self.value(node, node.input[0])
            bounds = [float(self.const(node, n).reshape(())) if n else None
                      for n in list(node.input[1:3]) + [""] * (3 - len(node.input))][:2]
            if bounds == [None, None]:
                self.values[out] = v
                return
            layer = self.emit("clip", name, {"lo": bounds[0], "hi": bounds[1]}, inputs=[v.name])
            self.values[out] = _Value(layer, v.shape, v.layout)
        elif op == "Softmax":
            v = self.value(node, node.input[0])
            axis = a.get("axis", -1) % (len(v.shape) + 1) - 1
            if axis < 0:
                raise _unsupported(node, "softmax over the batch axis")
            order = tuple(x for x in v.layout if x != axis) + (axis,)
            v = self.to_layout(v, order, name)
            self.values[out] = _Value(self.emit("softmax", name, inputs=[v.name]), v.shape, v.layout)
        elif op in ("MaxPool", "AveragePool"):
            self.pool(node, op, name, a)
        elif op in ("GlobalAveragePool", "GlobalMaxPool"):
            v = self.image(node, self.value(node, node.input[0]), name)
            kind = "global_avg_pool" if op == "GlobalAveragePool" else "global_max_pool"
            layer = self.emit(kind, name, {"keepdims": True}, inputs=[v.name])
            self.values[out] = _Value(layer, (v.shape[0], 1, 1), _IMAGE)
        elif op == "BatchNormalization":
            if a.get("training_mode", 0) or (len(node.output) > 1 and any(node.output[1:])):
                raise _unsupported(node, "training mode")
            v = self.value(node, node.input[0])
            gamma, beta, mean, var = (self.const(node, n) for n in node.input[1:5])
            scale = gamma / np.sqrt(var + a.get("epsilon", 1e-5))
            shift = beta - mean * scale
            if len(v.shape) == 3:  # per channel: channels last
                v = self.image(node, v, name)
            elif len(v.shape) != 1:
                raise _unsupported(node, f"input shape (N, {', '.join(map(str, v.shape))})")
            layer = self.emit("batch_norm", name, {}, {"scale": scale, "shift": shift}, inputs=[v.name])
            self.values[out] = _Value(layer, v.shape, v.layout)
        elif op in ("Flatten", "Reshape"):
            v = self.value(node, node.input[0])
            if op == "Flatten":
                if a.get("axis", 1) != 1:
                    raise _unsupported(node, f"axis {a.get('axis')}; only 1 (keep the batch axis)")
                target = (int(np.prod(v.shape)),)
            else:
                target = self.reshape_target(node, v, a)
            v = self.to_layout(v, tuple(range(len(v.shape))), name)
            if target == v.shape:
                self.values[out] = v
                return
            params: dict = {} if len(target) == 1 else {"shape": target}
            kind = "flatten" if len(target) == 1 else "reshape"
            layer = self.emit(kind, name, params, inputs=[v.name])
            self.values[out] = _Value(layer, target, tuple(range(len(target))))
        elif op == "Concat":
            parts = [self.value(node, n) for n in node.input]
            rank = len(parts[0].shape)
            axis = a["axis"] % (rank + 1) - 1
            if axis < 0:
                raise _unsupported(node, "concat along the batch axis")
            parts = [self.to_layout(p, parts[0].layout, f"{name}_in{i}") for i, p in enumerate(parts)]
            shape = list(parts[0].shape)
            shape[axis] = sum(p.shape[axis] for p in parts)
            layer = self.emit("concat", name, {"axis": parts[0].layout.index(axis)}, inputs=[p.name for p in parts])
            self.values[out] = _Value(layer, tuple(shape), parts[0].layout)
        elif op == "Pad":
            self.pad(node, name, a)
        elif op in ("ReduceMean", "ReduceMax"):
            self.reduce(node, op, name, a)
        else:
            raise _unsupported(node)

    def fold_constant(self, node) -> None:
        from onnx.reference import ReferenceEvaluator

        inputs = {n: self.consts[n] for n in node.input if n}
        # The reference implementation wants the arrays in their stored dtypes.
        feeds = {n: (v.astype(np.float32) if v.dtype == np.float64 else v) for n, v in inputs.items()}
        try:
            results = ReferenceEvaluator(node).run(None, feeds)
        except Exception as exc:  # noqa: BLE001 - the reference evaluator raises what numpy raises
            raise ModelFormatError(f"{self.source}: constant node {node.name!r} ({node.op_type}) cannot be "
                                   f"evaluated: {type(exc).__name__}: {str(exc)[:200]}") from None
        for name, value in zip(node.output, results):
            value = np.asarray(value)
            self.consts[name] = value.astype(np.float64) if value.dtype.kind == "f" else value

    def reduce(self, node, op: str, name: str, a: dict) -> None:
        """ReduceMean / ReduceMax over the H and W axes of an image: a global pool."""
        v = self.value(node, node.input[0])
        if len(node.input) > 1 and node.input[1]:
            axes = [int(x) for x in self.const(node, node.input[1]).reshape(-1)]
        else:
            axes = list(a.get("axes", []))
        rank = len(v.shape)
        axes = sorted({x % (rank + 1) - 1 for x in axes})
        if rank != 3 or len(axes) != 2 or -1 in axes or sorted(v.layout.index(x) for x in axes) != [0, 1]:
            raise _unsupported(node, f"only a reduction over the two spatial axes of a 4-D image, got axes "
                                     f"{[x + 1 for x in axes]} of (N, {', '.join(map(str, v.shape))})")
        keepdims = bool(a.get("keepdims", 1))
        kind = "global_avg_pool" if op == "ReduceMean" else "global_max_pool"
        layer = self.emit(kind, name, {"keepdims": keepdims}, inputs=[v.name])
        channel = next(x for x in range(3) if x not in axes)
        if keepdims:
            shape = tuple(1 if x in axes else v.shape[x] for x in range(3))
            self.values[node.output[0]] = _Value(layer, shape, v.layout)
        else:
            self.values[node.output[0]] = _Value(layer, (v.shape[channel],), (0,))

    def reshape_target(self, node, v: _Value, a: dict) -> tuple:
        target = [int(t) for t in self.const(node, node.input[1]).reshape(-1)]
        if a.get("allowzero", 0) and 0 in target:  # a literal size 0, not "copy this size"
            raise _unsupported(node, f"target shape {target} with allowzero: an empty tensor")
        size = int(np.prod(v.shape))
        if not target:
            raise _unsupported(node, "empty target shape")
        # The first entry is the batch axis: kept (0, -1 or a fixed batch size). A -1 there
        # with no other -1 means every other size is given.
        rest = [v.shape[i - 1] if t == 0 and i - 1 < len(v.shape) else t for i, t in enumerate(target)][1:]
        if rest.count(-1) > 1 or any(t == 0 or t < -1 for t in rest):
            raise _unsupported(node, f"target shape {target}")
        if -1 in rest:
            known = int(np.prod([t for t in rest if t != -1]))
            if known == 0 or size % known:
                raise _unsupported(node, f"cannot reshape {v.shape} to {target} per sample")
            rest = [size // known if t == -1 else t for t in rest]
        if int(np.prod(rest)) != size:
            raise _unsupported(node, f"target shape {target} changes the batch size (per sample {v.shape})")
        return tuple(rest)

    def conv(self, node, name: str, a: dict) -> None:
        v = self.image(node, self.value(node, node.input[0]), name)
        w = self.const(node, node.input[1])
        if w.ndim != 4:
            raise _unsupported(node, f"only 2-D convolutions; weight of shape {w.shape}")
        if any(d != 1 for d in a.get("dilations", [1, 1])):
            raise _unsupported(node, f"dilations {a.get('dilations')}")
        groups, channels = int(a.get("group", 1)), v.shape[0]
        padding = self.padding(node, a)
        bias = self.const(node, node.input[2]) if len(node.input) > 2 and node.input[2] else np.zeros(w.shape[0])
        stride = tuple(a.get("strides", [1, 1]))
        if groups == 1:
            layer = self.emit("conv2d", name, {"stride": stride, "padding": padding},
                              {"kernel": w.transpose(2, 3, 1, 0), "bias": bias}, inputs=[v.name])
        elif groups == channels and w.shape[1] == 1 and w.shape[0] % channels == 0:
            mult = w.shape[0] // channels
            # Output channel c*M + m reads input channel c, as ONNX groups do.
            kernel = w[:, 0].reshape(channels, mult, w.shape[2], w.shape[3]).transpose(2, 3, 0, 1)
            layer = self.emit("depthwise_conv2d", name, {"stride": stride, "padding": padding},
                              {"kernel": kernel, "bias": bias}, inputs=[v.name])
        else:
            raise _unsupported(node, f"group {groups}: only 1 or depthwise (the {channels} input channels)")
        shape = self.layers[-1].output_shape(v.graph_shape())
        self.values[node.output[0]] = _Value(layer, (shape[2], shape[0], shape[1]), _IMAGE)

    def padding(self, node, a: dict):
        auto_pad = a.get("auto_pad", "NOTSET")
        if auto_pad in ("NOTSET", "VALID"):
            t, l, b, r = a.get("pads", [0, 0, 0, 0]) if auto_pad == "NOTSET" else [0, 0, 0, 0]
            return (t, b, l, r)
        if auto_pad == "SAME_UPPER":
            return "same"  # the extra padding at the end, as TensorFlow
        raise _unsupported(node, f"auto_pad {auto_pad}")

    def pool(self, node, op: str, name: str, a: dict) -> None:
        v = self.image(node, self.value(node, node.input[0]), name)
        if a.get("ceil_mode", 0) or any(d != 1 for d in a.get("dilations", [1, 1])):
            raise _unsupported(node, "ceil_mode or dilations")
        if len(node.output) > 1 and node.output[1]:
            raise _unsupported(node, "indices output")
        padding = self.padding(node, a)
        if op == "AveragePool" and a.get("count_include_pad", 0) and padding not in ("valid", (0, 0, 0, 0)):
            raise _unsupported(node, "count_include_pad 1 with padding (the average must exclude the padding)")
        pool = tuple(a["kernel_shape"])
        kind = "avg_pool2d" if op == "AveragePool" else "max_pool2d"
        layer = self.emit(kind, name, {"pool": pool, "stride": tuple(a.get("strides", [1, 1])), "padding": padding},
                          inputs=[v.name])
        shape = self.layers[-1].output_shape(v.graph_shape())
        self.values[node.output[0]] = _Value(layer, (shape[2], shape[0], shape[1]), _IMAGE)

    def pad(self, node, name: str, a: dict) -> None:
        if a.get("mode", "constant") != "constant":
            raise _unsupported(node, f"mode {a.get('mode')}")
        v = self.value(node, node.input[0])
        pads = [int(p) for p in self.const(node, node.input[1]).reshape(-1)]
        if len(node.input) > 2 and node.input[2] and float(self.const(node, node.input[2]).reshape(())) != 0.0:
            raise _unsupported(node, "a constant value other than 0")
        if len(node.input) > 3 and node.input[3]:
            raise _unsupported(node, "the axes input")
        if len(v.shape) != 3 or len(pads) != 8 or any(pads[i] for i in (0, 1, 4, 5)) or min(pads) < 0:
            raise _unsupported(node, f"pads {pads}: only non-negative zero padding of H and W of a 4-D tensor")
        v = self.image(node, v, name)
        t, l, b, r = pads[2], pads[3], pads[6], pads[7]
        layer = self.emit("zero_pad", name, {"pads": (t, b, l, r)}, inputs=[v.name])
        self.values[node.output[0]] = _Value(layer, (v.shape[0], v.shape[1] + t + b, v.shape[2] + l + r), _IMAGE)

    def gemm(self, node, op: str, name: str, a: dict) -> None:
        v = self.value(node, node.input[0])
        if len(v.shape) != 1:
            raise _unsupported(node, f"input A must be (N, features), got (N, {', '.join(map(str, v.shape))})")
        w = self.const(node, node.input[1])
        if w.ndim != 2:
            raise _unsupported(node, f"weight of shape {w.shape}")
        if op == "Gemm":
            if a.get("transA", 0):
                raise _unsupported(node, "transA")
            kernel = (w.T if a.get("transB", 0) else w) * a.get("alpha", 1.0)
            bias = (self.const(node, node.input[2]) * a.get("beta", 1.0) if len(node.input) > 2 and node.input[2]
                    else np.zeros(kernel.shape[1]))
            if bias.size not in (1, kernel.shape[1]):
                raise _unsupported(node, f"bias of shape {bias.shape}")
            bias = np.broadcast_to(bias.reshape(-1), (kernel.shape[1],))
        else:
            kernel, bias = w, np.zeros(w.shape[1])
        layer = self.emit("dense", name, {}, {"kernel": kernel, "bias": bias}, inputs=[v.name])
        self.values[node.output[0]] = _Value(layer, (kernel.shape[1],), (0,))

    def arithmetic(self, node, op: str, name: str) -> None:
        left, right = node.input[0], node.input[1]
        if left not in self.consts and right not in self.consts:
            if op != "Add":
                raise _unsupported(node, f"{op} of two tensors; only Add (and {op} by a constant)")
            x, y = self.value(node, left), self.value(node, right)
            if x.shape != y.shape:
                raise _unsupported(node, f"Add of shapes {x.shape} and {y.shape}: only equal shapes")
            y = self.to_layout(y, x.layout, f"{name}_rhs")
            self.values[node.output[0]] = _Value(self.emit("add", name, inputs=[x.name, y.name]), x.shape, x.layout)
            return
        if left in self.consts and right in self.consts:
            raise _unsupported(node, "both inputs are constants")
        constant_first = left in self.consts
        v = self.value(node, right if constant_first else left)
        c = self.affine_constant(node, v, self.consts[left if constant_first else right])
        ones = np.ones_like(c)
        if op == "Add":
            scale, shift = ones, c
        elif op == "Sub":
            scale, shift = (-ones, c) if constant_first else (ones, -c)
        elif op == "Mul":
            scale, shift = c, np.zeros_like(c)
        else:  # Div
            if constant_first:
                raise _unsupported(node, "division by a tensor")
            if np.any(c == 0):
                raise _unsupported(node, "division by zero")
            scale, shift = 1.0 / c, np.zeros_like(c)
        layer = self.emit("batch_norm", name, {}, {"scale": scale, "shift": shift}, inputs=[v.name])
        self.values[node.output[0]] = _Value(layer, v.shape, v.layout)

