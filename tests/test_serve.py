"""The user's serving API on an in-process cluster: share, serve, query."""

import threading

import numpy as np
import pytest

import pysmpc as sy
from pysmpc.graph import run_float
from test_secure_graph import seed_cnn


def test_serve_three_client_queries_in_process():
    rng = np.random.default_rng(0)
    model = sy.Model(seed_cnn(rng))
    images = rng.uniform(0, 1, (3, 28, 28, 1))
    answers = {}
    with sy.LocalCluster() as cluster:
        model.share(cluster)

        def client_process(i):
            client = sy.Client()
            client.connect_to_model(batch_input_shape=(1, 28, 28, 1), batch_output_shape=(1, 10), cluster=cluster)
            answers[i] = client.query_model(images[i])

        threads = [threading.Thread(target=client_process, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        served = model.serve(num_requests=3)
        for t in threads:
            t.join()
        model.stop_sharing()
    assert served == 3
    for i in range(3):
        assert answers[i].shape == (1, 10)
        np.testing.assert_allclose(answers[i][0], model.predict(images[i : i + 1])[0], atol=1e-2)


def test_a_bad_query_is_answered_with_an_error_and_serving_goes_on():
    rng = np.random.default_rng(1)
    model = sy.Model(seed_cnn(rng))
    with sy.LocalCluster() as cluster:
        model.share(cluster)
        client = sy.Client().connect_to_model((1, 28, 28, 1), (1, 10), cluster)
        with pytest.raises(ValueError, match="does not fit"):
            client.query_model(np.zeros((5, 5)))
        with pytest.raises(ValueError, match="NaN"):
            client.query_model(np.full((28, 28, 1), np.nan))
        result = {}
        t = threading.Thread(target=lambda: result.update(y=client.query_model(np.zeros((28, 28, 1)), reveal="argmax")))
        t.start()
        assert model.serve(num_requests=1) == 1
        t.join()
        assert result["y"][0] == run_float(model.graph, np.zeros((1, 28, 28, 1))).argmax()


def test_query_without_connect_is_a_clear_error():
    with pytest.raises(RuntimeError, match="connect_to_model"):
        sy.Client().query_model(np.zeros((28, 28, 1)))


def test_a_server_that_reveals_labels_only_refuses_logits_queries_in_process():
    rng = np.random.default_rng(2)
    model = sy.Model(seed_cnn(rng))
    image = rng.uniform(0, 1, (28, 28, 1))
    outcome = {}
    with sy.LocalCluster() as cluster:
        model.share(cluster)
        client = sy.Client().connect_to_model((1, 28, 28, 1), (1, 10), cluster)

        def queries():
            try:
                client.query_model(image)
            except sy.ClusterError as exc:
                outcome["logits"] = exc
            outcome["argmax"] = client.query_model(image, reveal="argmax")

        t = threading.Thread(target=queries)
        t.start()
        assert model.serve(num_requests=1, reveal="argmax") == 1  # the refused query uses up no request
        t.join()
    assert "reveals only argmax" in str(outcome["logits"])
    assert outcome["argmax"][0] == model.predict(image[None])[0].argmax()


def test_a_uint8_image_gets_the_same_logits_as_its_float_twin(caplog, tmp_path):
    """Before, Client.query_model sent uint8 pixels (0-255) as is, to a model trained on pixels / 255:
    logits 255 times too large, while `pysmpc query` divided the same file by 255 first."""
    import logging

    from pysmpc.models import load_samples, shipped_model_path
    from pysmpc.serve.images import load_image

    model = sy.load_model(shipped_model_path())
    images, _ = load_samples()
    pixels = np.rint(images[0] * 255).astype(np.uint8)
    expected = model.predict(images[:1])
    with sy.LocalCluster() as cluster:
        model.share(cluster)
        client = sy.Client(timeout=60).connect_to_model((1, 28, 28, 1), (1, 10), cluster)
        result = {}
        thread = threading.Thread(target=lambda: result.update(y=client.query_model(pixels)))
        with caplog.at_level(logging.WARNING, logger="pysmpc.client"):
            thread.start()
            assert model.serve(num_requests=1) == 1
            thread.join(60)
        np.testing.assert_allclose(result["y"], expected, atol=1e-2)
        assert any("divided by 255" in r.getMessage() for r in caplog.records)  # converted, and said so
        assert client.input_range == (0.0, 1.0)  # as the served model announced it
        # The owner's own private prediction takes uint8 pixels the same way.
        np.testing.assert_allclose(model.shared.predict(pixels), expected, atol=1e-2)
        model.stop_sharing()
    # The CLI's path: an image file reaches the client as the same uint8 pixels, not pre-divided.
    np.save(tmp_path / "digit.npy", pixels[..., 0])
    np.testing.assert_array_equal(load_image(tmp_path / "digit.npy"), pixels)


def test_a_wrong_batch_output_shape_is_a_clear_error():
    model = sy.Model(seed_cnn(np.random.default_rng(3)))
    with sy.LocalCluster() as cluster:
        model.share(cluster)
        with pytest.raises(ValueError, match=r"batch_output_shape \(1, 5\) does not match the served model's "
                                             r"output \(10,\)"):
            sy.Client().connect_to_model((1, 28, 28, 1), (1, 5), cluster)
        with pytest.raises(ValueError, match=r"batch_input_shape \(1, 28, 28\) does not match"):
            sy.Client().connect_to_model((1, 28, 28), (1, 10), cluster)
        model.stop_sharing()


def test_serve_without_a_count_runs_until_stop_serving_in_process():
    rng = np.random.default_rng(4)
    model = sy.Model(seed_cnn(rng))
    image = rng.uniform(0, 1, (28, 28, 1))
    with sy.LocalCluster() as cluster:
        model.share(cluster)
        outcome = {}
        serving = threading.Thread(target=lambda: outcome.update(served=model.serve()))
        serving.start()
        client = sy.Client().connect_to_model((1, 28, 28, 1), (1, 10), cluster)
        for _ in range(2):
            client.query_model(image, reveal="argmax")
        assert serving.is_alive()  # no count: it goes on
        model.stop_serving()
        serving.join(10)
        assert not serving.is_alive() and outcome["served"] == 2
        assert cluster.last_serve["stopped"] == "stop_serving()"
        model.stop_sharing()
