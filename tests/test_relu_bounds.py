"""Relu bounds for the FSS relu: fewer DCF levels from calibrated inputs, the same answers, the cost as counted."""

import numpy as np
import pytest

from pysmpc import LocalCluster, Model, load_model
from pysmpc.graph import Graph, Layer, run_fixed_point
from pysmpc.graph.calibrate import RELU_HEADROOM_BITS, relu_bounds
from pysmpc.graph.secure import load_plan
from pysmpc.models import load_samples, shipped_model_path
from pysmpc.protocols.relu_fss import FORMAT_BITS, bounded_domain_bits, default_domain_bits

F = 16


def _dealer_bytes(costs) -> int:
    return sum(c.dealer_bytes for _, c in costs)


def test_bounds_are_the_largest_relu_input_bits_plus_headroom():
    model = load_model(shipped_model_path(), relu_protocol="fss")
    images, _ = load_samples()
    bounds = model.bound_relus(images)
    calibration = model.calibrate(images)
    top = {layer.name: layer.max_abs for layer in calibration.layers}
    # the shipped CNN's relus read its pools' outputs
    for relu, source in (("relu1", "pool1"), ("relu2", "pool2"), ("relu3", "pool3")):
        assert 2.0 ** (bounds[relu] - RELU_HEADROOM_BITS - 1) <= top[source] < 2.0 ** (bounds[relu] - RELU_HEADROOM_BITS)
    assert bounds == relu_bounds(model.graph, images, F)


def test_a_bounded_model_plans_fewer_levels_and_runs_as_planned():
    images, _ = load_samples()
    full = load_model(shipped_model_path(), relu_protocol="fss")
    bounded = load_model(shipped_model_path(), relu_protocol="fss")
    bounds = bounded.bound_relus(images)
    # dealer bytes shrink with the levels, and a relu's opening with its domain (x + r mod 2^(m+1):
    # 6 bytes per element instead of 7 for these bounds); the rounds stay
    shape = dict(zip(["input", *(layer.name for layer in full.graph.layers)], full.graph.shapes()))
    for (name, a), (_, b) in zip(full.cost(2, prepared=True), bounded.cost(2, prepared=True)):
        assert a.rounds == b.rounds
        if name in bounds:
            elements = 2 * int(np.prod(shape[name]))
            assert a.bytes_sent == 7 * elements  # the format's domain: 32 + 18 owed bits, 51 bits opened
            assert b.bytes_sent == 6 * elements  # bound + 16 + 1 + 18 bits: 41 to 44 opened
            assert b.dealer_bytes < a.dealer_bytes
        else:
            assert (b.bytes_sent, b.dealer_bytes) == (a.bytes_sent, a.dealer_bytes)
    assert _dealer_bytes(bounded.cost(1)) < 0.8 * _dealer_bytes(full.cost(1))
    with LocalCluster() as cluster:
        shared = bounded.share(cluster)
        assert {s["name"]: s["bound_bits"] for s in shared.plan if "bound_bits" in s} == bounds
        cluster.reset_stats()
        shared.prepare(len(images))
        dealt = sum(s["bytes_sent"] for s in cluster.stats()["P2"].values())
        assert dealt == _dealer_bytes(bounded.cost(len(images), prepared=True))
        cluster.reset_stats()
        logits = shared.predict(images)
        assert [p["rounds"] for p in shared.profile] == [c.rounds for _, c in bounded.cost(len(images), prepared=True)]
        assert [p["bytes_sent"] for p in shared.profile] == [c.bytes_sent for _, c in bounded.cost(len(images),
                                                                                                    prepared=True)]
        shared.stop()
    np.testing.assert_allclose(logits, full.predict_fixed_point(images), atol=64 / 2**F)


def _one_relu_graph() -> Graph:
    return Graph((4,), [Layer("dense", "d", {}, {"kernel": np.eye(4), "bias": np.zeros(4)}), Layer("relu", "r")])


def test_a_value_beyond_its_bound_gets_a_wrong_relu_as_documented():
    """The bound is a promise: within it the answer is right, beyond the DCF's domain the sign wraps."""
    graph = _one_relu_graph()
    bound = 3  # |input| < 8
    m = bounded_domain_bits(bound, F, F)  # the relu reads the dense output, which owes F bits
    assert m - 1 - F == bound + F
    wraps = 2.0 ** (m - 1 - 2 * F)  # the domain's edge in real units: 2^(bound + 1) by the clamp of the format
    x = np.array([[7.5, -7.5, 0.25, wraps + 1.0]])
    with LocalCluster() as cluster:
        out = Model(graph, relu_protocol="fss", relu_bounds={"r": bound}).share(cluster).predict(x)
    np.testing.assert_allclose(out[0, :3], [7.5, 0.0, 0.25], atol=4 / 2**F)
    assert out[0, 3] == 0.0  # wraps + 1 reads as negative: the price of a broken promise
    np.testing.assert_allclose(run_fixed_point(graph, x, F)[0, 3], wraps + 1.0, atol=1e-3)


def test_the_domain_never_exceeds_the_format():
    assert bounded_domain_bits(FORMAT_BITS, F, 0) == default_domain_bits(0)
    assert bounded_domain_bits(2, F, 16) == 2 + F + 1 + 16


@pytest.mark.parametrize("bounds,protocol,message", [
    ({"r": 3}, "bitplane", "only apply to relu_protocol='fss'"),
    ({"d": 3}, "fss", "not a relu layer"),
    ({"nope": 3}, "fss", "not a relu layer"),
    ({"r": -1}, "fss", "integer B in 0..31"),
    ({"r": 40}, "fss", "integer B in 0..31"),
    ({"r": 2.5}, "fss", "integer B"),
    ({"r": True}, "fss", "integer B"),
])
def test_bad_bounds_are_refused(bounds, protocol, message):
    with pytest.raises(ValueError, match=message):
        Model(_one_relu_graph(), relu_protocol=protocol, relu_bounds=bounds)


def test_bound_relus_needs_fss():
    with pytest.raises(ValueError, match="relu_protocol='fss'"):
        Model(_one_relu_graph()).bound_relus(np.zeros((2, 4)))


def test_a_worker_refuses_a_plan_with_a_bad_bound():
    """bound_bits arrives in the plan from the model owner: the workers check it before keys are made."""
    plan = [{"kind": "relu", "name": "r", "inputs": ["input"], "shape": [4], "protocol": "fss", "bound_bits": 99}]
    with pytest.raises(ValueError, match="bound_bits must be an integer B in 0..31"):
        load_plan(None, "m", plan, {})
    plan[0].update(bound_bits=3, protocol="bitplane")
    with pytest.raises(ValueError, match="protocol 'fss'"):
        load_plan(None, "m", plan, {})


def test_inspect_with_relu_bounds_prints_the_smaller_plan(capsys, tmp_path):
    from pysmpc.cli import main

    assert main(["inspect", str(shipped_model_path()), "--relu", "fss"]) == 0
    full = capsys.readouterr().out
    images, _ = load_samples()
    samples = tmp_path / "samples.npy"
    np.save(samples, images)
    assert main(["inspect", str(shipped_model_path()), "--relu", "fss", "--relu-bounds", str(samples)]) == 0
    captured = capsys.readouterr()
    assert "relu bounds (bits): relu1" in captured.err

    def total_dealer(text):
        return int(next(line for line in text.splitlines() if line.startswith("total")).split()[-1].replace(",", ""))

    assert total_dealer(captured.out) < 0.8 * total_dealer(full)
    assert main(["inspect", str(shipped_model_path()), "--relu-bounds", "shipped"]) == 2
    assert "needs --relu fss" in capsys.readouterr().err


def test_the_calibration_report_suggests_relu_bounds_for_fss_only(tmp_path):
    from pysmpc.graph.calibrate import calibration_report

    images, _ = load_samples()
    samples = tmp_path / "samples.npy"
    np.save(samples, images)
    graph = load_model(shipped_model_path()).graph
    fss = calibration_report(graph, samples, relu_protocol="fss")
    assert "relu input bounds (bits, 3 over these samples' largest): relu1 5, relu2 7, relu3 8" in fss
    assert "relu input bounds" not in calibration_report(graph, samples)
