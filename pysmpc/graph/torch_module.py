"""A Graph as a PyTorch module with the same weights: the plaintext baseline a PyTorch user would run.

Needs ``torch`` (not a dependency of pysmpc; imported when called).

Layout: the graph computes on NHWC; the module holds every (H, W, C)
tensor as PyTorch does, NCHW, and every tensor of another rank in the
graph's order. So convolutions and pools run on PyTorch's native layout,
and only the layers whose meaning depends on the axis order (flatten,
reshape, transpose, concat, softmax, batch norm's broadcast) translate.
"""

from __future__ import annotations

import functools

import numpy as np

from pysmpc.graph.graph import Graph, Layer, conv_padding, pool_padding

__all__ = ["to_torch"]

# A graph axis of an (H, W, C) tensor -> its dim in the module's (N, C, H, W) tensor.
_NCHW_DIM = {0: 2, 1: 3, 2: 1}


def to_torch(graph: Graph, dtype=None):
    """Return a PyTorch module computing the graph in ``dtype`` (default torch.float32), in eval mode.

    A sequential graph becomes a ``torch.nn.Sequential``; a graph with
    branches (residual adds, concats) a module that runs the layers in the
    graph's order, each on the tensors it names, and frees a tensor after
    its last reader. The module takes what PyTorch models take: NCHW images
    (N, C, H, W) for an (H, W, C) graph input, else (N,) + graph.input_shape;
    an (H, W, C) output comes out NCHW. Weights are the graph's: conv
    kernels HWIO -> OIHW, depthwise kernels (kh, kw, C, M) -> a grouped
    conv (C*M, 1, kh, kw), dense kernels (in, out) -> Linear (out, in),
    batch norm's scale and shift as buffers. A flatten flattens in the
    graph's NHWC order (as Keras does), so the dense layer after it keeps
    its weights as they are. Padding that is not the same on both sides
    becomes an explicit pad before the convolution or pool.

    Raises:
        ImportError: torch is not installed.
        NotImplementedError: a layer kind this builder has no module for.
    """
    import torch
    from torch import nn

    dtype = torch.float32 if dtype is None else dtype
    shapes = graph.tensor_shapes()
    modules = [_layer_modules(layer, [shapes[n] for n in layer.inputs], dtype) for layer in graph.layers]
    if graph.is_sequential():
        return nn.Sequential(*(m for parts in modules for m in parts)).eval()
    steps = [(layer.inputs, layer.name, frees) for layer, frees in zip(graph.layers, graph.last_uses())]
    layers = [parts[0] if len(parts) == 1 else nn.Sequential(*parts) for parts in modules]
    return _classes().GraphModule(layers, steps, graph.input_name, str(graph.output)).eval()


def _layer_modules(layer: Layer, in_shapes: list, dtype) -> list:
    """The modules (applied in turn) computing one layer on the module's layout."""
    import torch
    from torch import nn

    def tensor(array: np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(array)).to(dtype)

    c = _classes()
    kind, p, in_shape = layer.kind, layer.params, in_shapes[0]
    if kind in ("conv2d", "depthwise_conv2d"):
        kernel, bias = layer.weights["kernel"], layer.weights["bias"]
        kh, kw, cin, cout = kernel.shape
        groups = 1
        weight = kernel.transpose(3, 2, 0, 1)
        if kind == "depthwise_conv2d":  # output channel c*m + k reads input channel c: groups of m
            groups, cout = cin, cin * cout
            weight = kernel.reshape(kh, kw, cout).transpose(2, 0, 1)[:, None]
        pad, padding = _explicit_pad(conv_padding(layer, in_shape), 0.0)
        conv = nn.Conv2d(cin, cout, (kh, kw), stride=tuple(p["stride"]), padding=padding, groups=groups, dtype=dtype)
        with torch.no_grad():
            conv.weight.copy_(tensor(weight))
            conv.bias.copy_(tensor(bias))  # type: ignore[union-attr]  # Conv2d has a bias by default
        return [*pad, conv]
    if kind == "dense":
        kernel, bias = layer.weights["kernel"], layer.weights["bias"]
        dense = nn.Linear(kernel.shape[0], kernel.shape[1], dtype=dtype)
        with torch.no_grad():
            dense.weight.copy_(tensor(kernel.T))
            dense.bias.copy_(tensor(bias))
        return [dense]
    if kind == "avg_pool2d":
        pads = pool_padding(layer, in_shape)
        if any(pads):  # the average counts only the input's elements
            return [c.PaddedAvgPool(pads, tuple(p["pool"]), tuple(p["stride"]))]
        return [nn.AvgPool2d(tuple(p["pool"]), stride=tuple(p["stride"]))]
    if kind == "max_pool2d":
        pad, _ = _explicit_pad(pool_padding(layer, in_shape), float("-inf"), symmetric_ok=False)
        return [*pad, nn.MaxPool2d(tuple(p["pool"]), stride=tuple(p["stride"]))]
    if kind in ("global_avg_pool", "global_max_pool"):
        return [c.GlobalPool(kind == "global_max_pool", p["keepdims"])]
    if kind == "relu":
        return [nn.ReLU()]
    if kind == "clip":
        return [c.Clip(p["lo"], p["hi"])]
    if kind == "sigmoid":
        return [nn.Sigmoid()]
    if kind == "tanh":
        return [nn.Tanh()]
    if kind == "softmax":  # over the graph's last axis: C, dim 1 of an NCHW tensor
        return [nn.Softmax(dim=1 if len(in_shape) == 3 else -1)]
    if kind == "batch_norm":
        scale, shift = layer.weights["scale"], layer.weights["shift"]
        if len(in_shape) == 3:  # broadcast as over (H, W, C), then held like the input: (C, H, W)
            scale, shift = (np.reshape(w, (1,) * (3 - w.ndim) + w.shape).transpose(2, 0, 1) for w in (scale, shift))
        return [c.Affine(tensor(scale), tensor(shift))]
    if kind == "add":
        return [c.Add()]
    if kind == "concat":
        rank = len(in_shape)
        axis = p["axis"] % rank
        return [c.Concat(_NCHW_DIM[axis] if rank == 3 else axis + 1)]
    if kind == "zero_pad":
        top, bottom, left, right = p["pads"]
        return [nn.ZeroPad2d((left, right, top, bottom))]
    if kind == "flatten":
        return [c.ChannelsLast(), nn.Flatten()] if len(in_shape) == 3 else [nn.Flatten()]
    if kind in ("reshape", "transpose"):
        return [c.Rearrange(kind, p["shape"] if kind == "reshape" else p["perm"], len(in_shape),
                            len(layer.output_shape(*in_shapes)))]
    # Graph validates kinds; a new kind must be added here
    raise NotImplementedError(f"layer {layer.name!r}: no PyTorch module for kind {kind!r}")


def _explicit_pad(pads, value: float, symmetric_ok: bool = True) -> tuple[list, tuple]:
    """([a pad module] or [], the layer's own padding): a conv pads itself when both sides are equal."""
    from torch import nn

    top, bottom, left, right = pads
    if not any(pads):
        return [], (0, 0)
    if symmetric_ok and (top, left) == (bottom, right):
        return [], (top, left)
    torch_pads = (left, right, top, bottom)
    return [nn.ZeroPad2d(torch_pads) if value == 0 else nn.ConstantPad2d(torch_pads, value)], (0, 0)


@functools.cache
def _classes():
    """The module classes to_torch uses beyond torch.nn's (defined on first use: torch is imported only then)."""
    import types

    import torch
    from torch import nn
    from torch.nn import functional

    class GraphModule(nn.Module):
        """Runs the layers in order, each on the tensors its graph layer names; frees each after its last reader."""

        def __init__(self, layers: list, steps: list, input_name: str, output: str):
            super().__init__()
            self.layers = nn.ModuleList(layers)
            self.steps = steps  # (input names, name, names to free after it) per layer
            self.input_name, self.output = input_name, output

        def forward(self, x):
            tensors = {self.input_name: x}
            for layer, (inputs, name, frees) in zip(self.layers, self.steps):
                tensors[name] = layer(*(tensors[n] for n in inputs))
                for n in frees:
                    del tensors[n]
            return tensors[self.output]

    class Add(nn.Module):
        def forward(self, *xs):
            out = xs[0]
            for x in xs[1:]:
                out = out + x
            return out

    class Concat(nn.Module):
        def __init__(self, dim: int):
            super().__init__()
            self.dim = dim

        def forward(self, *xs):
            return torch.cat(xs, dim=self.dim)

    class PaddedAvgPool(nn.Module):
        """Average pooling whose windows count only the input's elements (the pad is not averaged in)."""

        def __init__(self, pads: tuple, pool: tuple, stride: tuple):
            super().__init__()
            top, bottom, left, right = pads
            self.pads, self.pool, self.stride = (left, right, top, bottom), pool, stride

        def forward(self, x):
            ones = torch.ones((1, 1, *x.shape[2:]), dtype=x.dtype, device=x.device)
            total = functional.avg_pool2d(functional.pad(x, self.pads), self.pool, self.stride)
            return total / functional.avg_pool2d(functional.pad(ones, self.pads), self.pool, self.stride)

    class GlobalPool(nn.Module):
        def __init__(self, use_max: bool, keepdims: bool):
            super().__init__()
            self.use_max, self.keepdims = use_max, keepdims

        def forward(self, x):
            if self.use_max:
                return x.amax(dim=(2, 3), keepdim=self.keepdims)
            return x.mean(dim=(2, 3), keepdim=self.keepdims)

    class Clip(nn.Module):
        def __init__(self, lo, hi):
            super().__init__()
            self.lo, self.hi = lo, hi

        def forward(self, x):
            return torch.clamp(x, self.lo, self.hi)

    class Affine(nn.Module):
        """y = x * scale + shift: a batch norm folded to its inference-time affine map."""

        def __init__(self, scale, shift):
            super().__init__()
            self.register_buffer("scale", scale)
            self.register_buffer("shift", shift)

        def forward(self, x):
            return x * self.scale + self.shift

    class ChannelsLast(nn.Module):
        """NCHW -> NHWC, so that the flatten after it takes the graph's (Keras) order."""

        def forward(self, x):
            return x.permute(0, 2, 3, 1)

    class Rearrange(nn.Module):
        """A reshape or transpose as the graph means it: on the NHWC order, the result held NCHW if 3-D."""

        def __init__(self, kind: str, arg: tuple, in_rank: int, out_rank: int):
            super().__init__()
            self.kind, self.arg, self.in_rank, self.out_rank = kind, tuple(arg), in_rank, out_rank

        def forward(self, x):
            if self.in_rank == 3:
                x = x.permute(0, 2, 3, 1)
            if self.kind == "reshape":
                x = x.reshape(x.shape[0], *self.arg)
            else:
                x = x.permute(0, *(a + 1 for a in self.arg))
            return x.permute(0, 3, 1, 2) if self.out_rank == 3 else x

    return types.SimpleNamespace(**{cls.__name__: cls for cls in (
        GraphModule, Add, Concat, PaddedAvgPool, GlobalPool, Clip, Affine, ChannelsLast, Rearrange)})
