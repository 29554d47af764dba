"""graph.calibrate: each layer's range against the ring's limits, and choosing F from samples."""

from __future__ import annotations

import subprocess
import sys
import tempfile

import numpy as np
import pytest

from pysmpc import LocalCluster
from pysmpc.graph import Graph, Layer, run_fixed_point, run_float
from pysmpc.graph.calibrate import calibrate, choose_frac_bits
from pysmpc.models import load_graph, load_samples, shipped_model_path
from pysmpc.serve.model import Model


def test_shipped_model_fits_with_room_and_rows_follow_the_layers():
    graph = load_graph(shipped_model_path())
    images, _ = load_samples()
    result = calibrate(graph, images, 16)
    assert result.ok and not result.warnings()
    assert [row.name for row in result.layers] == ["input"] + [layer.name for layer in graph.layers]
    rows = {row.name: row for row in result.layers}
    assert rows["input"].limit == 2.0**15 and rows["input"].max_abs == 1.0
    # conv1's 2x2 average pool is folded into it: its values wait at 2F + 2 bits for the relu's truncation.
    assert rows["conv1"].held_bits == 34 and rows["conv1"].limit == 2.0**28
    assert rows["relu1"].held_bits == 16 and rows["logits"].held_bits == 32
    assert 0 < rows["logits"].max_abs < 100


def overflowing_graph() -> Graph:
    """A dense layer whose outputs reach 7.2e9: beyond 2^30, the limit of a product at F = 16.

    At scale 2^32 that is above 2^63: the relu's comparison reads it as
    negative, so the private run's error is certain, not a matter of masks.
    """
    return Graph((16,), [
        Layer("dense", "big", {}, {"kernel": np.full((16, 1), 3e4), "bias": np.zeros(1)}),
        Layer("relu", "r"),  # truncates the product: garbage above the limit
        Layer("dense", "small", {}, {"kernel": np.full((1, 1), 1e-3), "bias": np.zeros(1)}),
    ])


def test_calibration_predicts_the_overflow_that_a_private_run_shows():
    graph = overflowing_graph()
    x = np.full((3, 16), 1.5e4) * np.array([[1.0], [0.5], [-1.0]])
    at16 = calibrate(graph, x, 16)
    statuses = {row.name: row.status for row in at16.layers}
    assert statuses["big"] == "overflow" and not at16.ok
    assert any("'big'" in w and "would be wrong" in w for w in at16.warnings())
    best = choose_frac_bits(graph, x)
    assert best == 13  # log2(7.2e9) = 32.7 bits of value: 2F <= 62 - 32.7 - 2
    assert calibrate(graph, x, best).ok
    with LocalCluster() as cluster:
        wrong = Model(graph).share(cluster).predict(x)
        right = Model(graph, frac_bits=best).share(cluster).predict(x)
    # The calibration's verdicts are the private run's: garbage at F = 16 (the positive rows' relu reads
    # its wrapped input as negative), the model's answer at F = 13 (to the precision of 1e-3 at 13 bits).
    want = run_float(graph, x)
    assert want[0, 0] == pytest.approx(7.2e6) and wrong[0, 0] == 0.0
    np.testing.assert_allclose(right, run_fixed_point(graph, x, best), atol=1e-2)
    np.testing.assert_allclose(right, want, rtol=0.03)


def test_tight_layers_and_inputs_beyond_the_format_are_flagged():
    graph = Graph((2,), [Layer("relu", "r")])
    result = calibrate(graph, np.array([[3e4, -1.0]]), 16)
    assert result.layers[0].status == "tight"  # 3e4 of the input's 32768 at F = 16
    result = calibrate(graph, np.array([[4e4, -1.0]]), 16)
    assert result.layers[0].status == "overflow" and "'input'" in result.warnings()[0]


def test_bad_samples_are_clear_errors():
    graph = overflowing_graph()
    with pytest.raises(ValueError, match=r"samples of shape \(3, 5\) do not fit the model's input \(16,\)"):
        calibrate(graph, np.zeros((3, 5)))
    with pytest.raises(ValueError, match="NaN"):
        calibrate(graph, np.full((1, 16), np.nan))
    with pytest.raises(ValueError, match="frac_bits"):
        Model(graph, frac_bits=30)
    with pytest.raises(ValueError, match="no number of fractional bits"):
        choose_frac_bits(graph, np.full((1, 16), 1e12))


def test_cli_inspect_calibrate(tmp_path):
    samples = tmp_path / "samples.npy"
    np.save(samples, load_samples()[0][:4])
    result = subprocess.run([sys.executable, "-m", "pysmpc", "inspect", str(shipped_model_path()),
                             "--calibrate", str(samples)], capture_output=True, text=True, timeout=240,
                            cwd=tempfile.gettempdir())
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "fixed-point ranges over 4 samples, F = 16" in out and "headroom" in out
    assert "largest F with 2 bits of headroom on every layer for these samples: 22" in out
    assert "WARNING" not in out
    np.save(samples, load_samples()[0][:2] * 1e5)  # pixels up to 1e5: beyond the input's 2^15 at F = 16
    for extra, warned in (([], True), (["--frac-bits", "12"], False)):
        result = subprocess.run([sys.executable, "-m", "pysmpc", "inspect", str(shipped_model_path()),
                                 "--calibrate", str(samples), *extra], capture_output=True, text=True, timeout=240,
                                cwd=tempfile.gettempdir())
        assert result.returncode == 0, result.stderr
        out = result.stdout
        assert ("WARNING: layer 'input'" in out) == warned, out
        assert ("F = 16" if warned else "F = 12") in out
        assert "for these samples: 12" in out and ("(try --frac-bits 12)" in out) == warned
    result = subprocess.run([sys.executable, "-m", "pysmpc", "inspect", str(shipped_model_path()),
                             "--calibrate", str(tmp_path / "none.npy")], capture_output=True, text=True,
                            timeout=240, cwd=tempfile.gettempdir())
    assert result.returncode == 2 and "cannot read samples" in result.stderr


def test_fss_relu_inputs_are_held_to_the_format_and_the_private_run_agrees():
    """relu_protocol="fss" compares on the format's bits: 1e5 fits the truncation at F = 16, not the FSS relu."""
    graph = Graph((4,), [
        Layer("dense", "big", {}, {"kernel": np.full((4, 1), 2.5e4), "bias": np.zeros(1)}),
        Layer("relu", "r"),
        Layer("dense", "small", {}, {"kernel": np.full((1, 1), 1e-3), "bias": np.zeros(1)}),
    ])
    x = np.ones((2, 4)) * np.array([[1.0], [-1.0]])  # big = +-1e5: below 2^30, above 2^15
    assert calibrate(graph, x, 16).ok
    fss = calibrate(graph, x, 16, relu_protocol="fss")
    assert {row.name: row.status for row in fss.layers}["big"] == "overflow"
    best = choose_frac_bits(graph, x, relu_protocol="fss")
    assert best == 12 and calibrate(graph, x, best, relu_protocol="fss").ok
    with LocalCluster() as cluster:
        wrong = Model(graph, relu_protocol="fss").share(cluster).predict(x)
        right = Model(graph, frac_bits=best, relu_protocol="fss").share(cluster).predict(x)
    want = run_float(graph, x)
    assert want[0, 0] == pytest.approx(100.0) and abs(wrong[0, 0] - 100.0) > 1
    np.testing.assert_allclose(right, run_fixed_point(graph, x, best), atol=1e-2)
    np.testing.assert_allclose(right, want, rtol=0.03)
