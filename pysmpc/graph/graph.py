"""A sequential model graph: NHWC layers with float64 weights, and shape inference.

A ``Graph`` is what every importer (Keras HDF5, Keras 3 ``.keras``, ONNX)
produces and every executor (float, fixed-point, shared) consumes. It holds
no framework objects, only numpy arrays and plain parameters, so it can be
built by hand in tests.

Layer kinds (exact strings) and what each holds:

========== ======================================= ===========================
kind        params                                   weights
========== ======================================= ===========================
conv2d      stride (sh, sw); padding 'valid',        kernel (kh, kw, cin, cout)
            'same' (TensorFlow rule) or explicit     (HWIO), bias (cout,)
            (top, bottom, left, right)
avg_pool2d  pool (ph, pw), stride (sh, sw),          -
            padding 'valid'
max_pool2d  as avg_pool2d                            -
relu        -                                        -
flatten     - (NHWC order, as Keras flattens)        -
dense       -                                        kernel (in, out), bias (out,)
========== ======================================= ===========================

Shapes never include the batch axis: an image input is (H, W, C). The
graph computes NHWC whatever its source; ``input_layout`` records the
layout the source model's callers use (NCHW for PyTorch/ONNX), which the
user-facing Model and Client accept (graph.layout).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pysmpc.graph.layout import check_layout, shape_in_layout

__all__ = ["KINDS", "INPUT_RANGE_KEY", "Graph", "GraphError", "Layer", "check_input_range", "conv_padding"]

KINDS = ("conv2d", "avg_pool2d", "max_pool2d", "relu", "flatten", "dense")

_WEIGHTS = {
    "conv2d": ("kernel", "bias"),
    "dense": ("kernel", "bias"),
    "avg_pool2d": (),
    "max_pool2d": (),
    "relu": (),
    "flatten": (),
}


class GraphError(ValueError):
    """A graph or layer is malformed: unknown kind, bad weights or shapes."""


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


@dataclass
class Layer:
    """One layer: a ``kind`` from ``KINDS``, a unique ``name``, params and weights.

    Missing params get defaults: conv2d stride (1, 1) and padding 'valid';
    pools stride = pool and padding 'valid'. Weights are stored as C-ordered
    float64 copies.
    """

    kind: str
    name: str
    params: dict = field(default_factory=dict)
    weights: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise GraphError(f"layer {self.name!r}: unknown kind {self.kind!r}; known kinds: {', '.join(KINDS)}")
        params = dict(self.params)
        where = f"layer {self.name!r} ({self.kind})"
        if self.kind == "conv2d":
            params["stride"] = _pair(params.get("stride", 1), f"{where} stride")
            params["padding"] = _padding(params.get("padding", "valid"), where)
        elif self.kind in ("avg_pool2d", "max_pool2d"):
            if "pool" not in params:
                raise GraphError(f"{where}: missing param 'pool'")
            params["pool"] = _pair(params["pool"], f"{where} pool")
            params["stride"] = _pair(params.get("stride", params["pool"]), f"{where} stride")
            padding = params.get("padding", "valid")
            if padding != "valid":
                raise GraphError(f"{where}: only padding 'valid' is supported for pooling, got {padding!r}")
            params["padding"] = "valid"
        self.params = params
        self.weights = {k: np.array(v, dtype=np.float64, order="C") for k, v in self.weights.items()}
        self.check_weights()

    def check_weights(self) -> None:
        """Check the weights' names, shapes and values (finite), storing them as C-ordered float64.

        Importers that fold a bias or a batch norm into a layer after
        building it are checked again by Graph.validate.
        """
        where = f"layer {self.name!r} ({self.kind})"
        expected = _WEIGHTS[self.kind]
        if set(self.weights) != set(expected):
            raise GraphError(
                f"{where}: expected weights {list(expected)}, got {sorted(self.weights)}"
            )
        self.weights = {k: np.require(v, dtype=np.float64, requirements="C") for k, v in self.weights.items()}
        for key, value in self.weights.items():
            if not np.all(np.isfinite(value)):
                raise GraphError(f"{where}: weight {key!r} contains NaN or infinity")
        if self.kind == "conv2d":
            kernel, bias = self.weights["kernel"], self.weights["bias"]
            if kernel.ndim != 4 or bias.shape != (kernel.shape[3],):
                raise GraphError(
                    f"{where}: kernel must be (kh, kw, cin, cout) and bias (cout,); "
                    f"got kernel {kernel.shape}, bias {bias.shape}"
                )
        elif self.kind == "dense":
            kernel, bias = self.weights["kernel"], self.weights["bias"]
            if kernel.ndim != 2 or bias.shape != (kernel.shape[1],):
                raise GraphError(
                    f"{where}: kernel must be (in, out) and bias (out,); got kernel {kernel.shape}, bias {bias.shape}"
                )

    def param_count(self) -> int:
        """Return the number of weights (kernel and bias entries)."""
        return int(sum(w.size for w in self.weights.values()))

    def output_shape(self, input_shape: tuple) -> tuple:
        """Return this layer's output shape (no batch axis) for ``input_shape``.

        Raises:
            GraphError: the input shape does not fit the layer.
        """
        shape = tuple(int(s) for s in input_shape)
        where = f"layer {self.name!r} ({self.kind}) with input shape {shape}"
        if self.kind in ("conv2d", "avg_pool2d", "max_pool2d"):
            if len(shape) != 3:
                raise GraphError(f"{where}: needs an (H, W, C) input")
            h, w, c = shape
            if self.kind == "conv2d":
                kh, kw, cin, cout = self.weights["kernel"].shape
                if cin != c:
                    raise GraphError(f"{where}: kernel expects {cin} input channels, got {c}")
                top, bottom, left, right = conv_padding(self, shape)
                h, w, c = h + top + bottom, w + left + right, cout
            else:
                kh, kw = self.params["pool"]
            sh, sw = self.params["stride"]
            if h < kh or w < kw:
                raise GraphError(f"{where}: window {(kh, kw)} is larger than the (padded) input {(h, w)}")
            return ((h - kh) // sh + 1, (w - kw) // sw + 1, c)
        if self.kind == "relu":
            return shape
        if self.kind == "flatten":
            return (int(np.prod(shape)),)
        # dense
        n_in, n_out = self.weights["kernel"].shape
        if shape != (n_in,):
            hint = " (add a flatten layer before it)" if len(shape) > 1 else ""
            raise GraphError(f"{where}: kernel expects a flat input of {n_in} features{hint}")
        return (n_out,)


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


def conv_padding(layer: Layer, input_shape: tuple) -> tuple[int, int, int, int]:
    """Return the zero padding (top, bottom, left, right) a conv2d layer applies.

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
    h, w = int(input_shape[0]), int(input_shape[1])
    pad_h = max((-(-h // sh) - 1) * sh + kh - h, 0)
    pad_w = max((-(-w // sw) - 1) * sw + kw - w, 0)
    return (pad_h // 2, pad_h - pad_h // 2, pad_w // 2, pad_w - pad_w // 2)


@dataclass
class Graph:
    """A sequential model: ``input_shape`` (no batch axis), then ``layers`` in order.

    ``source`` says where the graph came from (a file path or a framework);
    ``notes`` records what an importer changed, e.g. a final softmax that was
    dropped (the client applies it) or a batch norm folded into a conv.
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

    def __post_init__(self) -> None:
        self.layers = list(self.layers)
        self.notes = list(self.notes)
        self.validate()

    def validate(self) -> None:
        """Check layer types, unique names and that every shape fits.

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
        seen = set()
        for i, layer in enumerate(self.layers):
            if not isinstance(layer, Layer):
                raise GraphError(f"layer {i} is a {type(layer).__name__}, not a Layer")
            if layer.name in seen:
                raise GraphError(f"layer {i}: duplicate layer name {layer.name!r}")
            seen.add(layer.name)
            try:
                layer.check_weights()
            except GraphError as exc:
                raise GraphError(f"layer {i}: {exc}") from None
        self.shapes()

    def shapes(self) -> list:
        """Return the shapes [input, after layer 0, after layer 1, ...] (no batch axis)."""
        shapes = [self.input_shape]
        for i, layer in enumerate(self.layers):
            try:
                shapes.append(layer.output_shape(shapes[-1]))
            except GraphError as exc:
                raise GraphError(f"layer {i}: {exc}") from None
        return shapes

    def output_shape(self) -> tuple:
        """Return the shape of the graph's output (no batch axis)."""
        return self.shapes()[-1]

    def param_count(self) -> int:
        """Return the total number of weights."""
        return sum(layer.param_count() for layer in self.layers)

    def summary(self) -> str:
        """Return a text table: each layer's name, kind, details, output shape and weights."""
        shapes = self.shapes()
        layout = ("" if self.input_layout == "NHWC"
                  else f"callers pass {self.input_layout} {shape_in_layout(shapes[0], self.input_layout)}")
        rows = [("#", "name", "kind", "details", "output shape", "params"),
                ("", "input", "", layout, str(shapes[0]), "0")]
        for i, layer in enumerate(self.layers):
            p = layer.params
            if layer.kind == "conv2d":
                kh, kw, _, cout = layer.weights["kernel"].shape
                details = f"{cout} filters {kh}x{kw}, stride {p['stride']}, padding {p['padding']}"
            elif layer.kind in ("avg_pool2d", "max_pool2d"):
                details = f"pool {p['pool']}, stride {p['stride']}"
            elif layer.kind == "dense":
                details = f"{layer.weights['kernel'].shape[0]} -> {layer.weights['kernel'].shape[1]}"
            else:
                details = ""
            rows.append((str(i), layer.name, layer.kind, details, str(shapes[i + 1]), str(layer.param_count())))
        widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
        lines = [f"Graph from {self.source or '(unknown source)'}"]
        for r in rows:
            lines.append("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip())
        lines.append(f"Total params: {self.param_count()}")
        lines.extend(f"Note: {note}" for note in self.notes)
        return "\n".join(lines)
