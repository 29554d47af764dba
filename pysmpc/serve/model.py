"""The user's model API: load, predict in plaintext, share to a cluster, predict privately."""

from __future__ import annotations

import itertools

import numpy as np

from pysmpc.graph import Graph, conv_padding, run_fixed_point, run_float
from pysmpc.graph.secure import plan_cost
from pysmpc.protocols.cost import Cost
from pysmpc.serve._coerce import whole_number

__all__ = ["Model", "SharedModel", "make_plan"]

_model_ids = itertools.count()


class Model:
    """A model graph held in plaintext by its owner.

    `predict(x)` is the float reference; `share(cluster)` sends the weights
    to the cluster as shares only and returns a `SharedModel` whose
    `predict` is private.
    """

    def __init__(self, graph: Graph):
        self.graph = graph
        self._shared: SharedModel | None = None

    @property
    def input_shape(self) -> tuple:
        return self.graph.input_shape

    @property
    def output_shape(self) -> tuple:
        return self.graph.output_shape()

    def summary(self) -> str:
        return self.graph.summary()

    def predict(self, x) -> np.ndarray:
        """Plaintext float64 logits (the reference)."""
        return run_float(self.graph, x)

    def predict_fixed_point(self, x, frac_bits: int = 16) -> np.ndarray:
        """Plaintext logits computed with the secure backend's fixed-point arithmetic."""
        return run_fixed_point(self.graph, x, frac_bits=frac_bits)

    def cost(self, batch: int = 1) -> list[tuple[str, Cost]]:
        """Per-layer online cost of one private prediction of `batch` inputs (no sharing needed)."""
        return plan_cost(make_plan(self.graph), self.graph.shapes(), batch, truncate_output=False)

    def share(self, cluster) -> "SharedModel":
        """Secret-share the weights to `cluster` (they leave this process as shares only)."""
        if self._shared is not None:
            self._shared.stop()
        self._shared = SharedModel(self.graph, cluster)
        return self._shared

    @property
    def shared(self) -> "SharedModel":
        if self._shared is None:
            raise RuntimeError("the model is not shared: call model.share(cluster) first")
        return self._shared

    def serve(self, num_requests: int | None = None, **kwargs) -> int:
        """Answer client queries with the shared model; see SharedModel.serve."""
        return self.shared.serve(num_requests, **kwargs)

    def stop_sharing(self) -> None:
        """Drop the model's shares from the cluster."""
        if self._shared is not None:
            self._shared.stop()
            self._shared = None


def make_plan(graph: Graph, share_weight=None) -> list[dict]:
    """The graph as the secure executor's plan (graph.secure): plain dicts.

    `share_weight(array) -> tensor id` shares each kernel and bias; without
    it the plan names no tensors and serves for cost estimates only.
    """
    plan = []
    for layer, in_shape in zip(graph.layers, graph.shapes()):
        step = {"kind": layer.kind, "name": layer.name}
        if layer.kind in ("conv2d", "dense") and share_weight is not None:
            step.update(kernel=share_weight(layer.weights["kernel"]), bias=share_weight(layer.weights["bias"]))
        if layer.kind == "conv2d":
            step.update(stride=list(layer.params["stride"]), pads=list(conv_padding(layer, in_shape)))
        elif layer.kind in ("avg_pool2d", "max_pool2d"):
            step.update(pool=list(layer.params["pool"]), stride=list(layer.params["stride"]))
        plan.append(step)
    return plan


class SharedModel:
    """A model whose weights live as shares on a cluster's parties.

    Sharing opens each weight's Beaver mask once (docs/PROTOCOL.md, fixed
    weights), so each query opens only the masked input of each layer.

    The owner keeps the plaintext graph: when a cluster that spawns its
    workers restarts them (TcpCluster.restart, e.g. after a worker died
    while serving), the weights are shared again, freshly, to the new
    workers under the same key.
    """

    def __init__(self, graph: Graph, cluster):
        self.graph = graph
        self.cluster = cluster
        self.key = f"model-{next(_model_ids)}"
        self.frac_bits = cluster.frac_bits
        self.profile: list = []
        self._tensors = []
        self._stopped = False
        self._load()
        if hasattr(cluster, "on_restart"):
            cluster.on_restart(self._load)

    def _load(self) -> None:
        """Share each weight (fresh shares) and have the parties load the plan."""
        self._tensors = []

        def share_weight(array):
            tensor = self.cluster.share(array)
            self._tensors.append(tensor)
            return tensor.tid

        self.plan = make_plan(self.graph, share_weight)
        self.cluster.call("load_model", self.key, self.plan)

    def cost(self, batch: int = 1) -> list[tuple[str, Cost]]:
        """Per-layer online cost of one private prediction of `batch` inputs (logits)."""
        return plan_cost(self.plan, self.graph.shapes(), batch, truncate_output=False)

    def _check_input(self, x) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        expected = tuple(self.graph.input_shape)
        if x.shape == expected:
            x = x[None]
        if x.shape[1:] != expected:
            raise ValueError(f"input shape {x.shape} does not fit the model's input {expected} (with or without a batch axis)")
        return x

    def predict(self, x, reveal: str = "logits") -> np.ndarray:
        """Private prediction: share x, run the model on shares, reveal here only.

        reveal="logits" returns float logits; reveal="argmax" runs the secure
        argmax and reveals only the labels (int array).
        """
        if reveal not in ("logits", "argmax"):
            raise ValueError(f"reveal must be 'logits' or 'argmax', got {reveal!r}")
        x = self._check_input(x)
        shared_x = self.cluster.share(x)
        out = self.cluster.new_id()
        results, _ = self.cluster.call("infer", out, self.key, shared_x.tid, self.frac_bits)
        self.profile = results[0]["profile"]
        from pysmpc.runtime.tensor import SharedTensor

        logits = SharedTensor(self.cluster, out, tuple(results[0]["shape"]), results[0]["frac_bits"])
        try:
            if reveal == "logits":
                return logits.reveal()
            onehot = logits.argmax()
            labels = onehot.reveal().argmax(axis=1)
            onehot.free()
            return labels
        finally:
            self.cluster.call("free", [shared_x.tid, out])

    def serve(self, num_requests: int | None = None, **kwargs) -> int:
        """Answer num_requests client queries (a whole number: 3 or 3.0, as R passes 3)."""
        serve = getattr(self.cluster, "serve_model", None)
        if serve is None:
            raise NotImplementedError(f"{type(self.cluster).__name__} cannot serve remote clients")
        if num_requests is not None:
            num_requests = whole_number(num_requests, "num_requests")
        return serve(self, num_requests, **kwargs)

    def stop(self) -> None:
        """Drop the model's shares from the parties (idempotent; nothing to do once the cluster is gone)."""
        if self._stopped:
            return
        self._stopped = True
        if hasattr(self.cluster, "forget_restart"):
            self.cluster.forget_restart(self._load)
        if not self.cluster.running:
            return
        self.cluster.call("unload_model", self.key)
        self.cluster.call("free", [t.tid for t in self._tensors])
        self._tensors = []
