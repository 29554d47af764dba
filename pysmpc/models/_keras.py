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

from pysmpc.graph.graph import Graph, Layer
from pysmpc.models._errors import ModelFormatError

SUPPORTED = (
    "InputLayer", "Conv2D", "AveragePooling2D", "MaxPooling2D", "Activation", "ReLU",
    "Flatten", "Dense", "BatchNormalization", "Dropout", "Softmax",
)
_IGNORED = ("InputLayer", "Dropout")
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
        f"(activations relu, linear, and softmax on the last layer only)"
    )


def model_layers(model_config: dict, source: str = "model") -> tuple[str, list]:
    """Return (model class, layer configs in order) from a model config, checking it is a chain."""
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
    if cls != "Sequential":
        try:
            _check_chain(layers)
        except MALFORMED as exc:
            raise ModelFormatError(f"{source}: {cls} config: malformed inbound nodes: {type(exc).__name__}: "
                                   f"{str(exc)[:200]}") from None
    return cls, layers


def _inbound_names(node) -> list:
    """Collect the layer names a Keras 2 or 3 inbound node refers to."""
    names = []
    if isinstance(node, dict):
        if node.get("class_name") == "__keras_tensor__":
            names.append(node["config"]["keras_history"][0])
        else:
            for value in node.values():
                names.extend(_inbound_names(value))
    elif isinstance(node, list):
        if len(node) >= 3 and isinstance(node[0], str) and isinstance(node[1], int):
            names.append(node[0])  # Keras 2: [layer_name, node_index, tensor_index, kwargs]
        else:
            for value in node:
                names.extend(_inbound_names(value))
    return names


def _check_chain(layers: list) -> None:
    """Raise unless every layer's only input is the layer before it."""
    for prev, layer in zip(layers, layers[1:]):
        nodes = layer.get("inbound_nodes", [])
        names = _inbound_names(nodes)
        want = prev.get("config", {}).get("name", prev.get("name"))
        if len(nodes) != 1 or names != [want]:
            name = layer.get("config", {}).get("name")
            raise ValueError(
                f"functional model is not a simple chain: layer {name!r} takes inputs {names}, "
                f"expected only {want!r}; only sequential models are supported"
            )


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


def _fold_batch_norm(target: Layer, w: dict, eps: float) -> None:
    """Fold y = gamma (x - mean) / sqrt(var + eps) + beta into target's kernel and bias."""
    mean, var = w["moving_mean"], w["moving_variance"]
    gamma = w.get("gamma", np.ones_like(mean))
    beta = w.get("beta", np.zeros_like(mean))
    scale = gamma / np.sqrt(var + eps)
    if scale.shape != target.weights["bias"].shape:
        raise ValueError(f"batch norm of size {scale.shape} does not match layer {target.name!r}")
    target.weights["kernel"] = target.weights["kernel"] * scale
    target.weights["bias"] = (target.weights["bias"] - mean) * scale + beta


def graph_from_keras(model_config: dict, weights: WeightsFn, source: str, input_shape=None) -> Graph:
    """Build a Graph from a Keras model config and a per-layer weights function.

    ``weights(layer_config, index)`` returns {weight name: array} for the
    index-th layer config. Supported layers follow ``SUPPORTED``; a
    BatchNormalization is folded into the conv2d or dense layer right before
    it; InputLayer and Dropout are dropped; a softmax on the last layer is
    dropped with a note (the client applies it).

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


def _graph_from_keras(model_config, weights: WeightsFn, source: str, input_shape, where: list) -> Graph:
    _, layers = model_layers(model_config, source)
    shape = _input_shape(layers) or input_shape
    if shape is None or any(s is None for s in shape):
        raise ValueError(f"{source}: cannot tell the model's input shape from its config (got {shape}); it must be fixed")
    out: list = []
    notes: list = []
    linear_tail = None  # the conv2d/dense just emitted, while no activation follows it
    softmax_at = None

    def emit(layer: Layer) -> None:
        nonlocal linear_tail
        out.append(layer)
        linear_tail = layer if layer.kind in ("conv2d", "dense") else None

    def activation(act: str, name: str, cls: str) -> None:
        nonlocal softmax_at
        if act == "relu":
            emit(Layer("relu", f"{name}_relu" if out and out[-1].name == name else name))
        elif act == "softmax":
            softmax_at = (name, cls)
        elif act != "linear":
            raise unsupported(name, cls, f"activation {act!r}")

    for index, spec in enumerate(layers):
        where[0] = f"config of layer {index}"
        cls = spec.get("class_name", "?")
        cfg = spec.get("config", {})
        name = cfg.get("name", f"layer_{index}")
        where[0] = f"config of layer {index} ({str(name)[:60]!r} of class {str(cls)[:60]})"
        if softmax_at is not None and cls not in _IGNORED:
            raise unsupported(softmax_at[0], softmax_at[1], "softmax is only supported as the last layer")
        if cfg.get("data_format", "channels_last") != "channels_last":
            raise unsupported(name, cls, f"data_format {cfg['data_format']!r}; only channels_last")
        if cls in _IGNORED:
            continue
        if cls == "Conv2D":
            if _pair(cfg.get("dilation_rate", 1)) != (1, 1) or cfg.get("groups", 1) != 1:
                raise unsupported(name, cls, "dilation or groups")
            if cfg.get("padding", "valid") not in ("valid", "same"):
                raise unsupported(name, cls, f"padding {cfg.get('padding')!r}")
            w = weights(spec, index)
            bias = w.get("bias", np.zeros(w["kernel"].shape[-1]))
            emit(Layer("conv2d", name, {"stride": _pair(cfg.get("strides", 1)), "padding": cfg.get("padding", "valid")},
                       {"kernel": w["kernel"], "bias": bias}))
            activation(_activation(cfg), name, cls)
        elif cls == "Dense":
            w = weights(spec, index)
            bias = w.get("bias", np.zeros(w["kernel"].shape[-1]))
            emit(Layer("dense", name, {}, {"kernel": w["kernel"], "bias": bias}))
            activation(_activation(cfg), name, cls)
        elif cls in ("AveragePooling2D", "MaxPooling2D"):
            if cfg.get("padding", "valid") != "valid":
                raise unsupported(name, cls, f"padding {cfg.get('padding')!r}; only 'valid'")
            pool = _pair(cfg.get("pool_size", 2))
            stride = _pair(cfg.get("strides") or pool)
            kind = "avg_pool2d" if cls == "AveragePooling2D" else "max_pool2d"
            emit(Layer(kind, name, {"pool": pool, "stride": stride}))
        elif cls == "Activation":
            activation(_activation(cfg), name, cls)
        elif cls == "Softmax":
            softmax_at = (name, cls)
        elif cls == "ReLU":
            if cfg.get("max_value") is not None or cfg.get("negative_slope", 0) or cfg.get("threshold", 0):
                raise unsupported(name, cls, "max_value, negative_slope or threshold set")
            emit(Layer("relu", name))
        elif cls == "Flatten":
            emit(Layer("flatten", name))
        elif cls == "BatchNormalization":
            axis = cfg.get("axis", -1)
            axis = axis[0] if isinstance(axis, list) and len(axis) == 1 else axis
            if linear_tail is None:
                raise unsupported(name, cls, "it can only be folded into a Conv2D or Dense directly before it, "
                                  "with no activation in between")
            rank = 4 if linear_tail.kind == "conv2d" else 2
            if axis not in (-1, rank - 1):
                raise unsupported(name, cls, f"axis {axis}; only the channel axis")
            _fold_batch_norm(linear_tail, weights(spec, index), float(cfg.get("epsilon", 1e-3)))
            notes.append(f"batch normalization {name!r} folded into {linear_tail.name!r}")
        else:
            raise unsupported(name, cls)
    where[0] = "model config"
    if softmax_at is not None:
        notes.append(f"final softmax of {softmax_at[0]!r} dropped: the graph outputs logits, the client applies softmax")
    return Graph(tuple(shape), out, source=source, notes=notes)


def v3_weight_names(spec: dict) -> list:
    """Return the weight names, in Keras 3 storage order, of a layer config."""
    cls, cfg = spec.get("class_name"), spec.get("config", {})
    if cls in ("Conv2D", "Dense"):
        return ["kernel"] + (["bias"] if cfg.get("use_bias", True) else [])
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
