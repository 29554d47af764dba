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
        model.serve(num_requests=2, reveal="argmax")
        t.join()
    assert "reveals only argmax" in str(outcome["logits"])
    assert outcome["argmax"][0] == model.predict(image[None])[0].argmax()
