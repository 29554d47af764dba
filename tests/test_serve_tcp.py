"""The user's serving example over TCP: workers, an owner that serves, clients in other processes."""

import re
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import pysmpc as sy
from test_secure_graph import seed_cnn

pytestmark = pytest.mark.tcp


@pytest.fixture(scope="module")
def served():
    rng = np.random.default_rng(0)
    model = sy.Model(seed_cnn(rng))
    cluster = sy.TcpCluster(ephemeral_ports=True)
    cluster.start()
    model.share(cluster)
    yield model, cluster
    model.stop_sharing()
    cluster.stop()


def _client_cluster(cluster):
    return sy.Cluster(*(sy.Worker(f"localhost:{p}", auto_managed=False) for p in cluster.ports))


def test_client_in_another_process_gets_the_logits(served, tmp_path):
    model, cluster = served
    image = np.random.default_rng(1).uniform(0, 1, (28, 28, 1))
    np.save(tmp_path / "image.npy", image)
    hosts = [f"localhost:{p}" for p in cluster.ports]
    script = textwrap.dedent(f"""
        import numpy as np, pysmpc as sy
        cluster = sy.Cluster(*(sy.Worker(h, auto_managed=False) for h in {hosts!r}))
        client = sy.Client()
        client.connect_to_model(batch_input_shape=(1, 28, 28, 1), batch_output_shape=(1, 10), cluster=cluster)
        logits = client.query_model(np.load({str(tmp_path / 'image.npy')!r}))
        np.save({str(tmp_path / 'logits.npy')!r}, logits)
    """)
    # Run outside the repository so the child imports the installed package.
    proc = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    served = model.serve(num_requests=1, idle_timeout=60)  # never hang if the client dies
    assert served == 1, proc.communicate(timeout=10)[1]
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    logits = np.load(tmp_path / "logits.npy")
    assert logits.shape == (1, 10)
    np.testing.assert_allclose(logits[0], model.predict(image[None])[0], atol=1e-2)


def test_concurrent_queries_are_batched_and_a_bad_one_is_refused(served):
    model, cluster = served
    rng = np.random.default_rng(2)
    images = rng.uniform(0, 1, (3, 28, 28, 1))
    answers, errors = {}, {}
    barrier = threading.Barrier(4)

    def query(i, x, reveal):
        client = sy.Client(timeout=60).connect_to_model((1, 28, 28, 1), (1, 10), _client_cluster(cluster))
        barrier.wait()
        try:
            answers[i] = client.query_model(x, reveal=reveal)
        except Exception as exc:  # noqa: BLE001
            errors[i] = exc

    # A malformed query: right rank, wrong image size, sent straight to the cluster.
    def bad_query():
        barrier.wait()
        try:
            _client_cluster(cluster).submit_query(np.zeros((1, 27, 28, 1)), timeout=60)
        except Exception as exc:  # noqa: BLE001
            errors["bad"] = exc

    threads = [threading.Thread(target=query, args=(i, images[i], "argmax" if i == 2 else "logits")) for i in range(3)]
    threads.append(threading.Thread(target=bad_query))
    for t in threads:
        t.start()
    # Until stopped (the refused query uses up no request, and may come after the others).
    serving = threading.Thread(target=lambda: model.serve(idle_timeout=60))
    serving.start()
    for t in threads:
        t.join(60)
    model.stop_serving()
    serving.join(30)
    assert not serving.is_alive() and not any(t.is_alive() for t in threads)
    assert cluster.last_serve == {"served": 3, "failed": 1, "restarts": 0, "stopped": "stop_serving()"}
    assert "does not fit" in str(errors.pop("bad"))
    assert not errors, errors
    reference = model.predict(images)
    for i in (0, 1):
        np.testing.assert_allclose(answers[i][0], reference[i], atol=1e-2)
    assert answers[2][0] == reference[2].argmax()
    assert cluster.stats()["P0"]["query:output"]["bytes_sent"] > 0


def test_the_workers_describe_the_served_model_and_wrong_shapes_are_clear_errors(served):
    model, cluster = served
    assert _client_cluster(cluster).describe_model() == {
        "input_shape": [28, 28, 1], "input_layout": "NHWC", "output_shape": [10], "input_range": None, "frac_bits": 16,
        "reveal": None}
    with pytest.raises(ValueError, match=r"batch_output_shape \(1, 5\) does not match the served model's output "
                                         r"\(10,\) \(with a batch axis: \(N, 10\)\)"):
        sy.Client().connect_to_model((1, 28, 28, 1), (1, 5), _client_cluster(cluster))


def test_a_client_of_workers_that_are_not_there_fails_at_once_or_waits_visibly(caplog):
    import logging
    import socket
    import time

    ports = []
    for _ in range(3):
        with socket.create_server(("127.0.0.1", 0)) as s:  # closed again: nothing listens there
            ports.append(s.getsockname()[1])
    cluster = sy.Cluster(*(sy.Worker(f"localhost:{p}", auto_managed=False) for p in ports))
    start = time.monotonic()
    with pytest.raises(sy.ClusterError, match=rf"cannot reach P0 at localhost:{ports[0]}: .*refused.*is the worker "
                                              r"running\?"):
        sy.Client().connect_to_model((1, 28, 28, 1), (1, 10), cluster)
    assert time.monotonic() - start < 5  # before: the first query waited its 60 s timeout in silence
    with caplog.at_level(logging.WARNING, logger="pysmpc.cluster"):
        with pytest.raises(sy.ClusterError, match=rf"cannot reach P0 at localhost:{ports[0]}"):
            sy.Client().connect_to_model((1, 28, 28, 1), (1, 10), cluster, wait=3)
    said = [r.getMessage() for r in caplog.records]
    assert any(re.match(rf"waiting up to \d+ s for P0 at localhost:{ports[0]}: ", m) for m in said), said
