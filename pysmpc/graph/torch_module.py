"""A Graph as a PyTorch module with the same weights: the plaintext baseline a PyTorch user would run.

Needs ``torch`` (not a dependency of pysmpc; imported when called).
"""

from __future__ import annotations

import functools

import numpy as np

from pysmpc.graph.graph import Graph, conv_padding

__all__ = ["to_torch"]


def to_torch(graph: Graph, dtype=None):
    """Return a ``torch.nn.Sequential`` computing the graph in ``dtype`` (default torch.float32), in eval mode.

    The module takes what PyTorch models take: NCHW images (N, C, H, W)
    for an (H, W, C) graph input, else (N,) + graph.input_shape. Weights
    are the graph's: conv kernels HWIO -> OIHW, dense kernels (in, out) ->
    Linear (out, in). A flatten flattens in the graph's NHWC order (as
    Keras does), so the dense layer after it keeps its weights as they are.
    Padding that is not the same on both sides ('same' with an even
    kernel) becomes a ZeroPad2d before the convolution.

    Raises:
        ImportError: torch is not installed.
        NotImplementedError: a graph with branches, or a layer kind or
            padding this builder has no module for.
    """
    import torch
    from torch import nn

    dtype = torch.float32 if dtype is None else dtype

    def tensor(array: np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(array)).to(dtype)

    if not graph.is_sequential():
        raise NotImplementedError(f"to_torch builds a torch.nn.Sequential: the graph from {graph.source or 'its source'} "
                                  "has branches (a layer reads something other than the layer before it)")
    modules: list[nn.Module] = []
    for layer, in_shape in zip(graph.layers, graph.shapes()):
        if layer.kind in ("avg_pool2d", "max_pool2d") and layer.params["padding"] != "valid":
            raise NotImplementedError(f"layer {layer.name!r}: no PyTorch module for a padded {layer.kind}")
        if layer.kind == "conv2d":
            kernel, bias = layer.weights["kernel"], layer.weights["bias"]
            kh, kw, cin, cout = kernel.shape
            top, bottom, left, right = conv_padding(layer, in_shape)
            padding = (top, left)
            if (top, left) != (bottom, right):
                modules.append(nn.ZeroPad2d((left, right, top, bottom)))
                padding = (0, 0)
            conv = nn.Conv2d(cin, cout, (kh, kw), stride=tuple(layer.params["stride"]), padding=padding, dtype=dtype)
            with torch.no_grad():
                conv.weight.copy_(tensor(kernel.transpose(3, 2, 0, 1)))
                conv.bias.copy_(tensor(bias))  # type: ignore[union-attr]  # Conv2d has a bias by default
            modules.append(conv)
        elif layer.kind == "dense":
            kernel, bias = layer.weights["kernel"], layer.weights["bias"]
            dense = nn.Linear(kernel.shape[0], kernel.shape[1], dtype=dtype)
            with torch.no_grad():
                dense.weight.copy_(tensor(kernel.T))
                dense.bias.copy_(tensor(bias))
            modules.append(dense)
        elif layer.kind == "avg_pool2d":
            modules.append(nn.AvgPool2d(tuple(layer.params["pool"]), stride=tuple(layer.params["stride"])))
        elif layer.kind == "max_pool2d":
            modules.append(nn.MaxPool2d(tuple(layer.params["pool"]), stride=tuple(layer.params["stride"])))
        elif layer.kind == "relu":
            modules.append(nn.ReLU())
        elif layer.kind == "flatten":
            if len(in_shape) == 3:
                modules.append(_channels_last()())
            modules.append(nn.Flatten())
        else:  # Graph validates kinds; a new kind must be added here
            raise NotImplementedError(f"layer {layer.name!r}: no PyTorch module for kind {layer.kind!r}")
    return nn.Sequential(*modules).eval()


@functools.lru_cache(maxsize=None)
def _channels_last():
    """The module class NCHW -> NHWC (defined on first use: torch is imported only when needed)."""
    from torch import nn

    class ChannelsLast(nn.Module):
        """NCHW -> NHWC, so that the flatten after it takes the graph's (Keras) order."""

        def forward(self, x):
            return x.permute(0, 2, 3, 1)

    return ChannelsLast
