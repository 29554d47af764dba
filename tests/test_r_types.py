"""What R passes through reticulate, simulated in Python: whole floats, lists, column-major arrays.

Observed with Debian 12's R 4.2 and reticulate 1.28: `c(1, 28, 28, 1)` arrives as
[1.0, 28.0, 28.0, 1.0], `c(1L, 10L)` as [1, 10], `3` as 3.0 and `3L` as 3; an R
array becomes a Fortran-ordered NumPy array with the same indices (where
reticulate can convert arrays at all: 1.28 cannot with NumPy 2).
"""

import threading

import numpy as np
import pytest

import pysmpc as sy
from pysmpc.models import load_samples, shipped_model_path


class _FakeCluster:
    """Records the num_requests that reaches the cluster; shares and calls do nothing."""

    frac_bits = 16

    def share(self, array, frac_bits=None):
        return type("T", (), {"tid": 0})()

    def call(self, *args, **kwargs):
        return [{}], None

    def serve_model(self, shared_model, num_requests, **kwargs):
        self.num_requests = num_requests
        return num_requests


def _tiny_model():
    from test_secure_graph import seed_cnn

    return sy.Model(seed_cnn(np.random.default_rng(0)))


@pytest.mark.parametrize("shape", [[1.0, 28.0, 28.0, 1.0], [1, 28, 28, 1], (np.float64(1), np.int32(28), 28, 1)])
def test_connect_to_model_takes_r_shapes(shape):
    client = sy.Client().connect_to_model(shape, [1.0, 10.0], cluster=object())
    assert client.batch_input_shape == (1, 28, 28, 1) and client.batch_output_shape == (1, 10)
    assert all(type(v) is int for v in client.batch_input_shape + client.batch_output_shape)


@pytest.mark.parametrize("shape, error", [([1.0, 2.5], ValueError), ([1, float("nan")], ValueError),
                                          ("1,28", TypeError), (1.0, TypeError), ([1, "28"], TypeError),
                                          ([1, 0], ValueError)])
def test_connect_to_model_rejects_shapes_that_are_not_whole(shape, error):
    with pytest.raises(error, match="batch_input_shape"):
        sy.Client().connect_to_model(shape, (1, 10), cluster=object())


@pytest.mark.parametrize("n", [3, 3.0, np.float64(3), np.int64(3)])
def test_serve_takes_a_whole_number_of_requests(n):
    model, cluster = _tiny_model(), _FakeCluster()
    model.share(cluster)
    assert model.serve(num_requests=n) == 3 and type(cluster.num_requests) is int


@pytest.mark.parametrize("n, error", [(2.5, ValueError), (float("inf"), ValueError), ("3", TypeError), (True, TypeError)])
def test_serve_rejects_requests_that_are_not_whole(n, error):
    model, cluster = _tiny_model(), _FakeCluster()
    model.share(cluster)
    with pytest.raises(error, match="num_requests must be a whole number"):
        model.serve(num_requests=n)


@pytest.mark.tcp
def test_a_column_major_image_gets_the_same_prediction():
    """An R array(dim = c(28, 28, 1)) reaches query_model Fortran-ordered: same pixels, same answer."""
    images, labels = load_samples()
    model = sy.load_model(shipped_model_path())
    cluster = sy.TcpCluster(ephemeral_ports=True)
    cluster.start()
    try:
        model.share(cluster)
        hosts = [f"localhost:{p}" for p in cluster.ports]
        client_cluster = sy.Cluster(*(sy.Worker(h, auto_managed=False) for h in hosts))
        client = sy.Client(timeout=60).connect_to_model([1.0, 28.0, 28.0, 1.0], [1.0, 10.0], client_cluster)
        fortran = np.asfortranarray(images[0])
        assert fortran.flags.f_contiguous and not fortran.flags.c_contiguous
        answers = {}
        threads = [threading.Thread(target=lambda k, x: answers.__setitem__(k, client.query_model(x)), args=(k, x))
                   for k, x in (("C", images[0]), ("F", fortran))]
        for t in threads:
            t.start()
        assert model.serve(num_requests=2.0, idle_timeout=60) == 2  # R's `2` without L
        for t in threads:
            t.join(timeout=60)
        assert answers["C"].argmax() == answers["F"].argmax() == labels[0], answers
        np.testing.assert_allclose(answers["F"], answers["C"], atol=1e-3)
        np.testing.assert_allclose(answers["F"], model.predict(images[:1]), atol=1e-2)
    finally:
        model.stop_sharing()
        cluster.stop()
