"""Query values against the model's input range (serve/inputs.py), the same way by every path.

The end-to-end case (a uint8 image through Client.query_model, which
before gave logits 255 times too large) is in test_serve.py.
"""

from __future__ import annotations

import numpy as np
import pytest

import pysmpc as sy
from pysmpc.models import shipped_model_path
from pysmpc.serve.inputs import to_model_input


def test_uint8_pixels_are_scaled_for_a_model_trained_on_0_1_with_a_note():
    pixels = np.array([[0, 51, 255]], np.uint8)
    values, note = to_model_input(pixels, (0, 1))
    np.testing.assert_allclose(values, [[0.0, 0.2, 1.0]])
    assert "divided by 255" in note and "[0, 1]" in note
    values, note = to_model_input(pixels, (0, 255))  # a model trained on raw pixels takes them as they are
    np.testing.assert_array_equal(values, pixels)
    assert note is None
    values, note = to_model_input(np.array([0.5, 1.0]), (0, 1))
    assert note is None and values.dtype == np.float64


@pytest.mark.parametrize("x, model_range, needle", [
    (np.array([0.0, 255.0]), (0, 1), r"span \[0, 255\], outside the model's input range \[0, 1\].*divide by 255"),
    (np.array([-0.5]), (0, 1), r"span \[-0.5, -0.5\], outside"),
    (np.array([1, 200]), (0, 1), "outside the model's input range"),  # int64 is not read as pixels
    (np.array([3], np.uint8), None, "declares no input range"),
    (np.array([np.nan]), (0, 1), "NaN or infinite"),
    (np.array(["a"]), (0, 1), "must be numbers"),
])
def test_values_that_do_not_fit_are_refused_with_the_reason(x, model_range, needle):
    with pytest.raises(ValueError, match=needle):
        to_model_input(x, model_range)


def test_floats_pass_unchecked_when_the_range_is_unknown():
    values, note = to_model_input([[0.0, 255.0]], None)
    assert note is None and values.max() == 255.0


@pytest.fixture(scope="module")
def served_in_process():
    model = sy.load_model(shipped_model_path())
    assert model.input_range == (0.0, 1.0)
    with sy.LocalCluster() as cluster:
        model.share(cluster)
        yield model, cluster
        model.stop_sharing()


def test_pixels_given_as_floats_are_refused_before_anything_is_sent(served_in_process):
    model, cluster = served_in_process
    client = sy.Client().connect_to_model((1, 28, 28, 1), (1, 10), cluster)
    with pytest.raises(ValueError, match=r"outside the model's input range \[0, 1\].*divide by 255"):
        client.query_model(np.full((28, 28, 1), 255.0))
