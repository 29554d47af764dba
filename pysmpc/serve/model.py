"""The user's model API: load, predict in plaintext, share to a cluster, predict privately."""

from __future__ import annotations

import itertools
import logging
import time

import numpy as np

from pysmpc.graph import Graph, run_fixed_point, run_float
from pysmpc.graph.graph import check_input_range
from pysmpc.graph.layout import model_input_to_nhwc, shape_in_layout
from pysmpc.graph.calibrate import RELU_HEADROOM_BITS
from pysmpc.graph.plan import check_relu_bounds, check_relu_protocol
from pysmpc.graph.secure import input_maskable, pipeline_parts, plan_cost
from pysmpc.graph.secure import make_plan as secure_plan
from pysmpc.parties.dealer import INPUT_MASK_TAG
from pysmpc.parties.party import DEALER
from pysmpc.protocols.cost import Cost
from pysmpc.runtime.ops import reveal_output_truncated
from pysmpc.runtime.queries import REVEAL_MODES
from pysmpc.sharing.fixedpoint import FixedPoint
from pysmpc.serve._coerce import whole_number
from pysmpc.serve.inputs import to_model_input

__all__ = ["Model", "SharedModel", "make_plan"]

_model_ids = itertools.count()
_log = logging.getLogger("pysmpc.model")


class Model:
    """A model graph held in plaintext by its owner.

    `predict(x)` is the float reference; `share(cluster)` sends the weights
    to the cluster as shares only and returns a `SharedModel` whose
    `predict` is private.

    Inputs are in the source model's layout, `input_layout`: NHWC for a
    Keras model, NCHW (N, C, H, W) for a PyTorch or ONNX one, exactly what
    the framework's model takes. `predict`, `predict_fixed_point` and the
    shared model's `predict` transpose NCHW inputs to the engine's NHWC once,
    before anything is encoded or shared. `input_shape` is in that layout.

    `input_range` (low, high) is what the model was trained on, e.g. (0, 1)
    for pixels divided by 255: given here once, or read from the model file
    where it records it (Graph.input_range). Clients are told it, so a
    query outside it is converted with a note (uint8 pixels) or refused
    (serve/inputs.py); None (unknown) leaves float queries unchecked.

    frac_bits: the model's fixed-point fractional bits F (None: the
    cluster's, 16 by default). Fewer bits give more range, more give
    precision: `calibrate(samples)` reports each layer's range at F, and
    graph.calibrate.choose_frac_bits picks F from samples.

    relu_protocol: "bitplane" (default: bit-plane comparison, 4 rounds per
    relu, any value below 2^63) or "fss" (function secret sharing: 1 round
    per relu, values within the fixed-point format's range, about 2.6 kB
    of dealer material per relu element against 49 bytes);
    docs/PROTOCOL.md, "ReLU in one round".
    relu_bounds: with "fss", {relu layer name: B}, a promise that the
    relu's input stays below 2^B in magnitude: its DCF then has B + F
    levels instead of 31 (less dealer material and evaluation time). An
    input beyond it gets a wrong relu, silently. `bound_relus(samples)`
    measures them with headroom.
    """

    def __init__(self, graph: Graph, input_range=None, frac_bits: int | None = None,
                 relu_protocol: str = "bitplane", relu_bounds: dict | None = None):
        self.graph = graph
        if input_range is not None:
            graph.input_range = check_input_range(input_range)
        if frac_bits is not None:
            _check_model_frac_bits(frac_bits)
        self.frac_bits = frac_bits
        self.relu_protocol = check_relu_protocol(relu_protocol)
        self.relu_bounds = check_relu_bounds(graph, relu_bounds, self.relu_protocol)
        self._shared: SharedModel | None = None

    @property
    def input_layout(self) -> str:
        """'NHWC' or 'NCHW': the layout of images that predict and the shared model take."""
        return self.graph.input_layout

    @property
    def input_shape(self) -> tuple:
        """One input's shape (no batch axis) in `input_layout`: (C, H, W) for NCHW."""
        return shape_in_layout(self.graph.input_shape, self.graph.input_layout)

    @property
    def input_range(self) -> tuple | None:
        return self.graph.input_range

    @property
    def output_shape(self) -> tuple:
        return self.graph.output_shape()

    def summary(self) -> str:
        return self.graph.summary()

    def predict(self, x) -> np.ndarray:
        """Plaintext float64 logits (the reference) of x, in `input_layout`, with or without a batch axis."""
        return run_float(self.graph, model_input_to_nhwc(x, self.graph.input_shape, self.graph.input_layout))

    def predict_fixed_point(self, x, frac_bits: int | None = None) -> np.ndarray:
        """Plaintext logits computed with the secure backend's fixed-point arithmetic (x as for predict).

        frac_bits: default the model's, or 16.
        """
        x = model_input_to_nhwc(x, self.graph.input_shape, self.graph.input_layout)
        return run_fixed_point(self.graph, x, frac_bits=frac_bits or self.frac_bits or 16)

    def calibrate(self, samples, frac_bits: int | None = None):
        """Each layer's largest magnitude over `samples` (as for predict) against what a private run holds exactly.

        Returns a graph.calibrate.Calibration (`.report()`, `.warnings()`,
        `.ok`) at F = frac_bits (default: the model's, or 16).
        """
        from pysmpc.graph.calibrate import calibrate

        x = model_input_to_nhwc(samples, self.graph.input_shape, self.graph.input_layout)
        return calibrate(self.graph, x, frac_bits or self.frac_bits or 16, relu_protocol=self.relu_protocol)

    def bound_relus(self, samples, headroom_bits: int = RELU_HEADROOM_BITS) -> dict:
        """Set relu_bounds from `samples` (as for predict): each relu input's largest bits + headroom_bits.

        Only for relu_protocol="fss"; takes effect at the next share().
        Returns the bounds (graph.calibrate.relu_bounds).
        """
        from pysmpc.graph.calibrate import relu_bounds

        if self.relu_protocol != "fss":
            raise ValueError("bound_relus is for relu_protocol='fss'; this model uses "
                             f"{self.relu_protocol!r}, whose relu takes any value below 2^63")
        x, _ = to_model_input(samples, self.graph.input_range, what="samples")  # as queries are: uint8 pixels scaled
        x = model_input_to_nhwc(x, self.graph.input_shape, self.graph.input_layout)
        self.relu_bounds = relu_bounds(self.graph, x, self.frac_bits or 16, headroom_bits)
        return dict(self.relu_bounds)

    def cost(self, batch: int = 1, prepared: bool = False, pipelined: bool = False) -> list[tuple[str, Cost]]:
        """Per-layer online cost of one private prediction of `batch` inputs' logits (no sharing needed).

        The last row, "output", is the truncation of the logits to F
        fractional bits before they are revealed (1 round). prepared: on
        material made by SharedModel.prepare, whose input mask saves the
        first product's round when the first layer allows. pipelined: as
        over TCP, where a batch of 64 or more runs in parts
        (graph.plan.pipeline_parts; the same rounds, bytes within rounding).
        """
        plan = make_plan(self.graph, relu_protocol=self.relu_protocol, relu_bounds=self.relu_bounds)
        return plan_cost(plan, self.graph.shapes(), batch, truncate_output=True,
                         input_open=prepared and input_maskable(plan), frac_bits=self.frac_bits or 16,
                         pipelined=pipelined)

    def share(self, cluster) -> "SharedModel":
        """Secret-share the weights to `cluster` (they leave this process as shares only)."""
        if self._shared is not None:
            self._shared.stop()
        self._shared = SharedModel(self.graph, cluster, frac_bits=self.frac_bits, relu_protocol=self.relu_protocol,
                                   relu_bounds=self.relu_bounds)
        return self._shared

    @property
    def shared(self) -> "SharedModel":
        if self._shared is None:
            raise RuntimeError("the model is not shared: call model.share(cluster) first")
        return self._shared

    def serve(self, num_requests: int | None = None, **kwargs) -> int:
        """Answer client queries with the shared model; see SharedModel.serve."""
        return self.shared.serve(num_requests, **kwargs)

    def stop_serving(self) -> None:
        """End a serve() running in another thread; see SharedModel.stop_serving."""
        if self._shared is not None:
            self._shared.stop_serving()

    def stop_sharing(self) -> None:
        """Drop the model's shares from the cluster (a serve() in another thread is stopped first)."""
        if self._shared is not None:
            self._shared.stop()
            self._shared = None


def make_plan(graph: Graph, share_weight=None, relu_protocol: str = "bitplane",
              relu_bounds: dict | None = None) -> list[dict]:
    """The graph as the secure executor's plan (graph.secure.make_plan): plain dicts.

    `share_weight(array) -> tensor id` shares each kernel and bias; without
    it the plan names no tensors and serves for cost estimates only.
    relu_protocol, relu_bounds: as Model's.
    """
    return secure_plan(graph, share_weight, relu_protocol=relu_protocol, relu_bounds=relu_bounds)


class SharedModel:
    """A model whose weights live as shares on a cluster's parties.

    Sharing opens each weight's Beaver mask once (docs/PROTOCOL.md, fixed
    weights), so each query opens only the masked input of each layer.

    The owner keeps the plaintext graph: when a cluster that spawns its
    workers restarts them (TcpCluster.restart, e.g. after a worker died
    while serving), the weights are shared again, freshly, to the new
    workers under the same key.
    """

    def __init__(self, graph: Graph, cluster, frac_bits: int | None = None, relu_protocol: str = "bitplane",
                 relu_bounds: dict | None = None):
        self.graph = graph
        self.cluster = cluster
        self.relu_protocol = check_relu_protocol(relu_protocol)
        self.relu_bounds = check_relu_bounds(graph, relu_bounds, self.relu_protocol)
        self.key = f"model-{next(_model_ids)}"
        if frac_bits is not None:
            _check_model_frac_bits(frac_bits)
        # The model's F (Model.frac_bits) or the cluster's. Remote clients
        # must encode with the same F: the workers refuse other queries.
        self.frac_bits = cluster.frac_bits if frac_bits is None else frac_bits
        self.profile: list = []
        self._tensors: list = []
        self._stopped = False
        self._run_ids = itertools.count()
        self._input_masks: dict[tuple, list] = {}  # (batch size, reveal) -> [(prepared run id, input mask A)]
        self._noted = False  # whether an input conversion was announced
        self._load()
        if hasattr(cluster, "on_restart"):
            cluster.on_restart(self._load)

    def describe(self) -> dict:
        """What the workers tell clients about this model (queries.ServedModels).

        input_shape is (H, W, C) as the engine computes (the shares a client
        sends), input_layout the layout the model's own callers use;
        output_shape, input_range and the fractional bits.
        """
        return {"input_shape": list(self.graph.input_shape), "input_layout": self.graph.input_layout,
                "output_shape": list(self.graph.output_shape()),
                "input_range": None if self.graph.input_range is None else list(self.graph.input_range),
                "frac_bits": self.frac_bits}

    def _load(self) -> None:
        """Share each weight (fresh shares) and have the parties load the plan."""
        self._tensors = []
        self._input_masks = {}  # the parties of a restarted cluster hold no prepared runs

        def share_weight(array):
            # At the model's F (the cluster encodes at its own unless told otherwise).
            tensor = (self.cluster.share(array) if self.frac_bits == self.cluster.frac_bits
                      else self.cluster.share(array, frac_bits=self.frac_bits))
            self._tensors.append(tensor)
            return tensor.tid

        self.plan = make_plan(self.graph, share_weight, relu_protocol=self.relu_protocol,
                              relu_bounds=self.relu_bounds)
        self.cluster.call("load_model", self.key, self.plan, description=self.describe())

    def cost(self, batch: int = 1, prepared: bool = False) -> list[tuple[str, Cost]]:
        """Per-layer online cost of one private prediction of `batch` inputs' logits on this cluster, as Model.cost."""
        return plan_cost(self.plan, self.graph.shapes(), batch, truncate_output=True,
                         input_open=prepared and input_maskable(self.plan), frac_bits=self.frac_bits,
                         pipelined=self.cluster.client_channel.pipelines_batches)

    def _check_input(self, x) -> np.ndarray:
        x, note = to_model_input(x, self.graph.input_range, what="input")
        if note is not None:
            # Said once per shared model: a loop of predictions would repeat it.
            (_log.debug if self._noted else _log.warning)("%s", note)
            self._noted = True
        expected = tuple(self.graph.input_shape)
        if x.shape == expected:
            x = x[None]
        if x.shape[1:] != expected:
            raise ValueError(f"input shape {x.shape} does not fit the model's input {expected} (with or without a batch axis)")
        return x

    def prepare(self, batch: int = 1, count: int = 1, reveal: str = "logits") -> dict:
        """Make the dealer material of `count` predictions of `batch` inputs now, ahead of them.

        Offline work: P2 deals everything those runs need, and P0 and P1
        keep their shares. A later predict() of a batch of that size runs on
        it, so P2 has nothing to do online and nobody waits on it. When the
        first layer allows (graph.secure.input_maskable), P2 also sends
        this caller each run's input mask A: predict() then sends x - A
        to P0 and P1, and the first layer opens nothing (one round fewer).
        The material is for predict(reveal=`reveal`): logits include their
        final truncation, the argmax's material is dealt during the query.
        Returns the wall time and the bytes each party holds.
        """
        batch, count = whole_number(batch, "batch"), whole_number(count, "count")
        if batch < 1 or count < 1:
            raise ValueError(f"batch and count must be positive, got {batch} and {count}")
        _check_reveal(reveal)
        truncate_output = reveal_output_truncated(reveal)
        shape = [batch, *self.graph.input_shape]
        start = time.perf_counter()
        if not input_maskable(self.plan):
            results, _ = self.cluster.call("prepare", self.key, shape, self.frac_bits, truncate_output, count)
        else:
            ids = [f"{batch}:{next(self._run_ids)}" for _ in range(count)]
            channel = self.cluster.client_channel

            parts = len(pipeline_parts(batch, channel.pipelines_batches))

            def receive_masks():  # one mask per part of each run (graph.plan.pipeline_parts), batch axis first
                return [np.concatenate([channel.recv(DEALER, tag=INPUT_MASK_TAG) for _ in range(parts)])
                        for _ in ids]

            results, masks = self.cluster.call("prepare", self.key, shape, self.frac_bits, truncate_output, count,
                                               input_mask_ids=ids, client=receive_masks)
            self._input_masks.setdefault((batch, reveal), []).extend(zip(ids, masks))
        return {"seconds": time.perf_counter() - start, "stored_bytes": [r["stored_bytes"] for r in results]}

    def predict(self, x, reveal: str = "logits") -> np.ndarray:
        """Private prediction: share x, run the model on shares, reveal here only (one call).

        Runs on material made by prepare() for this batch size and reveal
        mode if there is some left (the model's layers; the argmax's
        material is dealt during the query), else P2 deals it while the
        query runs.

        x is in the model's input layout (NCHW for a PyTorch/ONNX model:
        transposed to NHWC here, before it is encoded and shared), in its
        input range (serve/inputs.py: uint8 pixels are scaled with a note).
        reveal="logits" returns float logits, securely truncated to the
        model's fractional bits before they leave the parties (within one
        unit in the last place, 2^-F); reveal="argmax" runs the secure
        argmax and reveals only the labels (int array).
        """
        _check_reveal(reveal)
        x = self._check_input(model_input_to_nhwc(x, self.graph.input_shape, self.graph.input_layout))
        # The widest format at F (I = 31 - F integer bits), whatever the cluster's default.
        encoded = FixedPoint(frac_bits=self.frac_bits, int_bits=31 - self.frac_bits).encode(x)
        args = (self.key, list(x.shape), self.frac_bits)
        # A batch the workers run in pipelined parts goes to them part by part (op_predict).
        parts = pipeline_parts(x.shape[0], self.cluster.client_channel.pipelines_batches)
        masks = self._input_masks.get((x.shape[0], reveal))
        if masks:
            mask_id, mask = masks.pop(0)
            # The mask is shaped as the first product's input; flatten and reshape layers before it keep
            # the element order, so it masks the input as it arrives.
            mask = np.asarray(mask).reshape(encoded.shape)
            results, y_ring = self.cluster.call_on_masked_input("predict", encoded - mask, *args, mask_id=mask_id,
                                                                reveal=reveal, input_parts=parts)
        else:
            results, y_ring = self.cluster.call_on_input("predict", encoded, *args, reveal=reveal, input_parts=parts)
        self.profile = _profile_rows(results[0]["profile"])
        y_ring = y_ring.reshape(results[0]["shape"])
        if reveal == "argmax":
            return y_ring.argmax(axis=1)  # one-hot rows of 0/1
        fmt = FixedPoint(frac_bits=results[0]["frac_bits"], int_bits=self.cluster.fixed_point.int_bits)
        return fmt.decode(y_ring)

    def serve(self, num_requests: int | None = None, **kwargs) -> int:
        """Answer num_requests client queries (a whole number: 3 or 3.0, as R passes 3); return how many.

        None serves until stop_serving() (from another thread), Ctrl-C or
        SIGTERM. Refused queries do not count. Keyword arguments go to the
        cluster's serve_model (TcpCluster.serve_model): e.g.
        reveal="argmax" restricts clients to labels.
        """
        serve = getattr(self.cluster, "serve_model", None)
        if serve is None:
            raise NotImplementedError(f"{type(self.cluster).__name__} cannot serve remote clients")
        if num_requests is not None:
            num_requests = whole_number(num_requests, "num_requests")
        return serve(self, num_requests, **kwargs)

    def stop_serving(self, wait: float | None = None) -> None:
        """End a serve() running in another thread once the batch in hand is answered.

        With `wait`, block up to that many seconds until it has returned.
        Does nothing when no serve() runs.
        """
        stop = getattr(self.cluster, "stop_serving", None)
        if stop is None or not self.cluster.serving:
            return
        stop()
        deadline = time.monotonic() + (wait or 0.0)
        while self.cluster.serving and time.monotonic() < deadline:
            time.sleep(0.02)

    def stop(self) -> None:
        """Drop the model's shares from the parties (idempotent; nothing to do once the cluster is gone).

        A serve() running in another thread is stopped first.
        """
        if self._stopped:
            return
        if getattr(self.cluster, "serving", False):
            self.stop_serving(wait=self.cluster.timeout + 5)
        self._stopped = True
        if hasattr(self.cluster, "forget_restart"):
            self.cluster.forget_restart(self._load)
        if not self.cluster.running:
            return
        self.cluster.call("unload_model", self.key)
        self.cluster.call("free", [t.tid for t in self._tensors])
        self._tensors = []


def _check_model_frac_bits(frac_bits) -> None:
    # The nonlinear protocols support F up to 22 (protocols.exp), products need 2F < 62.
    if isinstance(frac_bits, bool) or not isinstance(frac_bits, (int, np.integer)) or not 1 <= frac_bits <= 22:
        raise ValueError(f"frac_bits must be an int in 1..22, got {frac_bits!r}")


def _check_reveal(reveal) -> None:
    if reveal not in REVEAL_MODES:
        raise ValueError(f"reveal must be 'logits' or 'argmax', got {reveal!r}")


def _profile_rows(table: dict) -> list[dict]:
    """One dict per layer (name, kind, seconds, bytes_sent, rounds) from a party's profile columns."""
    columns = {key: list(table[key]) if isinstance(table[key], list) else table[key].tolist() for key in table}
    return [dict(zip(columns, row)) for row in zip(*columns.values())]
