"""What each party receives is uniform and never contains a plaintext value.

Threat model: honest-but-curious, one corrupted party. We record every
message each party receives while running the protocols on secrets, then:
- no received word equals the ring encoding of any input, weight or
  intermediate value (a uniform word matches a given value with probability
  2^-64, so a match means a leak);
- P0's and P1's received words pass a chi-square test on their top byte,
  also when the secrets are all zeros (structure would show there);
- P2, the dealer, receives nothing at all.
"""

import numpy as np
import pytest

from helpers import FP, run_shared
from pysmpc.protocols.conv2d import conv2d
from pysmpc.protocols.matmul import matmul
from pysmpc.protocols.pool import avg_pool2d, max_pool2d
from pysmpc.protocols.relu import relu
from pysmpc.protocols.truncate import truncate

# chi-square, 255 degrees of freedom: mean 255, sd 22.6; 420 is p < 1e-9.
CHI2_LIMIT = 420.0


def _is_packed(arr) -> bool:
    """An opening of low bits only (protocols.open.open_low_bits): uint8 rows of fewer than 8 bytes."""
    return arr.dtype == np.uint8 and arr.ndim == 2 and arr.shape[1] < 8


def _received_words(party) -> np.ndarray:
    """Every 64-bit word this party received (low-bits openings apart: _received_packed)."""
    words = []
    for _frm, _tag, data in party.channel.recorder.messages:
        for arr in data if isinstance(data, (list, tuple)) else [data]:
            arr = np.asarray(arr)
            if not _is_packed(arr):
                words.append(arr.reshape(-1).view(np.uint64))
    return np.concatenate(words) if words else np.zeros(0, np.uint64)


def _received_packed(party) -> np.ndarray:
    """The low-bits openings this party received, each value's bytes but its top one (uniform under a mask
    uniform mod 2^w; the top byte holds w mod 8 bits), widened to uint64."""
    values = []
    for _frm, _tag, data in party.channel.recorder.messages:
        for arr in data if isinstance(data, (list, tuple)) else [data]:
            arr = np.asarray(arr)
            if _is_packed(arr):
                wide = np.zeros((len(arr), 8), np.uint8)
                wide[:, : arr.shape[1] - 1] = arr[:, :-1]
                values.append(wide.view(np.uint64).reshape(-1))
    return np.concatenate(values) if values else np.zeros(0, np.uint64)


def _chi_square_top_byte(words: np.ndarray) -> float:
    counts = np.bincount((words >> np.uint64(56)).astype(np.int64), minlength=256)
    expected = len(words) / 256
    return float(((counts - expected) ** 2 / expected).sum())


def _network(party, x, w1, w2):
    """A small CNN: conv, truncate, relu, avg-pool, max-pool, matmul."""
    h = truncate(party, conv2d(party, x, w1, 1, "same"), FP.frac_bits)
    h = relu(party, h)
    h = avg_pool2d(party, h, 2, FP.frac_bits)
    h = max_pool2d(party, h, 2)
    flat = h.reshape(h.shape[0], -1)
    return truncate(party, matmul(party, flat, w2), FP.frac_bits), h


@pytest.mark.parametrize("kind", ["random", "zeros", "constant"])
def test_views_are_uniform_and_contain_no_plaintext(kind):
    rng = np.random.default_rng(21)
    shapes = {"x": (4, 8, 8, 2), "w1": (3, 3, 2, 4), "w2": (16, 5)}
    if kind == "random":
        plain = {k: rng.uniform(-2, 2, size=s) for k, s in shapes.items()}
    elif kind == "zeros":
        plain = {k: np.zeros(s) for k, s in shapes.items()}
    else:
        plain = {k: np.full(s, 1.5) for k, s in shapes.items()}
    rings = {k: FP.encode(v) for k, v in plain.items()}
    (logits, hidden), parties = run_shared(_network, rings["x"], rings["w1"], rings["w2"], record=True)

    secrets = np.unique(np.concatenate([v.ravel() for v in rings.values()] + [logits.ravel(), hidden.ravel()]))
    for party in parties[:2]:
        words = _received_words(party)
        assert len(words) > 5_000, f"{party.name} received only {len(words)} words"
        leaked = np.intersect1d(words, secrets)
        assert leaked.size == 0, f"{party.name} received plaintext values {leaked[:5]} ({kind} secrets)"
        chi2 = _chi_square_top_byte(words)
        assert chi2 < CHI2_LIMIT, f"{party.name}: top bytes not uniform, chi2={chi2:.1f} over {len(words)} words"
    dealer_words = _received_words(parties[2])
    assert dealer_words.size == 0, "the dealer received data"


def test_dealer_corrections_do_not_depend_on_the_data():
    """P1's dealer messages are the same whatever the secrets (same seeds)."""
    a = FP.encode(np.full((2, 5), 3.0))
    b = FP.encode(np.full((2, 5), -7.0))

    def dealer_traffic(x):
        _, parties = run_shared(lambda p, s: relu(p, s), x, record=True)
        return [d for frm, _t, d in parties[1].channel.recorder.messages if frm == 2]

    for m1, m2 in zip(dealer_traffic(a), dealer_traffic(b)):
        for u, v in zip(m1 if isinstance(m1, list) else [m1], m2 if isinstance(m2, list) else [m2]):
            np.testing.assert_array_equal(u, v)


@pytest.mark.parametrize("pipelined", [False, True], ids=["whole", "pipelined-parts"])
@pytest.mark.parametrize("prepared", [False, True], ids=["dealt-online", "prepared-masked-input"])
def test_served_model_views_are_uniform(prepared, pipelined, monkeypatch):
    """The CNN served on prepared material, with the input masked by the querier (x - A to P0 and P1);
    pipelined: the batch of 8 in 4 parts, each with its own material and mask, as over a network."""
    from pysmpc import LocalCluster, load_model
    from pysmpc.graph import plan
    from pysmpc.models import load_samples, shipped_model_path
    from pysmpc.parties.local import LocalChannel
    from pysmpc.sharing.fixedpoint import FixedPoint

    if pipelined:
        monkeypatch.setattr(plan, "PIPELINE_MIN_ROWS", 2)
        monkeypatch.setattr(LocalChannel, "pipelines_batches", True)
    model = load_model(shipped_model_path())
    images, _ = load_samples()
    x = images[:8]
    with LocalCluster() as cluster:
        shared = model.share(cluster)
        if prepared:
            shared.prepare(len(x))
        channels = cluster.party_channels()
        recorders = {i: channels[i].start_recording() for i in (0, 1, 2)}
        logits = shared.predict(x)
        for ch in channels.values():
            ch.recorder = None
    secrets = [FixedPoint(frac_bits=16).encode(x).reshape(-1)]
    secrets += [FixedPoint(frac_bits=f).encode(np.round(logits, 3)).reshape(-1) for f in (16, 32, 34)]
    nonzero = np.unique(np.concatenate(secrets))
    nonzero = nonzero[nonzero != 0]  # zero pixels: a uniform word is 0 with probability 2^-64, still checked below
    for i in (0, 1):
        words = np.concatenate([np.asarray(a).reshape(-1).view(np.uint64)
                                for _, _, data in recorders[i].messages
                                for a in (data if isinstance(data, (list, tuple)) else [data])])
        assert not np.isin(words, nonzero).any(), f"P{i} received a plaintext word"
        assert _chi_square_top_byte(words) < CHI2_LIMIT, f"P{i}: received words are not uniform"
    p2_online = [(tag, frm) for frm, tag, _ in recorders[2].messages]
    assert p2_online == [], "P2 received something during the query"


# -- nonlinearities -------------------------------------------------------------------------
def _nonlinearities():
    from pysmpc.protocols.clip import relu6
    from pysmpc.protocols.exp import exp, exp_nonpositive
    from pysmpc.protocols.reciprocal import reciprocal
    from pysmpc.protocols.relu_fss import relu_fss
    from pysmpc.protocols.sigmoid import sigmoid
    from pysmpc.protocols.softmax import softmax
    from pysmpc.protocols.tanh import tanh

    # name: (program, input shape, random inputs' (low, high))
    return {
        "exp": (lambda p, a: exp(p, a), (256,), (-15, 12)),
        "exp_nonpositive": (lambda p, a: exp_nonpositive(p, a), (256,), (-15, 0)),
        "reciprocal": (lambda p, a: reciprocal(p, a), (64,), (0.01, 1000)),
        "sigmoid": (lambda p, a: sigmoid(p, a), (128,), (-15, 15)),
        "tanh": (lambda p, a: tanh(p, a), (128,), (-8, 8)),
        "softmax": (lambda p, a: softmax(p, a), (16, 10), (-10, 10)),
        "relu6": (lambda p, a: relu6(p, a), (1024,), (-10, 10)),
        # FSS: a masked opening and DCF keys (correction words from P2 to both).
        "relu_fss": (lambda p, a: relu_fss(p, a), (256,), (-10, 10)),
        "relu_fss_truncated": (lambda p, a: relu_fss(p, a * np.uint64(1 << 18), 18), (256,), (-10, 10)),
        # |x| < 2^5 promised: 40-bit domain, x + r opened mod 2^41 (6 bytes per value).
        "relu_fss_bounded": (lambda p, a: relu_fss(p, a * np.uint64(1 << 18), 18, domain_bits=5 + 16 + 1 + 18),
                             (256,), (-10, 10)),
    }


def _secret_words(*plain_rings) -> np.ndarray:
    """Each ring value, its negation and its shifts by 1..30 bits: the scales the protocols work at."""
    words = []
    for ring in plain_rings:
        ring = np.asarray(ring, np.uint64).reshape(-1)
        for shift in range(31):
            shifted = ring << np.uint64(shift)
            words += [shifted, np.negative(shifted)]
    return np.unique(np.concatenate(words))


@pytest.mark.parametrize("kind", ["random", "zeros", "constant"])
@pytest.mark.parametrize("name", list(_nonlinearities()))
def test_nonlinearity_views_are_uniform_and_contain_no_plaintext(name, kind):
    program, shape, (low, high) = _nonlinearities()[name]
    if kind == "random":
        plain = np.random.default_rng(31).uniform(low, high, size=shape)
    else:
        plain = np.full(shape, 0.0 if kind == "zeros" else 1.5)
    x = FP.encode(plain)
    out, parties = run_shared(program, x, record=True)
    secrets = _secret_words(x, out)
    for party in parties[:2]:
        words = _received_words(party)
        assert len(words) > 5_000, f"{name}: {party.name} received only {len(words)} words"
        leaked = np.intersect1d(words, secrets)
        assert leaked.size == 0, f"{name}: {party.name} received plaintext values {leaked[:5]} ({kind} secrets)"
        chi2 = _chi_square_top_byte(words)
        assert chi2 < CHI2_LIMIT, f"{name}: {party.name}'s top bytes not uniform, chi2={chi2:.1f} ({kind})"
    # What P0 and P1 open together (the sum of the two halves of each
    # exchange) is masked too: an opening without its mask would show here.
    opened = _opened_sums(parties[0], parties[1])
    leaked = np.intersect1d(opened, secrets)
    assert leaked.size == 0, f"{name}: an opening reveals plaintext values {leaked[:5]} ({kind} secrets)"
    if len(opened) >= 256:  # and uniform: an opening offset but not masked (x + 2^62) would show here
        assert _chi_square_top_byte(opened) < CHI2_LIMIT, f"{name}: the openings are not uniform ({kind} secrets)"
    assert _received_words(parties[2]).size == 0, f"{name}: the dealer received data"
    if name.startswith("relu_fss_"):  # low-bits openings: each received value, and what the two open
        for party in parties[:2]:
            packed = _received_packed(party)
            assert len(packed) == 256, f"{name}: {party.name} received {len(packed)} low-bits values"
            low = np.uint64((1 << 40) - 1)  # the 5 uniform bytes of each
            assert np.intersect1d(packed, secrets & low).size == 0, f"{name}: {party.name} received plaintext"
            assert _chi_square_top_byte(packed << np.uint64(24)) < CHI2_LIMIT, f"{name}: {party.name} not uniform"
        opened_low = (_received_packed(parties[0]) + _received_packed(parties[1])) & low
        assert np.intersect1d(opened_low, secrets & low).size == 0, f"{name}: an opening reveals plaintext"
        assert _chi_square_top_byte(opened_low << np.uint64(24)) < CHI2_LIMIT, f"{name}: openings not uniform"


def _opened_sums(p0, p1) -> np.ndarray:
    """x0 + x1 mod 2^64 for every pair of words P0 and P1 exchanged, in order."""
    def halves(party, peer):
        return [(tag, data) for frm, tag, data in party.channel.recorder.messages if frm == peer]

    sums = []
    from_p1, from_p0 = halves(p0, 1), halves(p1, 0)
    assert len(from_p1) == len(from_p0)
    for (tag1, data1), (tag0, data0) in zip(from_p1, from_p0):
        assert tag1 == tag0, (tag1, tag0)
        for a, b in zip(data1 if isinstance(data1, (list, tuple)) else [data1],
                        data0 if isinstance(data0, (list, tuple)) else [data0]):
            if not _is_packed(np.asarray(a)):  # low-bits openings: checked apart
                sums.append(np.asarray(a).reshape(-1).view(np.uint64) + np.asarray(b).reshape(-1).view(np.uint64))
    return np.concatenate(sums) if sums else np.zeros(0, np.uint64)


@pytest.mark.parametrize("name", list(_nonlinearities()))
def test_nonlinearity_dealer_traffic_does_not_depend_on_the_data(name):
    program, shape, (low, high) = _nonlinearities()[name]

    def dealer_traffic(plain):
        _, parties = run_shared(program, FP.encode(plain), record=True)
        return [d for frm, _t, d in parties[1].channel.recorder.messages if frm == 2]

    first = dealer_traffic(np.full(shape, low))
    second = dealer_traffic(np.random.default_rng(5).uniform(low, high, size=shape))
    assert len(first) == len(second) > 0
    for m1, m2 in zip(first, second):
        for u, v in zip(m1 if isinstance(m1, list) else [m1], m2 if isinstance(m2, list) else [m2]):
            np.testing.assert_array_equal(u, v)


def test_branches_in_lockstep_send_only_masked_values():
    """Merged exchanges (parallel branches in one round) carry what each branch sends alone: masked words."""
    from test_secure_graph import two_branch_graph

    from pysmpc import LocalCluster
    from pysmpc.graph import fixed_point_trace
    from pysmpc.serve.model import Model

    rng = np.random.default_rng(31)
    graph = two_branch_graph(rng)
    x = rng.uniform(-1, 1, (4, 6, 6, 2))
    with LocalCluster() as cluster:
        shared = Model(graph).share(cluster)
        channels = cluster.party_channels()
        recorders = {i: channels[i].start_recording() for i in (0, 1, 2)}
        shared.predict(x)
        for ch in channels.values():
            ch.recorder = None
    merged = [tag for _, tag, _ in recorders[0].messages if "+" in tag]
    assert merged, "the two branches should have shared rounds"
    # Every intermediate value, at scale F and (before its truncation) 2F.
    trace = fixed_point_trace(graph, x)
    values = np.concatenate([t.reshape(-1) for t in trace])
    secrets = np.unique(np.concatenate([values, values << np.uint64(16)]))
    secrets = secrets[secrets != 0]
    for i in (0, 1):
        words = np.concatenate([np.asarray(a).reshape(-1).view(np.uint64)
                                for _, _, data in recorders[i].messages
                                for a in (data if isinstance(data, (list, tuple)) else [data])])
        assert not np.isin(words, secrets).any(), f"P{i} received a plaintext word"
        assert _chi_square_top_byte(words) < CHI2_LIMIT, f"P{i}: received words are not uniform"
    assert [(tag, frm) for frm, tag, _ in recorders[2].messages] == [], "P2 received something during the query"
