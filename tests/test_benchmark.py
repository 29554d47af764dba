"""serve.benchmark: the per-layer profile matches the cost plan; the ratios against the baselines."""

import pytest

import pysmpc as sy
from pysmpc.models import shipped_model_path
from pysmpc.serve.benchmark import NUMPY_BASELINE, TORCH_BASELINE, measure_layers, speed_ratios


@pytest.mark.parametrize("batch", [1, 3])
def test_measured_layers_cost_what_the_plan_says(batch):
    model = sy.load_model(shipped_model_path())
    layers = measure_layers(model, batch, repeats=2)
    plan = model.cost(batch, prepared=True)  # measured on material made ahead, as a server runs
    assert [layer["name"] for layer in layers] == [name for name, _ in plan]
    for layer, (name, cost) in zip(layers, plan):
        assert (layer["bytes_sent"], layer["rounds"]) == (cost.bytes_sent, cost.rounds), name
        assert layer["seconds"] >= 0
    assert sum(layer["rounds"] for layer in layers) == 16  # on prepared material, the output's truncation included
    assert all(layer["seconds"] > 0 for layer in layers if layer["rounds"])


def test_measure_layers_refuses_an_empty_run():
    with pytest.raises(ValueError, match="must be positive"):
        measure_layers(sy.load_model(shipped_model_path()), 0)


def test_speed_ratios_compare_each_private_row_with_each_baseline_of_its_batch():
    rows = [
        {"system": NUMPY_BASELINE, "batch": 1, "latency_ms": 1.0, "images_per_s": 1000.0},
        {"system": TORCH_BASELINE, "batch": 1, "latency_ms": 0.25, "images_per_s": 4000.0},
        {"system": NUMPY_BASELINE, "batch": 8, "latency_ms": 4.0, "images_per_s": 2000.0},
        {"system": "pysmpc in-process", "batch": 1, "latency_ms": 5.0, "images_per_s": 200.0},
        {"system": "pysmpc tcp", "batch": 8, "latency_ms": 40.0, "images_per_s": 200.0},
    ]
    ratios = {(r["system"], r["batch"], r["baseline"]): (r["latency_ratio"], r["throughput_ratio"])
              for r in speed_ratios(rows)}
    assert ratios == {("pysmpc in-process", 1, NUMPY_BASELINE): (5.0, 5.0),
                      ("pysmpc in-process", 1, TORCH_BASELINE): (20.0, 20.0),
                      ("pysmpc tcp", 8, NUMPY_BASELINE): (10.0, 10.0)}
