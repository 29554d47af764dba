"""Model graphs and their plaintext executors.

``Graph`` and ``Layer`` describe an NHWC model (a DAG of named tensors); ``run_float`` is
the float64 reference and ``run_fixed_point`` the exact plaintext twin of
the secure computation's fixed-point arithmetic.
"""

from pysmpc.graph.fold import fold_batch_norms
from pysmpc.graph.graph import KINDS, Graph, GraphError, Layer, conv_padding, pool_padding
from pysmpc.graph.plain import fixed_point_trace, run_fixed_point, run_float

__all__ = [
    "KINDS",
    "Graph",
    "GraphError",
    "Layer",
    "conv_padding",
    "fold_batch_norms",
    "pool_padding",
    "fixed_point_trace",
    "run_fixed_point",
    "run_float",
]
