"""A model graph: named NHWC tensors, layers that read one or more of them, and shape inference.

A ``Graph`` is what every importer (Keras HDF5, Keras 3 ``.keras``, ONNX)
produces and every executor (float, fixed-point, shared) consumes. It holds
no framework objects, only numpy arrays and plain parameters, so it can be
built by hand in tests.

Each layer writes one tensor, named after the layer, and reads the tensors
named in ``inputs`` (the graph's input is ``Graph.input_name``, "input" by
default). A layer built without ``inputs`` reads the layer before it (or
the graph input): a list of such layers is a sequential model. Layers are
listed in an order where every input comes before its readers; the last
layer (or ``output``) is the graph's output.

Layer kinds (exact strings) and what each holds:

================ ===================================== ==================================
kind              params                                 weights
================ ===================================== ==================================
conv2d            stride (sh, sw); padding 'valid',      kernel (kh, kw, cin, cout) (HWIO),
                  'same' (TensorFlow rule) or explicit   bias (cout,)
                  (top, bottom, left, right)
depthwise_conv2d  as conv2d; output channel c*m + k       kernel (kh, kw, cin, m),
                  reads input channel c                  bias (cin*m,)
avg_pool2d        pool (ph, pw), stride (sh, sw),        -
                  padding as conv2d (the average
                  counts only the input's elements)
max_pool2d        as avg_pool2d (padding never wins)     -
global_avg_pool   keepdims (False: (C,), True: (1,1,C))  -
global_max_pool   as global_avg_pool                     -
relu              -                                      -
clip              lo, hi (floats; either may be None)    -
                  relu6 is clip 0..6
sigmoid, tanh     -                                      -
softmax           - (over the last axis)                 -
batch_norm        - (y = x * scale + shift, broadcast    scale, shift (same shape,
                  over the leading axes)                 broadcastable to the input)
add               - (2+ inputs of one shape)             -
concat            axis (of the tensor, no batch axis)    -
zero_pad          pads (top, bottom, left, right)        -
flatten           - (NHWC order, as Keras flattens)      -
reshape           shape (no batch axis; one -1 allowed)  -
transpose         perm (of the axes without batch)       -
dense             - (on a flat input)                    kernel (in, out), bias (out,)
================ ===================================== ==================================

Shapes never include the batch axis: an image input is (H, W, C). The
graph computes NHWC whatever its source; ``input_layout`` records the
layout the source model's callers use (NCHW for PyTorch/ONNX), which the
user-facing Model and Client accept (graph.layout).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pysmpc.graph.layout import check_layout, shape_in_layout

__all__ = ["KINDS", "INPUT_RANGE_KEY", "Graph", "GraphError", "Layer", "check_input_range", "conv_padding",
           "pool_padding", "reachable_layers"]

KINDS = ("conv2d", "depthwise_conv2d", "avg_pool2d", "max_pool2d", "global_avg_pool", "global_max_pool",
         "relu", "clip", "sigmoid", "tanh", "softmax", "batch_norm", "add", "concat", "zero_pad", "flatten",
         "reshape", "transpose", "dense")

_WEIGHTS = {
    "conv2d": ("kernel", "bias"),
    "depthwise_conv2d": ("kernel", "bias"),
    "dense": ("kernel", "bias"),
    "batch_norm": ("scale", "shift"),
}
# Kinds that read several tensors; every other kind reads exactly one.
_MULTI_INPUT = ("add", "concat")
_SPATIAL = ("conv2d", "depthwise_conv2d", "avg_pool2d", "max_pool2d")


class GraphError(ValueError):
    """A graph or layer is malformed: unknown kind, bad weights, shapes or connections."""


# Where a model file records its input range: an HDF5 root attribute (Keras
# .h5/.hdf5) or an ONNX metadata_props entry, "low,high" or two numbers.
INPUT_RANGE_KEY = "pysmpc_input_range"


def check_input_range(value, what: str = "input_range") -> tuple[float, float] | None:
    """Return value as (low, high) floats with low < high, both finite; None stays None.

    Accepts a pair of numbers or the text "low,high" (as a file stores it).

    Raises:
        GraphError: anything else, naming `what`.
    """
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if isinstance(value, str):
        value = value.split(",")
    try:
        low, high = (float(v) for v in np.asarray(value, dtype=object).reshape(-1))
    except (TypeError, ValueError):
        raise GraphError(f"{what} must be two numbers (low, high), got {str(value)[:80]!r}") from None
    if not (np.isfinite(low) and np.isfinite(high) and low < high):
        raise GraphError(f"{what} must be finite with low < high, got ({low:g}, {high:g})")
    return (low, high)


def reachable_layers(layers: list, output: str) -> list:
    """The layers `output` depends on, in their order (importers drop the rest: values nobody reads)."""
    by_name = {layer.name: layer for layer in layers}
    needed, stack = set(), [output]
    while stack:
        name = stack.pop()
        if name in needed or name not in by_name:
            continue
        needed.add(name)
        stack.extend(by_name[name].inputs)
    return [layer for layer in layers if layer.name in needed]


def _pair(value, what: str) -> tuple[int, int]:
    """Return (a, b) from an int or a 2-sequence of positive ints."""
    pair: tuple[int, ...]
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        pair = (int(value), int(value))
    else:
        try:
            pair = tuple(int(v) for v in value)
        except TypeError:
            raise GraphError(f"{what} must be an int or a pair of ints, got {value!r}") from None
    if len(pair) != 2 or min(pair) < 1:
        raise GraphError(f"{what} must be a pair of positive ints, got {value!r}")
    return pair[0], pair[1]


def _bound(value, what: str):
    if value is None:
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise GraphError(f"{what} must be a number or None, got {value!r}") from None
    if not np.isfinite(value):
        raise GraphError(f"{what} must be finite, got {value!r}")
    return value


@dataclass
class Layer:
    """One layer: a ``kind`` from ``KINDS``, a unique ``name``, params, weights and input names.

    Missing params get defaults: conv2d stride (1, 1) and padding 'valid';
    pools stride = pool and padding 'valid'. Weights are stored as C-ordered
    float64 copies. ``inputs`` None means "the layer before" (resolved by
    the Graph).
    """

    kind: str
    name: str
    params: dict = field(default_factory=dict)
    weights: dict = field(default_factory=dict)
    inputs: list | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise GraphError(f"layer {self.name!r}: unknown kind {self.kind!r}; known kinds: {', '.join(KINDS)}")
        if not isinstance(self.name, str) or not self.name:
            raise GraphError(f"layer name must be a non-empty string, got {self.name!r}")
        if self.inputs is not None:
            if isinstance(self.inputs, str) or not all(isinstance(i, str) for i in self.inputs):
                raise GraphError(f"layer {self.name!r}: inputs must be a list of tensor names, got {self.inputs!r}")
            self.inputs = list(self.inputs)
        params = dict(self.params)
        where = f"layer {self.name!r} ({self.kind})"
        if self.kind in ("conv2d", "depthwise_conv2d"):
            params["stride"] = _pair(params.get("stride", 1), f"{where} stride")
            params["padding"] = _padding(params.get("padding", "valid"), where)
        elif self.kind in ("avg_pool2d", "max_pool2d"):
            if "pool" not in params:
                raise GraphError(f"{where}: missing param 'pool'")
            params["pool"] = _pair(params["pool"], f"{where} pool")
            params["stride"] = _pair(params.get("stride", params["pool"]), f"{where} stride")
            params["padding"] = _padding(params.get("padding", "valid"), where)
        elif self.kind in ("global_avg_pool", "global_max_pool"):
            params["keepdims"] = bool(params.get("keepdims", False))
        elif self.kind == "clip":
            params["lo"] = _bound(params.get("lo"), f"{where} lo")
            params["hi"] = _bound(params.get("hi"), f"{where} hi")
            if params["lo"] is None and params["hi"] is None:
                raise GraphError(f"{where}: needs a bound: lo, hi or both")
            if params["lo"] is not None and params["hi"] is not None and params["lo"] > params["hi"]:
                raise GraphError(f"{where}: lo {params['lo']} is above hi {params['hi']}")
        elif self.kind == "concat":
            if "axis" not in params:
                raise GraphError(f"{where}: missing param 'axis'")
            params["axis"] = int(params["axis"])
        elif self.kind == "zero_pad":
            given = params.get("pads")
            try:
                pads = tuple(int(p) for p in given)  # type: ignore[union-attr]  # None: the TypeError below
            except TypeError:
                raise GraphError(f"{where}: pads must be (top, bottom, left, right), got {given!r}") from None
            if len(pads) != 4 or min(pads) < 0:
                raise GraphError(f"{where}: pads must be 4 non-negative ints (top, bottom, left, right), got {pads!r}")
            params["pads"] = pads
        elif self.kind == "reshape":
            try:
                params["shape"] = tuple(int(s) for s in params["shape"])
            except (KeyError, TypeError):
                raise GraphError(f"{where}: needs param 'shape', a tuple of ints (no batch axis)") from None
        elif self.kind == "transpose":
            try:
                params["perm"] = tuple(int(p) for p in params["perm"])
            except (KeyError, TypeError):
                raise GraphError(f"{where}: needs param 'perm', the order of the axes (no batch axis)") from None
        self.params = params
        self.weights = {k: np.array(v, dtype=np.float64, order="C") for k, v in self.weights.items()}
        self.check_weights()

    def check_weights(self) -> None:
        """Check the weights' names, shapes and values (finite), storing them as C-ordered float64.

        Importers that fold a bias or a batch norm into a layer after
        building it are checked again by Graph.validate.
        """
        where = f"layer {self.name!r} ({self.kind})"
        expected = _WEIGHTS.get(self.kind, ())
        if set(self.weights) != set(expected):
            raise GraphError(
                f"{where}: expected weights {list(expected)}, got {sorted(self.weights)}"
            )
        self.weights = {k: np.require(v, dtype=np.float64, requirements="C") for k, v in self.weights.items()}
        for key, value in self.weights.items():
            if not np.all(np.isfinite(value)):
                raise GraphError(f"{where}: weight {key!r} contains NaN or infinity")
        if self.kind in ("conv2d", "depthwise_conv2d"):
            kernel, bias = self.weights["kernel"], self.weights["bias"]
            outputs = None if kernel.ndim != 4 else (
                kernel.shape[3] if self.kind == "conv2d" else kernel.shape[2] * kernel.shape[3])
            if outputs is None or bias.shape != (outputs,):
                what = "(cout,)" if self.kind == "conv2d" else "(cin * multiplier,)"
                raise GraphError(
                    f"{where}: kernel must be (kh, kw, cin, {'cout' if self.kind == 'conv2d' else 'multiplier'}) "
                    f"and bias {what}; got kernel {kernel.shape}, bias {bias.shape}"
                )
        elif self.kind == "dense":
            kernel, bias = self.weights["kernel"], self.weights["bias"]
            if kernel.ndim != 2 or bias.shape != (kernel.shape[1],):
                raise GraphError(
                    f"{where}: kernel must be (in, out) and bias (out,); got kernel {kernel.shape}, bias {bias.shape}"
                )
        elif self.kind == "batch_norm":
            scale, shift = self.weights["scale"], self.weights["shift"]
            if scale.shape != shift.shape:
                raise GraphError(f"{where}: scale {scale.shape} and shift {shift.shape} must have one shape")

    def param_count(self) -> int:
        """Return the number of weights (kernel and bias entries)."""
        return int(sum(w.size for w in self.weights.values()))

    def output_shape(self, input_shape: tuple, *more_shapes: tuple) -> tuple:
        """Return this layer's output shape (no batch axis) for its input shape(s).

        Raises:
            GraphError: the input shape does not fit the layer.
        """
        shape = tuple(int(s) for s in input_shape)
        shapes = [shape] + [tuple(int(s) for s in m) for m in more_shapes]
        where = f"layer {self.name!r} ({self.kind}) with input shape {shape if not more_shapes else shapes}"
        kind, p = self.kind, self.params
        if kind in _MULTI_INPUT:
            if len(shapes) < 2:
                raise GraphError(f"{where}: needs at least two inputs")
        elif more_shapes:
            raise GraphError(f"{where}: takes one input, got {len(shapes)}")
        if kind in _SPATIAL or kind in ("global_avg_pool", "global_max_pool", "zero_pad"):
            if len(shape) != 3:
                raise GraphError(f"{where}: needs an (H, W, C) input")
        if kind in _SPATIAL:
            h, w, c = shape
            if kind in ("conv2d", "depthwise_conv2d"):
                kh, kw, cin, cout = self.weights["kernel"].shape
                if cin != c:
                    raise GraphError(f"{where}: kernel expects {cin} input channels, got {c}")
                if kind == "depthwise_conv2d":
                    cout = cin * cout
                top, bottom, left, right = conv_padding(self, shape)
                c = cout
            else:
                kh, kw = p["pool"]
                top, bottom, left, right = pool_padding(self, shape)
            h, w = h + top + bottom, w + left + right
            sh, sw = p["stride"]
            if h < kh or w < kw:
                raise GraphError(f"{where}: window {(kh, kw)} is larger than the (padded) input {(h, w)}")
            return ((h - kh) // sh + 1, (w - kw) // sw + 1, c)
        if kind in ("global_avg_pool", "global_max_pool"):
            return (1, 1, shape[2]) if p["keepdims"] else (shape[2],)
        if kind in ("relu", "clip", "sigmoid", "tanh", "softmax"):
            return shape
        if kind == "batch_norm":
            try:
                out = np.broadcast_shapes(shape, self.weights["scale"].shape)
            except ValueError:
                out = None
            if out != shape:
                raise GraphError(f"{where}: scale and shift of shape {self.weights['scale'].shape} do not "
                                 f"broadcast over the input")
            return shape
        if kind == "add":
            if any(s != shape for s in shapes):
                raise GraphError(f"{where}: all inputs must have one shape")
            return shape
        if kind == "concat":
            rank = len(shape)
            axis = p["axis"] + rank if p["axis"] < 0 else p["axis"]
            if not 0 <= axis < rank:
                raise GraphError(f"{where}: axis {p['axis']} out of range for rank {rank} (no batch axis)")
            for s in shapes:
                if len(s) != rank or s[:axis] + s[axis + 1:] != shape[:axis] + shape[axis + 1:]:
                    raise GraphError(f"{where}: inputs must match except along axis {axis}")
            return shape[:axis] + (sum(s[axis] for s in shapes),) + shape[axis + 1:]
        if kind == "zero_pad":
            top, bottom, left, right = p["pads"]
            return (shape[0] + top + bottom, shape[1] + left + right, shape[2])
        if kind == "flatten":
            return (int(np.prod(shape)),)
        if kind == "reshape":
            target = p["shape"]
            size = int(np.prod(shape))
            if target.count(-1) > 1 or any(t == 0 or t < -1 for t in target):
                raise GraphError(f"{where}: bad target shape {target}")
            if -1 in target:
                known = int(np.prod([t for t in target if t != -1]))
                if known == 0 or size % known:
                    raise GraphError(f"{where}: cannot reshape {size} elements to {target}")
                target = tuple(size // known if t == -1 else t for t in target)
            if int(np.prod(target)) != size:
                raise GraphError(f"{where}: cannot reshape {size} elements to {target}")
            return target
        if kind == "transpose":
            if sorted(p["perm"]) != list(range(len(shape))):
                raise GraphError(f"{where}: perm {p['perm']} is not a permutation of the {len(shape)} axes")
            return tuple(shape[a] for a in p["perm"])
        # dense
        n_in, n_out = self.weights["kernel"].shape
        if shape != (n_in,):
            hint = " (add a flatten layer before it)" if len(shape) > 1 else ""
            raise GraphError(f"{where}: kernel expects a flat input of {n_in} features{hint}")
        return (n_out,)

    def details(self) -> str:
        """A short description of the parameters (for summaries)."""
        p = self.params
        if self.kind == "conv2d":
            kh, kw, _, cout = self.weights["kernel"].shape
            return f"{cout} filters {kh}x{kw}, stride {p['stride']}, padding {p['padding']}"
        if self.kind == "depthwise_conv2d":
            kh, kw, cin, mult = self.weights["kernel"].shape
            return f"{cin}x{mult} depthwise {kh}x{kw}, stride {p['stride']}, padding {p['padding']}"
        if self.kind in ("avg_pool2d", "max_pool2d"):
            return f"pool {p['pool']}, stride {p['stride']}" + (f", padding {p['padding']}"
                                                                if p["padding"] != "valid" else "")
        if self.kind == "dense":
            return f"{self.weights['kernel'].shape[0]} -> {self.weights['kernel'].shape[1]}"
        if self.kind == "clip":
            return f"[{p['lo']}, {p['hi']}]"
        if self.kind in ("concat",):
            return f"axis {p['axis']}"
        if self.kind == "zero_pad":
            return f"pads {p['pads']}"
        if self.kind == "reshape":
            return f"to {p['shape']}"
        if self.kind == "transpose":
            return f"perm {p['perm']}"
        return ""


def _padding(value, where: str):
    if isinstance(value, str):
        value = value.lower()
        if value not in ("valid", "same"):
            raise GraphError(f"{where}: padding must be 'valid', 'same' or (top, bottom, left, right), got {value!r}")
        return value
    try:
        pads = tuple(int(p) for p in value)
    except TypeError:
        raise GraphError(f"{where}: bad padding {value!r}") from None
    if len(pads) != 4 or min(pads) < 0:
        raise GraphError(f"{where}: explicit padding must be 4 non-negative ints (top, bottom, left, right), got {value!r}")
    return "valid" if pads == (0, 0, 0, 0) else pads


def _same_padding(kh, kw, sh, sw, h, w) -> tuple[int, int, int, int]:
    pad_h = max((-(-h // sh) - 1) * sh + kh - h, 0)
    pad_w = max((-(-w // sw) - 1) * sw + kw - w, 0)
    return (pad_h // 2, pad_h - pad_h // 2, pad_w // 2, pad_w - pad_w // 2)


def conv_padding(layer: Layer, input_shape: tuple) -> tuple[int, int, int, int]:
    """Return the zero padding (top, bottom, left, right) a conv2d (or depthwise) layer applies.

    'valid' is no padding. 'same' follows TensorFlow/Keras: the output is
    ceil(H / sh) rows, and the total padding max((out - 1) * sh + kh - H, 0)
    is split with the extra row at the bottom (and column at the right).
    Explicit padding is returned as given.
    """
    padding = layer.params["padding"]
    if padding == "valid":
        return (0, 0, 0, 0)
    if padding != "same":
        return tuple(padding)
    kh, kw = layer.weights["kernel"].shape[:2]
    sh, sw = layer.params["stride"]
    return _same_padding(kh, kw, sh, sw, int(input_shape[0]), int(input_shape[1]))


def pool_padding(layer: Layer, input_shape: tuple) -> tuple[int, int, int, int]:
    """Return the padding (top, bottom, left, right) of a pooling layer, by the rule of conv_padding."""
    padding = layer.params["padding"]
    if padding == "valid":
        return (0, 0, 0, 0)
    if padding != "same":
        return tuple(padding)
    (kh, kw), (sh, sw) = layer.params["pool"], layer.params["stride"]
    return _same_padding(kh, kw, sh, sw, int(input_shape[0]), int(input_shape[1]))


@dataclass
class Graph:
    """A model: ``input_shape`` (no batch axis), then ``layers`` with every input before its readers.

    ``source`` says where the graph came from (a file path or a framework);
    ``notes`` records what an importer changed, e.g. a final softmax that was
    dropped (the client applies it) or a batch norm folded into a conv.
    ``output`` names the output tensor (default: the last layer's).
    ``input_layout`` is the layout the source model's callers pass images
    in: 'NHWC' (Keras; the default) or 'NCHW' (PyTorch, ONNX). The graph
    itself always computes on NHWC, and ``input_shape`` is (H, W, C) either
    way; ``Model`` transposes NCHW inputs (graph.layout).
    ``input_range`` is (low, high), the values the model was trained on
    (e.g. (0, 1) for pixels divided by 255), where the file records it
    (INPUT_RANGE_KEY); None when unknown.
    The graph is validated on construction; call ``validate()`` again after
    editing it.
    """

    input_shape: tuple
    layers: list
    source: str = ""
    notes: list = field(default_factory=list)
    input_layout: str = "NHWC"
    input_range: tuple | None = None
    input_name: str = "input"
    output: str | None = None

    def __post_init__(self) -> None:
        self.layers = list(self.layers)
        self.notes = list(self.notes)
        self.validate()

    def validate(self) -> None:
        """Check layer types, unique names, connections and that every shape fits.

        Layers built without inputs read the layer before them (the input
        for the first); this fills in their ``inputs``.

        Raises:
            GraphError: with the offending layer's index, name and shapes.
        """
        try:
            self.input_shape = tuple(int(s) for s in self.input_shape)
        except TypeError:
            raise GraphError(f"input_shape must be a tuple of ints, got {self.input_shape!r}") from None
        if not self.input_shape or min(self.input_shape) < 1:
            raise GraphError(f"input_shape must be non-empty with positive sizes, got {self.input_shape}")
        try:
            check_layout(self.input_layout, len(self.input_shape))
        except ValueError as exc:
            raise GraphError(str(exc)) from None
        self.input_range = check_input_range(self.input_range)
        if not self.layers:
            raise GraphError("graph has no layers")
        seen = {self.input_name}
        used = set()
        previous = self.input_name
        for i, layer in enumerate(self.layers):
            if not isinstance(layer, Layer):
                raise GraphError(f"layer {i} is a {type(layer).__name__}, not a Layer")
            if layer.name in seen:
                what = "the graph input's name" if layer.name == self.input_name else "duplicate layer name"
                raise GraphError(f"layer {i}: {what} {layer.name!r}")
            if layer.inputs is None:
                layer.inputs = [previous]
            for name in layer.inputs:
                if name not in seen:
                    raise GraphError(f"layer {i} ({layer.name!r}) reads {name!r}, which is not the input or a "
                                     "layer before it")
            arity = len(layer.inputs)
            if (arity < 2) if layer.kind in _MULTI_INPUT else (arity != 1):
                raise GraphError(f"layer {i} ({layer.name!r}, {layer.kind}) takes "
                                 f"{'two or more inputs' if layer.kind in _MULTI_INPUT else 'one input'}, "
                                 f"got {layer.inputs}")
            used.update(layer.inputs)
            seen.add(layer.name)
            previous = layer.name
            try:
                layer.check_weights()
            except GraphError as exc:
                raise GraphError(f"layer {i}: {exc}") from None
        if self.output is None:
            self.output = self.layers[-1].name
        if self.output not in seen or self.output == self.input_name:
            raise GraphError(f"output {self.output!r} is not a layer of the graph")
        unused = [layer.name for layer in self.layers if layer.name not in used and layer.name != self.output]
        if unused:
            raise GraphError(f"the outputs of layers {unused} are never used (the graph has one output, "
                             f"{self.output!r})")
        self.shapes()

    def shapes(self) -> list:
        """Return the shapes [input, after layer 0, after layer 1, ...] (no batch axis)."""
        known = {self.input_name: self.input_shape}
        shapes = [self.input_shape]
        for i, layer in enumerate(self.layers):
            try:
                shape = layer.output_shape(*(known[n] for n in layer.inputs))
            except GraphError as exc:
                raise GraphError(f"layer {i}: {exc}") from None
            known[layer.name] = shape
            shapes.append(shape)
        return shapes

    def tensor_shapes(self) -> dict:
        """Return {tensor name: shape} for the input and every layer's output (no batch axis)."""
        names = [self.input_name] + [layer.name for layer in self.layers]
        return dict(zip(names, self.shapes()))

    def output_shape(self) -> tuple:
        """Return the shape of the graph's output (no batch axis)."""
        return self.tensor_shapes()[self.output]

    def is_sequential(self) -> bool:
        """Whether each layer reads only the one before it (the input for the first), ending at the last."""
        previous = self.input_name
        for layer in self.layers:
            if layer.inputs != [previous]:
                return False
            previous = layer.name
        return self.output == previous

    def last_uses(self) -> list[list[str]]:
        """For each layer, the tensors no later layer reads (executors free them after it).

        The graph's output is never freed.
        """
        last = {}
        for i, layer in enumerate(self.layers):
            for name in layer.inputs:
                last[name] = i
        frees: list[list[str]] = [[] for _ in self.layers]
        for name, i in last.items():
            if name != self.output:
                frees[i].append(name)
        return frees

    def consumers(self) -> dict:
        """Return {tensor name: [indices of the layers that read it]}."""
        readers: dict = {self.input_name: []}
        for i, layer in enumerate(self.layers):
            readers.setdefault(layer.name, [])
            for name in layer.inputs:
                readers[name].append(i)
        return readers

    def param_count(self) -> int:
        """Return the total number of weights."""
        return sum(layer.param_count() for layer in self.layers)

    def summary(self) -> str:
        """Return a text table: each layer's name, kind, details, output shape and weights."""
        shapes = self.shapes()
        sequential = self.is_sequential()
        layout = ("" if self.input_layout == "NHWC"
                  else f"callers pass {self.input_layout} {shape_in_layout(shapes[0], self.input_layout)}")
        head = ("#", "name", "kind", "details", "output shape", "params") + (() if sequential else ("inputs",))
        rows = [head, ("", self.input_name, "", layout, str(shapes[0]), "0") + (() if sequential else ("",))]
        for i, layer in enumerate(self.layers):
            row = (str(i), layer.name, layer.kind, layer.details(), str(shapes[i + 1]), str(layer.param_count()))
            rows.append(row + (() if sequential else (", ".join(layer.inputs),)))
        widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
        lines = [f"Graph from {self.source or '(unknown source)'}"]
        for r in rows:
            lines.append("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip())
        lines.append(f"Total params: {self.param_count()}")
        lines.extend(f"Note: {note}" for note in self.notes)
        return "\n".join(lines)

