"""Fixed-point range calibration: does every value of a model fit the ring at F fractional bits?

The secure run holds values mod 2^64. A value read at scale 2^S (S
fractional bits) is exact while |value| 2^S < 2^62, the range in which
the truncation protocol is correct (protocols.truncate); above it a
truncation returns garbage, silently. Each layer's output is held at F
bits, or, while the truncation owed by a product is not yet paid, at 2F
plus the bits of a window sum joined to it (graph.secure.compile_plan).
So its limit is 2^(62 - S) in real terms: 2^30 after a product at F = 16,
2^28 for a conv whose 2 x 2 average pool is folded into it.

`calibrate` runs the fixed-point executor (the secure run's arithmetic in
the clear) on sample inputs and reports, per layer, the largest magnitude
met against that limit and the headroom in bits. `choose_frac_bits` picks
the largest F that leaves every layer at least `margin` bits of headroom:
fewer fractional bits buy range, more buy precision. The model's input
must also fit its encoding, |x| < 2^(31 - F) (FixedPoint with I = 31 - F,
the widest format the nonlinear protocols assume). With
relu_protocol="fss" (protocols.relu_fss) a value a relu reads must also
stay within that format, |value| < 2^(31 - F) in real terms, whatever
scale it is held at: the DCF compares on those bits only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from pysmpc.graph.graph import Graph
from pysmpc.graph.layout import model_input_to_nhwc
from pysmpc.graph.plain import _check_frac_bits, _float_layer, _walk, fixed_point_trace
from pysmpc.graph.plan import _bits, compile_plan, make_plan

__all__ = ["LayerRange", "Calibration", "calibrate", "calibration_report", "choose_frac_bits", "relu_bounds",
           "TRUNCATION_LIMIT_LOG2", "FORMAT_LOG2", "RELU_HEADROOM_BITS"]

# The truncation protocol is exact for |x| < 2^62 (protocols.truncate.MAX_ABS_LOG2).
TRUNCATION_LIMIT_LOG2 = 62
# Encoded inputs stay below 2^31 at scale 2^F (FixedPoint(F, 31 - F)).
FORMAT_LOG2 = 31
# Bits a relu bound leaves above the largest relu input the samples showed (8x).
RELU_HEADROOM_BITS = 3
# The fractional bits the nonlinear protocols support (exp: 1..22) and the fixed-point executor (1..30).
_F_RANGE = (4, 22)


@dataclass
class LayerRange:
    """One layer's range over the samples: the largest magnitude, the bits it is held at, the limit, the headroom."""

    name: str
    kind: str
    max_abs: float
    held_bits: int
    limit: float
    headroom_bits: float

    @property
    def status(self) -> str:
        """'overflow' (a private run computes garbage), 'tight' (under 1 bit to spare) or 'ok'."""
        if self.headroom_bits <= 0:
            return "overflow"
        return "tight" if self.headroom_bits < 1 else "ok"


@dataclass
class Calibration:
    """The ranges of every layer of a graph over sample inputs, at F = frac_bits."""

    frac_bits: int
    samples: int
    layers: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether every layer has at least one bit of headroom."""
        return all(layer.status == "ok" for layer in self.layers)

    def warnings(self) -> list[str]:
        """One line per layer that overflows or nearly does."""
        out = []
        for layer in self.layers:
            if layer.status == "overflow":
                out.append(f"layer {layer.name!r} ({layer.kind}) reaches {layer.max_abs:.4g}, beyond the "
                           f"{layer.limit:.4g} a private run holds exactly at F = {self.frac_bits} "
                           f"(held at {layer.held_bits} fractional bits): the private result would be wrong")
            elif layer.status == "tight":
                out.append(f"layer {layer.name!r} ({layer.kind}) reaches {layer.max_abs:.4g}, within a factor 2 of "
                           f"its limit {layer.limit:.4g} at F = {self.frac_bits}: inputs a little larger than the "
                           "samples would overflow")
        return out

    def report(self) -> str:
        """A text table of every layer's range, then the warnings."""
        lines = [f"fixed-point ranges over {self.samples} samples, F = {self.frac_bits} fractional bits:",
                 f"{'layer':<24}{'kind':<18}{'max |value|':>14}{'held at':>9}{'limit':>12}{'headroom':>10}  status"]
        for layer in self.layers:
            headroom = "inf" if math.isinf(layer.headroom_bits) else f"{layer.headroom_bits:.1f} b"
            lines.append(f"{layer.name[:23]:<24}{layer.kind[:17]:<18}{layer.max_abs:>14.4g}{layer.held_bits:>9}"
                         f"{layer.limit:>12.4g}{headroom:>10}  {layer.status}")
        lines.extend(f"WARNING: {w}" for w in self.warnings())
        return "\n".join(lines)


def _held_bits(graph: Graph, frac_bits: int) -> list[int]:
    """Fractional bits each layer's output is held at in the secure run (before its owed truncation)."""
    compiled = compile_plan(make_plan(graph))
    return [frac_bits + _bits(step.pending_out + step.settle_out, frac_bits) for step in compiled.steps]


def _limits(graph: Graph, frac_bits: int, held: list[int], relu_protocol: str) -> list[float]:
    """The input's encoding limit, then each layer's: the truncation's, and with FSS relus the format's for relu inputs."""
    limits = [2.0 ** (FORMAT_LOG2 - frac_bits)] + [2.0 ** (TRUNCATION_LIMIT_LOG2 - h) for h in held]
    if relu_protocol == "fss":
        index = {"input": 0} | {layer.name: i + 1 for i, layer in enumerate(graph.layers)}
        for i, layer in enumerate(graph.layers):
            if layer.kind == "relu":
                source = layer.inputs[0] if layer.inputs else (graph.layers[i - 1].name if i else "input")
                j = index.get(source, 0)
                limits[j] = min(limits[j], 2.0 ** (FORMAT_LOG2 - frac_bits))
    return limits


def _samples(graph: Graph, samples) -> np.ndarray:
    x = np.asarray(samples, dtype=np.float64)
    if x.shape == tuple(graph.input_shape):
        x = x[None]
    if x.shape[1:] != tuple(graph.input_shape) or len(x) == 0:
        raise ValueError(f"samples of shape {x.shape} do not fit the model's input {graph.input_shape} "
                         "(one sample, or a batch of them)")
    if not np.all(np.isfinite(x)):
        raise ValueError("the samples contain NaN or infinity")
    return x


def calibrate(graph: Graph, samples, frac_bits: int = 16, batch_size: int = 256,
              relu_protocol: str = "bitplane") -> Calibration:
    """Run the fixed-point executor on `samples` and compare each layer's largest magnitude with its limit.

    The first row is the input, against its encoding's limit 2^(31 - F).
    relu_protocol="fss": what a relu reads is held to the format's range too.

    Raises:
        ValueError: samples of the wrong shape, non-finite, or an F out of range.
    """
    _check_frac_bits(frac_bits)
    x = _samples(graph, samples)
    held = _held_bits(graph, frac_bits)
    maxima = np.zeros(len(graph.layers) + 1)
    for start in range(0, len(x), batch_size):
        chunk = x[start : start + batch_size]
        if np.max(np.abs(chunk)) * 2.0**frac_bits >= 2.0**62:
            maxima[0] = max(maxima[0], float(np.max(np.abs(chunk))))
            continue  # not even encodable: reported on the input row
        for i, values in enumerate(fixed_point_trace(graph, chunk, frac_bits)):
            top = np.max(np.abs(values.view(np.int64).astype(np.float64))) if values.size else 0.0
            maxima[i] = max(maxima[i], top / 2.0**frac_bits)
    result = Calibration(frac_bits, len(x))
    limits = _limits(graph, frac_bits, held, relu_protocol)
    names = [("input", "input")] + [(layer.name, layer.kind) for layer in graph.layers]
    for (name, kind), top, limit, bits in zip(names, maxima, limits, [frac_bits] + held):
        headroom = math.inf if top == 0 else math.log2(limit / top)
        result.layers.append(LayerRange(name, kind, float(top), bits, limit, headroom))
    return result


def choose_frac_bits(graph: Graph, samples, margin: float = 2.0, candidates=range(_F_RANGE[1], _F_RANGE[0] - 1, -1),
                     relu_protocol: str = "bitplane") -> int:
    """The largest F whose calibration leaves every layer `margin` bits of headroom over the samples.

    Screens the candidates with the float model's maxima (each layer's
    held bits grow with F), then checks the pick with the fixed-point
    executor; a pick that fails there is passed over.

    Raises:
        ValueError: no candidate leaves that much headroom (the model's
            values are too large for the ring at any useful precision).
    """
    x = _samples(graph, samples)
    floats = _float_maxima(graph, x)
    for frac_bits in candidates:
        held = _held_bits(graph, frac_bits)
        limits = _limits(graph, frac_bits, held, relu_protocol)
        if all(top == 0 or math.log2(limit / top) >= margin for top, limit in zip(floats, limits)):
            checked = calibrate(graph, x, frac_bits, relu_protocol=relu_protocol)
            if all(layer.headroom_bits >= margin for layer in checked.layers):
                return frac_bits
    raise ValueError(f"no number of fractional bits in {list(candidates)} leaves {margin} bits of headroom on every "
                     "layer for these samples: rescale the model's inputs or weights")


def relu_bounds(graph: Graph, samples, frac_bits: int = 16, headroom_bits: int = RELU_HEADROOM_BITS) -> dict:
    """{relu layer name: B}: the bits of the largest input each relu read over `samples`, plus `headroom_bits`.

    For relu_protocol="fss" (make_plan's relu_bounds): each relu's DCF then
    spans B + F levels instead of 31. The bound is a promise about the
    inputs a served model will see: a relu input beyond 2^B gets the sign
    of its wrap, a wrong output, silently; so the samples must be
    representative and the headroom generous.
    """
    _check_headroom(headroom_bits)
    return _relu_bounds(graph, calibrate(graph, samples, frac_bits), headroom_bits)


def _check_headroom(headroom_bits) -> None:
    if isinstance(headroom_bits, bool) or not isinstance(headroom_bits, int) or not 0 <= headroom_bits <= FORMAT_LOG2:
        raise ValueError(f"headroom_bits must be an integer in 0..{FORMAT_LOG2}, got {headroom_bits!r}")


def _relu_bounds(graph: Graph, calibration: Calibration, headroom_bits: int) -> dict:
    """relu_bounds from a calibration already made (its rows name each layer's largest output)."""
    top = {layer.name: layer.max_abs for layer in calibration.layers}
    bounds = {}
    for i, layer in enumerate(graph.layers):
        if layer.kind != "relu":
            continue
        source = layer.inputs[0] if layer.inputs else (graph.layers[i - 1].name if i else "input")
        largest = top[source]
        used = max(0, math.floor(math.log2(largest)) + 1) if largest > 0 else 0
        bounds[layer.name] = min(FORMAT_LOG2, used + headroom_bits)
    return bounds


def _float_maxima(graph: Graph, x: np.ndarray) -> list[float]:
    """Largest magnitude of the input and of each layer's output in the float model."""
    maxima = [float(np.max(np.abs(x)))] + [0.0] * len(graph.layers)
    for start in range(0, len(x), 256):
        outputs = _walk(graph, x[start : start + 256], _float_layer, keep_all=True)
        for i, values in enumerate(outputs[1:], start=1):
            maxima[i] = max(maxima[i], float(np.max(np.abs(values))) if values.size else 0.0)
    return maxima


def calibration_report(graph: Graph, samples_path, frac_bits: int | None = None,
                       relu_protocol: str = "bitplane") -> str:
    """`pysmpc inspect --calibrate`: the table at F (default 16), its warnings, and the F the samples allow.

    Raises:
        ValueError: the file is not a .npy array of samples that fit the model.
    """
    try:
        samples = np.load(samples_path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{samples_path}: cannot read samples as a .npy array ({exc})") from None
    # Samples come as the model's callers pass inputs (NCHW for a PyTorch/ONNX model).
    samples = model_input_to_nhwc(samples, graph.input_shape, graph.input_layout)
    calibration = calibrate(graph, samples, 16 if frac_bits is None else frac_bits, relu_protocol=relu_protocol)
    lines = [calibration.report()]
    try:
        best = choose_frac_bits(graph, samples, relu_protocol=relu_protocol)
        lines.append(f"largest F with {2.0:g} bits of headroom on every layer for these samples: {best}"
                     + ("" if calibration.ok else f" (try --frac-bits {best})"))
    except ValueError as exc:
        lines.append(f"WARNING: {exc}")
    if relu_protocol == "fss":
        bounds = _relu_bounds(graph, calibration, RELU_HEADROOM_BITS)
        if bounds:
            listed = ", ".join(f"{name} {bits}" for name, bits in bounds.items())
            lines.append(f"relu input bounds (bits, {RELU_HEADROOM_BITS} over these samples' largest): {listed}; "
                         "--relu-bounds SAMPLES makes each fss relu's DCF that many levels plus F")
    return "\n".join(lines)
