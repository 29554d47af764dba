"""Model graphs and their plaintext executors.

``Graph`` and ``Layer`` describe an NHWC model (a DAG of named tensors); ``run_float`` is
the float64 reference and ``run_fixed_point`` the exact plaintext twin of
the secure computation's fixed-point arithmetic; ``to_torch`` the same
model as a PyTorch module (the baseline a PyTorch user would run).
"""

from pysmpc.graph.fold import fold_batch_norms
from pysmpc.graph.graph import KINDS, Graph, GraphError, Layer, conv_padding, pool_padding
from pysmpc.graph.layout import LAYOUTS
from pysmpc.graph.plain import fixed_point_trace, run_fixed_point, run_float
from pysmpc.graph.torch_module import to_torch

__all__ = [
    "KINDS",
    "LAYOUTS",
    "Graph",
    "GraphError",
    "Layer",
    "conv_padding",
    "fold_batch_norms",
    "pool_padding",
    "fixed_point_trace",
    "run_fixed_point",
    "run_float",
    "to_torch",
]
