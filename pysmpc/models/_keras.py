"""Translate a Keras model config (Keras 2 or 3 JSON) plus its weights into a Graph.

Shared by the HDF5 reader, the ``.keras`` reader and ``from_keras``: each
supplies the parsed config and a function that returns one layer's weights
by name (kernel, bias, gamma, beta, moving_mean, moving_variance). Nothing
here imports Keras or runs code from the file: configs are plain JSON.
"""

from __future__ import annotations

import json
from typing import Callable

import numpy as np

from pysmpc.graph.fold import fold_batch_norms
from pysmpc.graph.graph import Graph, Layer, reachable_layers
from pysmpc.models._errors import ModelFormatError

SUPPORTED = (
    "InputLayer", "Conv2D", "DepthwiseConv2D", "SeparableConv2D", "Dense", "MaxPooling2D", "AveragePooling2D",
    "GlobalAveragePooling2D", "GlobalMaxPooling2D", "BatchNormalization", "Dropout", "SpatialDropout2D",
    "Flatten", "Reshape", "ZeroPadding2D", "Rescaling", "Add", "Concatenate", "Activation", "ReLU", "Softmax",
)
ACTIVATIONS = ("linear", "relu", "relu6", "sigmoid", "tanh", "softmax")
_IDENTITY = ("InputLayer", "Dropout", "SpatialDropout2D")
_MODELS = ("Sequential", "Functional", "Model")

WeightsFn = Callable[[dict, int], dict]
# What malformed JSON (a list where a dict belongs, a missing key, a string
# for a number) raises deep inside the translation.
MALFORMED = (KeyError, IndexError, TypeError, AttributeError, OverflowError)


def parse_config(text, source: str) -> dict:
    """Parse a model config (JSON text or bytes); ModelFormatError if it is not a JSON object."""
    try:
        config = json.loads(text)
    except (ValueError, RecursionError) as exc:  # RecursionError: "[[[[..." nested too deep
        raise ModelFormatError(f"{source}: the model config is not valid JSON: {str(exc)[:200]}") from None
    if not isinstance(config, dict):
        raise ModelFormatError(f"{source}: the model config is a JSON {type(config).__name__}, not an object")
    return config


def unsupported(name: str, cls: str, why: str = "") -> ValueError:
    """Return the error for a layer the importer cannot translate."""
    reason = f" ({why})" if why else ""
    return ValueError(
        f"unsupported layer {name!r} of class {cls}{reason}; supported layers: {', '.join(SUPPORTED)} "
        f"(activations {', '.join(ACTIVATIONS)})"
    )


def model_layers(model_config: dict, source: str = "model") -> tuple[str, list]:
    """Return (model class, layer configs in order) from a model config."""
    if not isinstance(model_config, dict) or "class_name" not in model_config:
        raise ModelFormatError(f"{source}: model config is not a Keras model config (no 'class_name')")
    cls = model_config["class_name"]
    config = model_config.get("config", {})
    if cls not in _MODELS:
        raise ValueError(f"{source}: top-level object is a {str(cls)[:80]}, expected one of {', '.join(_MODELS)}")
    layers = config.get("layers") if isinstance(config, dict) else config  # Keras 2.2 Sequential: a bare list
    if not isinstance(layers, list) or not layers:
        raise ModelFormatError(f"{source}: {cls} config has no layers")
    for index, layer in enumerate(layers):
        if not (isinstance(layer, dict) and isinstance(layer.get("class_name", ""), str)
                and isinstance(layer.get("config", {}), dict)):
            raise ModelFormatError(f"{source}: {cls} config: layer {index} is not a layer config: {str(layer)[:80]}")
    return cls, layers


def _inbound_names(node) -> list:
    """Collect the layer names a Keras 2 or 3 inbound node refers to, in order."""
    names = []
    if isinstance(node, dict):
        if node.get("class_name") == "__keras_tensor__":
            names.append(node["config"]["keras_history"][0])
        else:
            for value in node.values():
                names.extend(_inbound_names(value))
    elif isinstance(node, (list, tuple)):  # a live model's config (from_keras) has tuples
        if len(node) >= 3 and isinstance(node[0], str) and isinstance(node[1], int):
            names.append(node[0])  # Keras 2: [layer_name, node_index, tensor_index, kwargs]
        else:
            for value in node:
                names.extend(_inbound_names(value))
    return names


def _io_names(value, what: str, source: str) -> list:
    """Layer names of a Functional config's input_layers / output_layers (Keras 2 nests them, Keras 3 may not)."""
    if isinstance(value, (list, tuple)) and len(value) >= 3 and isinstance(value[0], str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(
            isinstance(v, (list, tuple)) and v and isinstance(v[0], str) for v in value):
        raise ModelFormatError(f"{source}: malformed {what}: {str(value)[:80]}")
    return [v[0] for v in value]


def _connections(cls: str, config: dict, layers: list, source: str) -> tuple[list, list, str]:
    """(layer configs in an order where inputs come first, the inputs of each, the output layer's name)."""
    names = [spec.get("config", {}).get("name", spec.get("name", f"layer_{i}")) for i, spec in enumerate(layers)]
    if cls == "Sequential":
        inputs = [[]] + [[n] for n in names[:-1]]
        return layers, inputs, names[-1]
    inputs = []
    for spec, name in zip(layers, names):
        nodes = spec.get("inbound_nodes", [])
        if isinstance(nodes, list) and len(nodes) > 1:
            raise unsupported(name, spec.get("class_name", "?"), "a layer applied more than once (shared layers)")
        try:
            inputs.append(_inbound_names(nodes))
        except MALFORMED as exc:
            raise ModelFormatError(f"{source}: {cls} config: malformed inbound nodes of layer {str(name)[:60]!r}: "
                                   f"{type(exc).__name__}: {str(exc)[:200]}") from None
    model_inputs = _io_names(config.get("input_layers", []), "input_layers", source)
    model_outputs = _io_names(config.get("output_layers", []), "output_layers", source)
    if len(model_inputs) != 1 or len(model_outputs) != 1:
        raise ValueError(f"{source}: the model has inputs {model_inputs} and outputs {model_outputs}; "
                         "only one input and one output are supported")
    # Topological order (a config lists layers in creation order, which is usually one).
    position = {n: i for i, n in enumerate(names)}
    for name, ins in zip(names, inputs):
        for n in ins:
            if n not in position:
                raise ModelFormatError(f"{source}: layer {name!r} reads {n!r}, which is not a layer of the model")
    # Kahn's algorithm (iterative: a deep model must not exhaust Python's recursion).
    waiting = [len(set(ins)) for ins in inputs]
    readers: dict = {}
    for i, ins in enumerate(inputs):
        for n in set(ins):
            readers.setdefault(position[n], []).append(i)
    ready = [i for i, w in enumerate(waiting) if w == 0]
    order = []
    while ready:
        i = ready.pop(0)
        order.append(i)
        for j in readers.get(i, []):
            waiting[j] -= 1
            if not waiting[j]:
                ready.append(j)
    if len(order) != len(names):
        stuck = [names[i] for i, w in enumerate(waiting) if w]
        raise ModelFormatError(f"{source}: the layers' connections form a cycle through {stuck[:5]}")
    return [layers[i] for i in order], [inputs[i] for i in order], model_outputs[0]


def _input_shape(layers: list):
    for layer in layers[:2]:
        cfg = layer.get("config", {})
        for key in ("batch_shape", "batch_input_shape"):
            if cfg.get(key):
                return tuple(cfg[key][1:])
    return None


def _activation(cfg: dict) -> str:
    act = cfg.get("activation", "linear")
    if isinstance(act, dict):  # Keras 3 may serialize it as an object
        act = act.get("config", {}).get("name", act.get("class_name", "?"))
    return str(act).lower()


def _pair(value):
    return (value, value) if isinstance(value, int) else tuple(value)


def _batch_norm_affine(w: dict, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """(scale, shift) of y = gamma (x - mean) / sqrt(var + eps) + beta."""
    mean, var = w["moving_mean"], w["moving_variance"]
    gamma = w.get("gamma", np.ones_like(mean))
    beta = w.get("beta", np.zeros_like(mean))
    scale = gamma / np.sqrt(var + eps)
    return scale, beta - mean * scale


def graph_from_keras(model_config: dict, weights: WeightsFn, source: str, input_shape=None) -> Graph:
    """Build a Graph from a Keras model config and a per-layer weights function.

    ``weights(layer_config, index)`` returns {weight name: array} for the
    index-th layer config. Sequential and Functional models (one input, one
    output) are translated layer by layer (``SUPPORTED``); each layer's
    activation= becomes a layer of its own; InputLayer and dropout layers
    are identities; batch norms are folded into the product before them
    where they can be (graph.fold_batch_norms, noted); a softmax that is
    the model's output is dropped with a note (the client applies it).

    Raises:
        ModelFormatError: the config is malformed (wrong types, missing
            keys, missing weights); the message names the layer.
        ValueError: a layer is unsupported; GraphError: shapes do not fit.
    """
    where = ["model config"]
    try:
        return _graph_from_keras(model_config, weights, source, input_shape, where)
    except MALFORMED as exc:
        raise ModelFormatError(f"{source}: malformed {where[0]}: {type(exc).__name__}: {str(exc)[:200]}") from None


class _Builder:
    """Graph layers as Keras layers are translated: unique names, and each Keras layer's output tensor."""

    def __init__(self):
        self.layers: list = []
        self.names: set = {"input"}
        self.tensor: dict = {}  # Keras layer name -> graph tensor name
        self.softmax_of: dict = {}  # graph tensor -> (Keras layer, class) of a softmax that made it
        self.bn_axes: dict = {}  # batch_norm layer -> the Keras axis it normalizes (checked once shapes are known)

    def emit(self, kind: str, name: str, inputs: list, params=None, weights=None) -> str:
        base, n = name, 1
        while name in self.names:
            name, n = f"{base}_{n}", n + 1
        self.names.add(name)
        self.layers.append(Layer(kind, name, params or {}, weights or {}, inputs=inputs))
        return name

    def activation(self, act: str, tensor: str, name: str, cls: str, own: bool) -> str:
        """The activation `act` applied to `tensor` (the layer itself when `own`, an Activation layer)."""
        layer_name = name if own else f"{name}_{act}"
        if act == "linear":
            return tensor
        if act == "relu":
            return self.emit("relu", layer_name, [tensor])
        if act == "relu6":
            return self.emit("clip", layer_name, [tensor], {"lo": 0.0, "hi": 6.0})
        if act in ("sigmoid", "tanh"):
            return self.emit(act, layer_name, [tensor])
        if act == "softmax":
            out = self.emit("softmax", layer_name, [tensor])
            self.softmax_of[out] = (name, cls)
            return out
        raise unsupported(name, cls, f"activation {act!r}")


def _graph_from_keras(model_config, weights: WeightsFn, source: str, input_shape, where: list) -> Graph:
    cls, specs = model_layers(model_config, source)
    config = model_config.get("config", {})
    ordered, inputs, output = _connections(cls, config if isinstance(config, dict) else {}, specs, source)
    shape = _input_shape(specs) or input_shape
    if shape is None or any(s is None for s in shape):
        raise ValueError(f"{source}: cannot tell the model's input shape from its config (got {shape}); it must be fixed")
    index_of = {id(spec): i for i, spec in enumerate(specs)}
    b = _Builder()
    for spec, ins in zip(ordered, inputs):
        index = index_of[id(spec)]
        layer_cls = spec.get("class_name", "?")
        cfg = spec.get("config", {})
        name = cfg.get("name", f"layer_{index}")
        where[0] = f"config of layer {index} ({str(name)[:60]!r} of class {str(layer_cls)[:60]})"
        if cfg.get("data_format", "channels_last") != "channels_last":
            raise unsupported(name, layer_cls, f"data_format {cfg['data_format']!r}; only channels_last")
        if layer_cls == "InputLayer" or (cls == "Sequential" and not ins):
            b.tensor[name] = "input"
            if layer_cls == "InputLayer":
                continue
        sources = [b.tensor[n] for n in ins] if ins else ["input"]
        b.tensor[name] = _translate(b, layer_cls, cfg, name, sources, lambda: weights(spec, index))
    where[0] = "model config"
    out = b.tensor[output]
    notes = []
    if out in b.softmax_of:
        layer_name, _ = b.softmax_of[out]
        softmax = next(layer for layer in b.layers if layer.name == out)
        out = softmax.inputs[0]
        notes.append(f"final softmax of {layer_name!r} dropped: the graph outputs logits, the client applies softmax")
    if out == "input":
        raise ValueError(f"{source}: the model computes nothing on its input")
    layers = reachable_layers(b.layers, out)
    graph = Graph(tuple(shape), layers, source=source, notes=notes, output=out)
    shapes = graph.tensor_shapes()
    for layer in graph.layers:
        if layer.name in b.bn_axes:
            rank = len(shapes[layer.inputs[0]])
            if b.bn_axes[layer.name] not in (-1, rank):  # Keras counts the batch axis
                raise unsupported(layer.name, "BatchNormalization",
                                  f"axis {b.bn_axes[layer.name]}; only the channel (last) axis")
    return fold_batch_norms(graph)


def _translate(b: _Builder, cls: str, cfg: dict, name: str, sources: list, weights: Callable) -> str:
    """Emit the graph layers of one Keras layer; return its output tensor."""
    if cls in _IDENTITY:
        return sources[0]
    if cls in ("Add", "Concatenate"):
        if len(sources) < 2:
            raise unsupported(name, cls, "fewer than two inputs")
        if cls == "Add":
            return b.emit("add", name, sources)
        axis = int(cfg.get("axis", -1))
        if axis == 0:
            raise unsupported(name, cls, "axis 0 is the batch axis")
        return b.emit("concat", name, sources, {"axis": axis if axis < 0 else axis - 1})  # Keras counts the batch
    if len(sources) != 1:
        raise unsupported(name, cls, f"{len(sources)} inputs")
    x = sources[0]
    if cls in ("Conv2D", "DepthwiseConv2D", "SeparableConv2D"):
        if _pair(cfg.get("dilation_rate", 1)) != (1, 1) or cfg.get("groups", 1) != 1:
            raise unsupported(name, cls, "dilation or groups")
        if cfg.get("padding", "valid") not in ("valid", "same"):
            raise unsupported(name, cls, f"padding {cfg.get('padding')!r}")
        params = {"stride": _pair(cfg.get("strides", 1)), "padding": cfg.get("padding", "valid")}
        w = weights()
        if cls == "Conv2D":
            bias = w.get("bias", np.zeros(w["kernel"].shape[-1]))
            y = b.emit("conv2d", name, [x], params, {"kernel": w["kernel"], "bias": bias})
        elif cls == "DepthwiseConv2D":
            kernel = w["depthwise_kernel"] if "depthwise_kernel" in w else w["kernel"]
            bias = w.get("bias", np.zeros(kernel.shape[2] * kernel.shape[3]))
            y = b.emit("depthwise_conv2d", name, [x], params, {"kernel": kernel, "bias": bias})
        else:
            depthwise, pointwise = w["depthwise_kernel"], w["pointwise_kernel"]
            mid = b.emit("depthwise_conv2d", f"{name}_depthwise", [x], params,
                         {"kernel": depthwise, "bias": np.zeros(depthwise.shape[2] * depthwise.shape[3])})
            bias = w.get("bias", np.zeros(pointwise.shape[-1]))
            y = b.emit("conv2d", name, [mid], {}, {"kernel": pointwise, "bias": bias})
        return b.activation(_activation(cfg), y, name, cls, own=False)
    if cls == "Dense":
        w = weights()
        bias = w.get("bias", np.zeros(w["kernel"].shape[-1]))
        y = b.emit("dense", name, [x], {}, {"kernel": w["kernel"], "bias": bias})
        return b.activation(_activation(cfg), y, name, cls, own=False)
    if cls in ("AveragePooling2D", "MaxPooling2D"):
        padding = cfg.get("padding", "valid")
        if padding not in ("valid", "same"):
            raise unsupported(name, cls, f"padding {padding!r}")
        pool = _pair(cfg.get("pool_size", 2))
        stride = _pair(cfg.get("strides") or pool)
        kind = "avg_pool2d" if cls == "AveragePooling2D" else "max_pool2d"
        return b.emit(kind, name, [x], {"pool": pool, "stride": stride, "padding": padding})
    if cls in ("GlobalAveragePooling2D", "GlobalMaxPooling2D"):
        kind = "global_avg_pool" if cls == "GlobalAveragePooling2D" else "global_max_pool"
        return b.emit(kind, name, [x], {"keepdims": bool(cfg.get("keepdims", False))})
    if cls == "Activation":
        return b.activation(_activation(cfg), x, name, cls, own=True)
    if cls == "Softmax":
        if cfg.get("axis", -1) not in (-1, [-1]):
            raise unsupported(name, cls, f"axis {cfg.get('axis')}; only the last axis")
        return b.activation("softmax", x, name, cls, own=True)
    if cls == "ReLU":
        if cfg.get("negative_slope", 0) or cfg.get("threshold", 0):
            raise unsupported(name, cls, "negative_slope or threshold set")
        if cfg.get("max_value") is None:
            return b.emit("relu", name, [x])
        return b.emit("clip", name, [x], {"lo": 0.0, "hi": float(cfg["max_value"])})
    if cls == "Flatten":
        return b.emit("flatten", name, [x])
    if cls == "Reshape":
        return b.emit("reshape", name, [x], {"shape": tuple(int(s) for s in cfg["target_shape"])})
    if cls == "ZeroPadding2D":
        pad = cfg.get("padding", 1)
        if isinstance(pad, int):
            pads = (pad, pad, pad, pad)
        elif all(isinstance(p, int) for p in pad):
            pads = (pad[0], pad[0], pad[1], pad[1])
        else:
            (top, bottom), (left, right) = pad
            pads = (top, bottom, left, right)
        return b.emit("zero_pad", name, [x], {"pads": pads})
    if cls == "Rescaling":
        scale = np.atleast_1d(np.asarray(cfg.get("scale", 1.0), dtype=np.float64))
        offset = np.atleast_1d(np.asarray(cfg.get("offset", 0.0), dtype=np.float64))
        shape = np.broadcast_shapes(scale.shape, offset.shape)
        return b.emit("batch_norm", name, [x], {}, {"scale": np.broadcast_to(scale, shape),
                                                   "shift": np.broadcast_to(offset, shape)})
    if cls == "BatchNormalization":
        axis = cfg.get("axis", -1)
        axis = axis[0] if isinstance(axis, list) and len(axis) == 1 else axis
        if axis != -1 and not isinstance(axis, int):
            raise unsupported(name, cls, f"axis {axis}; only the channel (last) axis")
        scale, shift = _batch_norm_affine(weights(), float(cfg.get("epsilon", 1e-3)))
        out = b.emit("batch_norm", name, [x], {}, {"scale": scale, "shift": shift})
        b.bn_axes[out] = axis
        return out
    raise unsupported(name, cls)



def v3_weight_names(spec: dict) -> list:
    """Return the weight names, in Keras 3 storage order, of a layer config."""
    cls, cfg = spec.get("class_name"), spec.get("config", {})
    if cls in ("Conv2D", "Dense", "DepthwiseConv2D"):
        return ["kernel"] + (["bias"] if cfg.get("use_bias", True) else [])
    if cls == "SeparableConv2D":
        return ["depthwise_kernel", "pointwise_kernel"] + (["bias"] if cfg.get("use_bias", True) else [])
    if cls == "BatchNormalization":
        return (["gamma"] if cfg.get("scale", True) else []) + (["beta"] if cfg.get("center", True) else []) + [
            "moving_mean", "moving_variance"]
    return []


def snake_case(name: str) -> str:
    """Keras 3's naming.to_snake_case: the folder name of a layer in model.weights.h5."""
    import re

    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()
