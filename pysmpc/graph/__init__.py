"""Model graphs and their plaintext executors.

``Graph`` and ``Layer`` describe a sequential NHWC model; ``run_float`` is
the float64 reference and ``run_fixed_point`` the exact plaintext twin of
the secure computation's fixed-point arithmetic.
"""

from pysmpc.graph.graph import KINDS, Graph, GraphError, Layer, conv_padding
from pysmpc.graph.layout import LAYOUTS
from pysmpc.graph.plain import fixed_point_trace, run_fixed_point, run_float

__all__ = [
    "KINDS",
    "LAYOUTS",
    "Graph",
    "GraphError",
    "Layer",
    "conv_padding",
    "fixed_point_trace",
    "run_fixed_point",
    "run_float",
]
