"""Fold affine layers (batch norms, constant scales and shifts) into the products before them.

A batch_norm is y = x * s + t per channel. After a conv2d, depthwise
conv2d or dense layer that only it reads, it is part of that layer's
weights; after another batch_norm, the two are one; before an unpadded
conv2d, depthwise conv2d or dense layer that alone reads it (a Rescaling
before the first convolution), it is part of that one. Folding saves the
secure run a product and a truncation per folded layer (1 round or 2),
and changes the float function only by rounding.
"""

from __future__ import annotations

import numpy as np

from pysmpc.graph.graph import Graph, Layer, conv_padding

__all__ = ["fold_batch_norms"]


def fold_batch_norms(graph: Graph) -> Graph:
    """Fold each batch_norm into the conv2d, depthwise_conv2d, dense or batch_norm layer it reads, where it can.

    y = (x (*) W + b) * s + t = x (*) (W s) + (b s + t) for a per-channel s
    (shape (C,) or scalar, on the last axis), when the batch norm is that
    layer's only reader. The folded graph computes the same function with
    one product fewer; a note names each fold. Other batch norms stay.
    Returns a new Graph (the weights of the folded layers are new arrays).
    """
    readers = graph.consumers()
    by_name = {layer.name: layer for layer in graph.layers}
    renamed: dict = {}  # a folded batch norm's name -> the layer that now computes it
    layers, notes = [], list(graph.notes)
    for layer in graph.layers:
        inputs = [renamed.get(n, n) for n in layer.inputs]
        if layer.kind == "batch_norm":
            source = by_name.get(inputs[0])
            scale, shift = layer.weights["scale"], layer.weights["shift"]
            if source is not None and source.kind == "batch_norm" and len(readers[source.name]) == 1:
                # Two affine maps in a row are one: (x s1 + t1) s2 + t2.
                merged = layers[[l.name for l in layers].index(source.name)]
                s1, t1 = merged.weights["scale"], merged.weights["shift"]
                try:
                    shape = np.broadcast_shapes(s1.shape, scale.shape)
                except ValueError:
                    shape = None
                if shape is not None:
                    merged.weights = {"scale": np.broadcast_to(s1 * scale, shape).copy(),
                                      "shift": np.broadcast_to(t1 * scale + shift, shape).copy()}
                    renamed[layer.name] = merged.name
                    notes.append(f"affine {layer.name!r} merged into {merged.name!r}")
                    readers[merged.name] = readers[layer.name]
                    continue
            if (source is not None and source.kind in ("conv2d", "depthwise_conv2d", "dense")
                    and len(readers[source.name]) == 1 and scale.ndim <= 1):
                folded = layers[[l.name for l in layers].index(source.name)]
                channels = folded.weights["bias"].shape[0]
                if scale.size in (1, channels):
                    scale = np.broadcast_to(scale.reshape(-1), (channels,))
                    shift = np.broadcast_to(shift.reshape(-1), (channels,))
                    kernel = folded.weights["kernel"]
                    if folded.kind == "depthwise_conv2d":
                        kernel = kernel * scale.reshape(kernel.shape[2], kernel.shape[3])
                    else:
                        kernel = kernel * scale
                    folded.weights = {"kernel": kernel, "bias": folded.weights["bias"] * scale + shift}
                    renamed[layer.name] = folded.name
                    readers[folded.name] = readers[layer.name]
                    notes.append(f"batch normalization {layer.name!r} folded into {folded.name!r}")
                    continue
        copy = Layer(layer.kind, layer.name, dict(layer.params), dict(layer.weights), inputs)
        layers.append(copy)
    output = renamed.get(graph.output, graph.output)
    folded = Graph(graph.input_shape, layers, source=graph.source, notes=notes, input_name=graph.input_name,
                   output=output, input_layout=graph.input_layout, input_range=graph.input_range)
    return _fold_into_readers(folded)


def _fold_into_readers(graph: Graph) -> Graph:
    """Fold a batch_norm into the unpadded conv2d, depthwise conv2d or dense layer that alone reads it.

    (x s + t) (*) W + b = x (*) (s W) + (t (*) W + b), with s and t per
    input channel (or scalar), scaling W along its input axis. Only
    without padding: a padded border would hold t's image, not zeros.
    Typical: a Rescaling before the first convolution.
    """
    readers = graph.consumers()
    shapes = graph.tensor_shapes()
    by_name = {layer.name: layer for layer in graph.layers}
    absorbed: dict = {}  # batch_norm name -> its input, for the layer that folds it
    changed = {}
    notes = list(graph.notes)
    for layer in graph.layers:
        if layer.kind not in ("conv2d", "depthwise_conv2d", "dense"):
            continue
        source = by_name.get(layer.inputs[0])
        if source is None or source.kind != "batch_norm" or len(readers[source.name]) != 1:
            continue
        if layer.kind != "dense" and any(conv_padding(layer, shapes[source.name])):
            continue
        scale, shift = source.weights["scale"], source.weights["shift"]
        kernel, bias = layer.weights["kernel"], layer.weights["bias"]
        channels = kernel.shape[0] if layer.kind == "dense" else kernel.shape[2]
        if scale.ndim > 1 or scale.size not in (1, channels):
            continue
        scale = np.broadcast_to(scale.reshape(-1), (channels,))
        shift = np.broadcast_to(shift.reshape(-1), (channels,))
        if layer.kind == "dense":
            new_kernel, new_bias = kernel * scale[:, None], bias + shift @ kernel
        elif layer.kind == "conv2d":
            new_kernel = kernel * scale[None, None, :, None]
            new_bias = bias + np.einsum("abco,c->o", kernel, shift)
        else:  # depthwise: output channel c*M + m reads input channel c
            new_kernel = kernel * scale[None, None, :, None]
            new_bias = bias + np.einsum("abcm,c->cm", kernel, shift).reshape(-1)
        changed[layer.name] = {"kernel": new_kernel, "bias": new_bias}
        absorbed[source.name] = source.inputs[0]
        notes.append(f"batch normalization {source.name!r} folded into {layer.name!r} (it reads it)")
    if not changed:
        return graph
    layers = []
    for layer in graph.layers:
        if layer.name in absorbed:
            continue
        inputs = [absorbed.get(n, n) for n in layer.inputs]
        layers.append(Layer(layer.kind, layer.name, dict(layer.params), changed.get(layer.name, dict(layer.weights)),
                            inputs))
    return Graph(graph.input_shape, layers, source=graph.source, notes=notes, input_name=graph.input_name,
                 output=graph.output, input_layout=graph.input_layout, input_range=graph.input_range)
