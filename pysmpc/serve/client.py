"""The client side of private predictions: share an input, query, reconstruct alone."""

from __future__ import annotations

import logging

import numpy as np

from pysmpc.graph.layout import batch_to_nhwc, check_layout, shape_in_layout
from pysmpc.serve._coerce import whole_number
from pysmpc.serve.inputs import to_model_input

__all__ = ["Client"]

_log = logging.getLogger("pysmpc.client")


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
        self.model: dict | None = None  # what the workers said they serve (None: not known)
        self._noted = False

    @property
    def input_range(self) -> tuple | None:
        """The served model's input range, as its workers announce it (None: not declared, or not known yet)."""
        value = None if self.model is None else self.model.get("input_range")
        return None if value is None else tuple(value)

    def connect_to_model(self, batch_input_shape, batch_output_shape, cluster, input_layout: str = "NHWC",
                         wait: float = 0.0) -> "Client":
        """Check that the cluster's workers are reachable and serve a model of these shapes; remember them.

        Shapes are in `input_layout` ('NHWC' or 'NCHW'). The workers
        describe the model they serve (its input and output shapes, input
        range and reveal policy). A worker that cannot be reached fails at
        once with its address and the reason, or, with `wait` seconds, is
        waited for with a message (ClusterError after that). Shapes that do
        not match the served model's are a ValueError naming both. Workers
        that serve no model yet (their owner has not shared it) cannot be
        checked: a warning says so, and the query will wait for the model
        to be served.
        """
        self.batch_input_shape = _shape(batch_input_shape, "batch_input_shape")
        self.batch_output_shape = _shape(batch_output_shape, "batch_output_shape")
        self.input_layout = check_layout(input_layout, len(self.batch_input_shape) - 1)
        describe = getattr(cluster, "describe_model", None)
        self.model = describe(wait=wait) if describe is not None else None
        if self.model is not None:
            served_input = shape_in_layout(self.model["input_shape"], self.input_layout)
            for name, declared, served in (("batch_input_shape", self.batch_input_shape, served_input),
                                           ("batch_output_shape", self.batch_output_shape,
                                            tuple(self.model["output_shape"]))):
                if declared[1:] != served:
                    what = f"input ({self.input_layout})" if name == "batch_input_shape" else "output"
                    raise ValueError(f"{name} {declared} does not match the served model's {what} {served} "
                                     f"(with a batch axis: (N, {', '.join(map(str, served))}))")
        elif describe is not None:
            _log.warning("the workers serve no model yet: batch shapes %s -> %s are not checked",
                         self.batch_input_shape, self.batch_output_shape)
        self.cluster = cluster
        return self

    def query_model(self, x, reveal: str = "logits") -> np.ndarray:
        """Share x with the cluster, wait for the served model, reconstruct the result here.

        x has the batch input shape, or that shape without its batch axis,
        in the layout given to connect_to_model and in the model's input
        range: a uint8 array is pixels 0-255 and is divided by 255 for a
        model trained on [0, 1] (a warning says so once); other values
        outside the range are a ValueError (see serve/inputs.py).
        reveal="logits" returns float logits of the batch output shape;
        reveal="argmax" returns only the labels (secure argmax: less
        revealed).
        """
        if self.cluster is None:
            raise RuntimeError("call connect_to_model(...) before query_model(...)")
        x, note = to_model_input(x, self.input_range)
        if note is not None:
            (_log.debug if self._noted else _log.warning)("%s", note)
            self._noted = True
        if x.shape == self.batch_input_shape[1:]:
            x = x[None]
        if x.shape[1:] != self.batch_input_shape[1:]:
            raise ValueError(f"query of shape {x.shape} does not fit the model's input {self.batch_input_shape}")
        result = self.cluster.submit_query(batch_to_nhwc(x, self.input_layout), reveal=reveal, timeout=self.timeout)
        if reveal == "argmax":
            return result
        expected = (x.shape[0],) + self.batch_output_shape[1:]
        if result.size != int(np.prod(expected)):
            raise ValueError(f"the served model answered {result.shape[1:] if result.ndim > 1 else result.shape} "
                             f"per input, but batch_output_shape is {self.batch_output_shape}: declare "
                             f"(N, {', '.join(map(str, result.shape[1:]))})")
        return result.reshape(expected)


def _shape(value, name: str) -> tuple:
    # Whole floats count: R's c(1, 28, 28, 1) reaches Python as [1.0, 28.0, 28.0, 1.0].
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise TypeError(f"{name} must be a sequence of ints, got {value!r}")
    shape = tuple(whole_number(v, f"each size in {name}") for v in value)
    if not shape or min(shape) < 1:
        raise ValueError(f"{name} must have positive sizes, got {shape}")
    return shape
