"""The user-facing API: LocalCluster, SharedTensor and its operators."""

import numpy as np
import pytest

import pysmpc
from pysmpc import LocalCluster

TOL = 4.0 / 2**16  # a few units in the last place (F = 16)


@pytest.fixture(scope="module")
def cluster():
    with LocalCluster() as c:
        yield c


def test_share_reveal_add_sub(cluster):
    rng = np.random.default_rng(0)
    a, b = rng.uniform(-100, 100, (3, 4)), rng.uniform(-100, 100, (3, 4))
    x, y = cluster.share(a), cluster.share(b)
    np.testing.assert_allclose(x.reveal(), a, atol=TOL)
    np.testing.assert_allclose((x + y).reveal(), a + b, atol=TOL)
    np.testing.assert_allclose((x - y).reveal(), a - b, atol=TOL)
    np.testing.assert_allclose((x + 2.5).reveal(), a + 2.5, atol=TOL)
    np.testing.assert_allclose((1.0 - x).reveal(), 1.0 - a, atol=TOL)
    np.testing.assert_allclose((-x).reveal(), -a, atol=TOL)


def test_reveal_to_the_parties_opens_in_one_round(cluster):
    a = np.array([[1.25, -3.5]])
    x = cluster.share(a)
    cluster.reset_stats()
    np.testing.assert_allclose(x.reveal(to="parties"), a, atol=TOL)
    stats = cluster.stats()
    assert stats["P0"]["open"]["rounds"] == 1 and stats["P1"]["open"]["bytes_received"] == 16
    assert "output" not in stats["client"]
    with pytest.raises(ValueError, match="caller"):
        x.reveal(to="everyone")


def test_multiply_and_matmul(cluster):
    rng = np.random.default_rng(1)
    a, b = rng.uniform(-10, 10, (4, 6)), rng.uniform(-10, 10, (6, 3))
    x, w = cluster.share(a), cluster.share(b)
    np.testing.assert_allclose((x * x).reveal(), a * a, atol=1e-3)
    np.testing.assert_allclose((x * 3).reveal(), a * 3, atol=TOL)
    np.testing.assert_allclose((x * 0.5).reveal(), a * 0.5, atol=TOL)
    np.testing.assert_allclose((x @ w).reveal(), a @ b, atol=1e-2)
    np.testing.assert_allclose((x @ b).reveal(), a @ b, atol=1e-2)
    np.testing.assert_allclose((a.T @ x).reveal(), a.T @ a, atol=1e-2)


def test_relu_conv_pool(cluster):
    rng = np.random.default_rng(2)
    img = rng.uniform(0, 1, (2, 10, 10, 1))
    k = rng.uniform(-1, 1, (3, 3, 1, 4))
    x = cluster.share(img)
    out = pysmpc.relu(pysmpc.conv2d(x, cluster.share(k), stride=1, padding="valid"))
    expected = np.maximum(_conv_ref(img, k), 0)
    np.testing.assert_allclose(out.reveal(), expected, atol=1e-3)
    np.testing.assert_allclose(pysmpc.conv2d(x, k).reveal(), _conv_ref(img, k), atol=1e-3)
    pooled = out.avg_pool2d(2).reveal()
    np.testing.assert_allclose(pooled, expected.reshape(2, 4, 2, 4, 2, 4).mean(axis=(2, 4)), atol=1e-3)
    np.testing.assert_allclose(out.max_pool2d(2).reveal(), expected.reshape(2, 4, 2, 4, 2, 4).max(axis=(2, 4)),
                               atol=1e-3)


def test_comparisons_and_argmax(cluster):
    a = np.array([[-1.0, 2.0, 0.5], [3.0, -4.0, 3.5]])
    x = cluster.share(a)
    y = cluster.share(np.zeros_like(a) + 0.5)
    np.testing.assert_array_equal((x < y).reveal(), (a < 0.5).astype(int))
    np.testing.assert_array_equal((x > 0.5).reveal(), (a > 0.5).astype(int))
    np.testing.assert_array_equal((x >= 0.5).reveal(), (a >= 0.5).astype(int))
    np.testing.assert_array_equal((x <= y).reveal(), (a <= 0.5).astype(int))
    np.testing.assert_array_equal(x.argmax().reveal(), np.eye(3, dtype=int)[a.argmax(axis=1)])


def test_stats_count_bytes_and_rounds(cluster):
    x = cluster.share(np.ones((8, 8)))
    cluster.reset_stats()
    (x @ x).reveal()
    stats = cluster.stats()
    p0 = stats["P0"]
    assert p0["matmul"]["rounds"] == 1 and p0["matmul"]["bytes_sent"] == 8 * 128
    assert p0["trunc"]["rounds"] == 1 and p0["trunc"]["bytes_sent"] == 8 * 64
    assert stats["P2"]["dealer:matmul"]["bytes_sent"] == 8 * 64
    assert sum(s["bytes_received"] for s in stats["P2"].values()) == 0
    assert stats["client"]["output"]["bytes_received"] == 2 * 8 * 64


def test_clear_errors(cluster):
    x = cluster.share(np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"\(m,k\) @ \(k,n\)"):
        x @ x
    with pytest.raises(OverflowError):
        cluster.share(np.array([1e12]))
    with pytest.raises(ValueError):
        cluster.share(np.array([np.nan]))


def _conv_ref(x, w):
    n, h, wd, c = x.shape
    kh, kw, _, o = w.shape
    out = np.zeros((n, h - kh + 1, wd - kw + 1, o))
    for i in range(h - kh + 1):
        for j in range(wd - kw + 1):
            out[:, i, j, :] = np.tensordot(x[:, i : i + kh, j : j + kw, :], w, axes=([1, 2, 3], [0, 1, 2]))
    return out
