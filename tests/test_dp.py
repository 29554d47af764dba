"""DP-SGD: clipping, the accountant against dp-accounting run directly, the CSPRNG Gaussian, a short DP run."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from pysmpc.fl import FederatedConfig, clip_and_sum, load_mnist, run_federated
from pysmpc.sharing.gaussian import standard_normal
from pysmpc.sharing.prg import PRG

MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


def test_clip_and_sum_bounds_each_example():
    rng = np.random.default_rng(0)
    grads = [rng.standard_normal((6, 3, 4)), rng.standard_normal((6, 5))]
    grads[0][2] *= 1e-3  # a small example stays unclipped
    grads[1][2] *= 1e-3
    sums, norms = clip_and_sum(grads, clip_norm=1.0)
    flat = np.concatenate([g.reshape(6, -1) for g in grads], axis=1)
    np.testing.assert_allclose(norms, np.linalg.norm(flat, axis=1))
    scale = np.minimum(1.0, 1.0 / norms)
    np.testing.assert_allclose(sums[0], np.tensordot(scale, grads[0], axes=(0, 0)))
    np.testing.assert_allclose(sums[1], np.tensordot(scale, grads[1], axes=(0, 0)))
    assert np.linalg.norm((flat * scale[:, None])[2]) == pytest.approx(norms[2])
    assert np.all(np.linalg.norm(flat * scale[:, None], axis=1) <= 1.0 + 1e-12)


def test_accountant_matches_dp_accounting_directly():
    dpa = pytest.importorskip("dp_accounting")
    from pysmpc.fl import PrivacyAccountant, dp_epsilon, noise_multiplier_for

    sigma, q, delta, steps = 1.1, 0.02, 1e-5, 250
    direct = dpa.rdp.RdpAccountant()
    direct.compose(dpa.PoissonSampledDpEvent(q, dpa.GaussianDpEvent(sigma)), steps)
    expected = direct.get_epsilon(delta)
    assert dp_epsilon(sigma, q, steps, delta) == pytest.approx(expected, rel=1e-12)
    acc = PrivacyAccountant(sigma, q, delta)
    for _ in range(5):
        acc.step(steps // 5)
    assert acc.steps == steps
    assert acc.epsilon() == pytest.approx(expected, rel=1e-9)

    target = 3.0
    found = noise_multiplier_for(target, delta, q, steps)
    assert dp_epsilon(found, q, steps, delta) <= target
    assert dp_epsilon(found * 0.99, q, steps, delta) > target, "sigma should be (nearly) the smallest that fits"


def test_missing_dp_accounting_names_the_extra(monkeypatch):
    from pysmpc.fl import dp_epsilon

    monkeypatch.setitem(sys.modules, "dp_accounting", None)
    with pytest.raises(ImportError, match=r"pysmpc\[dp\]"):
        dp_epsilon(1.0, 0.01, 10, 1e-5)


def test_csprng_gaussian():
    z = standard_normal(PRG(bytes(range(16))), (200_000,))
    assert abs(z.mean()) < 0.01 and abs(z.std() - 1) < 0.01
    kurtosis = ((z - z.mean()) ** 4).mean() / z.var() ** 2
    assert abs(kurtosis - 3) < 0.1
    assert abs(np.mean(np.abs(z) > 1.96) - 0.05) < 0.003
    np.testing.assert_array_equal(z[:1000], standard_normal(PRG(bytes(range(16))), (200_000,))[:1000])
    assert np.abs(z).max() < np.sqrt(2 * 53 * np.log(2)) + 1e-9  # the documented tail cut


@pytest.fixture(scope="module")
def mnist():
    if not MNIST.is_dir():
        pytest.skip(f"MNIST IDX files not found at {MNIST}")
    return load_mnist(MNIST), load_mnist(MNIST, "test")


def test_short_dp_run_spends_at_most_epsilon(mnist):
    pytest.importorskip("dp_accounting")
    from pysmpc import LocalCluster

    train, test = mnist
    cfg = FederatedConfig(owners=3, rounds=2, epsilon=3.0, delta=1e-5, lot_size=300, train_subset=3000,
                          test_subset=1000, progress=False, dp_lr=0.5)
    lines = []
    with LocalCluster() as cluster:
        result = run_federated(cluster, cfg, train, test, log=lines.append)
    assert result.epsilons[0] < result.epsilons[1] <= 3.0
    assert result.steps == 20 and result.sample_rate == pytest.approx(0.1)
    assert any("epsilon" in line for line in lines[2:])
    # A tiny private run still learns something (chance is 10%).
    assert result.accuracy > 0.3, lines


def test_fl_demo_with_epsilon_prints_it_last(mnist, capsys):
    pytest.importorskip("dp_accounting")
    from pysmpc.cli import main

    code = main(["fl-demo", "--in-process", "--owners", "3", "--rounds", "1", "--epsilon", "2", "--delta", "1e-5", "--data", str(MNIST),
                 "--train-subset", "1500", "--test-subset", "500", "--lot-size", "300", "--no-progress"])
    out = capsys.readouterr().out.strip().splitlines()
    assert code == 0
    assert out[-2].startswith("accuracy: ") and out[-1].startswith("epsilon: "), out
    assert float(out[-1].split()[1]) <= 2.0
