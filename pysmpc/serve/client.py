"""The client side of private predictions: share an input, query, reconstruct alone."""

from __future__ import annotations

import numpy as np

from pysmpc.graph.layout import batch_to_nhwc, check_layout
from pysmpc.serve._coerce import whole_number

__all__ = ["Client"]


class Client:
    """Queries a model served by a cluster; only this client sees its logits.

    >>> client = Client()
    >>> client.connect_to_model(batch_input_shape=(1, 28, 28, 1), batch_output_shape=(1, 10), cluster=cluster)
    >>> logits = client.query_model(image)

    A model from PyTorch takes channels-first images: connect with
    ``input_layout="NCHW"`` and ``batch_input_shape=(1, C, H, W)``, and
    query with (N, C, H, W) arrays; they are transposed to the engine's NHWC
    here, before they are shared.
    """

    def __init__(self, timeout: float = 60.0):
        self.timeout = timeout
        self.cluster = None
        self.batch_input_shape: tuple | None = None
        self.batch_output_shape: tuple | None = None
        self.input_layout = "NHWC"

    def connect_to_model(self, batch_input_shape, batch_output_shape, cluster, input_layout: str = "NHWC") -> "Client":
        """Remember the served model's shapes, in `input_layout` ('NHWC' or 'NCHW'), and the cluster that serves it."""
        self.batch_input_shape = _shape(batch_input_shape, "batch_input_shape")
        self.batch_output_shape = _shape(batch_output_shape, "batch_output_shape")
        self.input_layout = check_layout(input_layout, len(self.batch_input_shape) - 1)
        self.cluster = cluster
        return self

    def query_model(self, x, reveal: str = "logits") -> np.ndarray:
        """Share x with the cluster, wait for the served model, reconstruct the result here.

        x has the batch input shape, or that shape without its batch axis,
        in the layout given to connect_to_model.
        reveal="logits" returns float logits of the batch output shape;
        reveal="argmax" returns only the labels (secure argmax: less revealed).
        """
        if self.cluster is None:
            raise RuntimeError("call connect_to_model(...) before query_model(...)")
        x = np.asarray(x, dtype=np.float64)
        if x.shape == self.batch_input_shape[1:]:
            x = x[None]
        if x.shape[1:] != self.batch_input_shape[1:]:
            raise ValueError(f"query of shape {x.shape} does not fit the model's input {self.batch_input_shape}")
        if not np.all(np.isfinite(x)):
            raise ValueError("query contains NaN or infinite values")
        result = self.cluster.submit_query(batch_to_nhwc(x, self.input_layout), reveal=reveal, timeout=self.timeout)
        if reveal == "logits":
            return result.reshape((x.shape[0],) + self.batch_output_shape[1:])
        return result


def _shape(value, name: str) -> tuple:
    # Whole floats count: R's c(1, 28, 28, 1) reaches Python as [1.0, 28.0, 28.0, 1.0].
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise TypeError(f"{name} must be a sequence of ints, got {value!r}")
    shape = tuple(whole_number(v, f"each size in {name}") for v in value)
    if not shape or min(shape) < 1:
        raise ValueError(f"{name} must have positive sizes, got {shape}")
    return shape
