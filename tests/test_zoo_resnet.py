"""The zoo's ResNet-20 (tests/zoo/resnet20.onnx, made by tests/zoo/make_resnet20.py): import, plan, private runs.

A CIFAR ResNet-20 (batch norm, residual adds, global average pooling)
trained briefly on MNIST padded to 32x32x3; the npz holds 1,000 test
images and torch's logits for them.
"""

from pathlib import Path

import numpy as np
import pytest

import pysmpc as sy
from pysmpc.parties.channel import is_offline_tag

ZOO = Path(__file__).resolve().parent / "zoo"
MODEL = ZOO / "resnet20.onnx"
EXPECTED = np.load(ZOO / "resnet20_expected.npz")
# Largest |private - float| logit difference allowed. Each truncation is off
# by at most one unit (2^-16, PROTOCOL.md "Truncation") and the fixed-point
# weights by half a unit each; through 19 convolutions, the dense layer and
# ReLUs this stays far below the 5e-3 the seed CNN is held to (measured:
# about 1e-3 here, see the report in make_resnet20.py).
LOGIT_ERROR = 5e-3


def images(count: int) -> np.ndarray:
    """The first `count` stored test images as the model's input: NCHW float64 in [0, 1], 3 channels."""
    x = EXPECTED["images"][:count].astype(np.float64) / 255.0
    return np.repeat(x[:, None], 3, axis=1)


@pytest.fixture(scope="module")
def model():
    return sy.load_model(MODEL)


def test_resnet20_is_what_it_says(model):
    graph = model.graph
    kinds = [layer.kind for layer in graph.layers]
    assert graph.input_layout == "NCHW" and tuple(model.input_shape) == (3, 32, 32)
    assert kinds.count("conv2d") == 21  # 19 3x3 convolutions, 2 1x1 shortcut convolutions
    assert kinds.count("add") == 9 and kinds.count("relu") == 19
    assert "global_avg_pool" in kinds and kinds[-1] == "dense"
    assert not any(kind == "batch_norm" for kind in kinds)  # each folded into the convolution before it
    assert EXPECTED["images"].shape == (1000, 32, 32) and EXPECTED["images"].dtype == np.uint8


def test_plaintext_import_equals_torch(model):
    """250 of the stored images (about 10 s); the slow test checks all 1,000."""
    logits = model.predict(images(250))
    np.testing.assert_allclose(logits, EXPECTED["logits"][:250], atol=1e-4, rtol=0)
    # genuinely trained: the stored labels are mostly predicted
    assert (logits.argmax(1) == EXPECTED["labels"][:250]).mean() > 0.95
    # the fixed-point twin of the secure run stays within the bound too
    assert np.abs(model.predict_fixed_point(images(32)) - logits[:32]).max() < LOGIT_ERROR


def _private(model, x: np.ndarray, chunk: int) -> tuple[np.ndarray, int, int]:
    """Private logits of x in chunks (every other on material made ahead), and one chunk's rounds: run and planned."""
    with sy.LocalCluster(timeout=600) as cluster:  # a chunk of ResNet-20 on 2 busy cores can take minutes
        shared = model.share(cluster)
        out = []
        for i in range(0, len(x), chunk):
            if i // chunk % 2:
                shared.prepare(len(x[i : i + chunk]))
            cluster.reset_stats()
            out.append(shared.predict(x[i : i + chunk]))
            if i == 0:
                stats = cluster.stats()["P0"]
                rounds = sum(s["rounds"] for tag, s in stats.items()
                             if not is_offline_tag(tag) and tag not in ("input", "output"))
                planned = sum(c.rounds for _, c in shared.cost(len(x[:chunk])))
        shared.stop()
    return np.concatenate(out), rounds, planned


def _check_private(model, count: int, chunk: int) -> None:
    x = images(count)
    reference = model.predict(x)
    np.testing.assert_allclose(reference, EXPECTED["logits"][:count], atol=1e-4, rtol=0)
    private, rounds, planned = _private(model, x, chunk)
    error = np.abs(private - reference).max()
    assert error < LOGIT_ERROR, f"largest logit error {error:.2e}"
    top2 = np.sort(reference, axis=1)[:, -2:]
    near_tie = (top2[:, 1] - top2[:, 0]) < 2 * error
    mismatched = np.flatnonzero(private.argmax(1) != reference.argmax(1))
    assert set(mismatched) <= set(np.flatnonzero(near_tie)), f"argmax differs on {mismatched} (error {error:.2e})"
    assert rounds == planned, (rounds, planned)


def test_private_resnet20_matches_plaintext_on_16_images(model):
    """About 10 s on 2 busy cores (64 images: 35 s)."""
    _check_private(model, 16, 8)


@pytest.mark.slow
def test_private_argmax_equals_plaintext_argmax_on_1000_images(model):
    """About 3 minutes on 2 busy cores."""
    _check_private(model, 1000, 100)


def test_inspect_prints_its_plan(capsys):
    from pysmpc.cli import main as cli_main

    assert cli_main(["inspect", str(MODEL)]) == 0
    out = capsys.readouterr().out
    assert "/blocks/blocks.3/shortcut/shortcut.0/Conv" in out
    assert "secure cost per inference of a batch of 1" in out
    total = next(line for line in out.splitlines() if line.startswith("total")).split()
    assert int(total[1]) == sum(c.rounds for _, c in sy.load_model(MODEL).cost(1))
