"""Private inference of a graph: against the plaintext twins and the cost plan."""

import numpy as np
import pytest

from pysmpc import LocalCluster
from pysmpc.graph import Graph, Layer, run_fixed_point, run_float
from pysmpc.graph import plan as plan_module
from pysmpc.graph.plan import pipeline_parts
from pysmpc.parties.local import LocalChannel
from pysmpc.serve.model import Model

F = 16


def assert_traffic_is_the_plan(stats: dict, shared, planned) -> None:
    """P0's and P1's rounds and bytes of the inference (no dealer, setup, input or output tags) are the plan's,
    in total and layer by layer (shared.profile)."""
    for party in ("P0", "P1"):
        infer = {t: s for t, s in stats[party].items()
                 if not t.startswith(("dealer", "setup")) and t not in ("input", "output")}
        assert sum(s["rounds"] for s in infer.values()) == sum(c.rounds for _, c in planned), (party, infer)
        assert sum(s["bytes_sent"] for s in infer.values()) == sum(c.bytes_sent for _, c in planned), (party, infer)
    measured = [(p["name"], p["rounds"], p["bytes_sent"]) for p in shared.profile]
    assert measured == [(name, c.rounds, c.bytes_sent) for name, c in planned]


def predict_as_queried(cluster, shared, x, prepared: bool):
    """shared.predict(x) with fresh stats, on material prepared for it if `prepared` (P2 then sends nothing online)."""
    if prepared:
        shared.prepare(len(x))
    cluster.reset_stats()
    out = shared.predict(x)
    if prepared:  # the dealer had nothing left to do online
        assert sum(s["bytes_sent"] for s in cluster.stats()["P2"].values()) == 0
    return out


def seed_cnn(rng) -> Graph:
    """The user's MNIST CNN shape, with random weights."""
    def conv(name, cin, cout, scale):
        return Layer("conv2d", name, {"stride": (1, 1), "padding": "valid"},
                     {"kernel": rng.normal(0, scale, (3, 3, cin, cout)), "bias": rng.normal(0, 0.1, cout)})
    return Graph((28, 28, 1), [
        conv("conv1", 1, 16, 0.3), Layer("avg_pool2d", "pool1", {"pool": (2, 2)}), Layer("relu", "relu1"),
        conv("conv2", 16, 32, 0.1), Layer("avg_pool2d", "pool2", {"pool": (2, 2)}), Layer("relu", "relu2"),
        conv("conv3", 32, 64, 0.1), Layer("avg_pool2d", "pool3", {"pool": (2, 2)}), Layer("relu", "relu3"),
        Layer("flatten", "flatten"),
        Layer("dense", "dense", {}, {"kernel": rng.normal(0, 0.3, (64, 10)), "bias": rng.normal(0, 0.1, 10)}),
    ])


def other_cnn(rng) -> Graph:
    """'same' padding, stride 2, max pool, a 3x3 average pool, two dense layers."""
    return Graph((9, 9, 2), [
        Layer("conv2d", "c1", {"stride": (2, 2), "padding": "same"},
              {"kernel": rng.normal(0, 0.3, (3, 3, 2, 4)), "bias": rng.normal(0, 0.1, 4)}),
        Layer("relu", "r1"),
        Layer("max_pool2d", "m1", {"pool": (2, 2), "stride": (1, 1)}),
        Layer("conv2d", "c2", {"stride": (1, 1), "padding": "same"},
              {"kernel": rng.normal(0, 0.3, (2, 2, 4, 3)), "bias": rng.normal(0, 0.1, 3)}),
        Layer("avg_pool2d", "a2", {"pool": (3, 3), "stride": (1, 1)}),
        Layer("flatten", "f"),
        Layer("dense", "d1", {}, {"kernel": rng.normal(0, 0.3, (12, 5)), "bias": rng.normal(0, 0.1, 5)}),
        Layer("relu", "r2"),
        Layer("dense", "d2", {}, {"kernel": rng.normal(0, 0.3, (5, 3)), "bias": rng.normal(0, 0.1, 3)}),
    ])


def gap_cnn(rng) -> Graph:
    """ResNet-20's head: relu, a global average pool (4 x 4: a power of two), then dense."""
    return Graph((4, 4, 3), [
        Layer("conv2d", "c1", {"stride": (1, 1), "padding": "same"},
              {"kernel": rng.normal(0, 0.4, (3, 3, 3, 8)), "bias": rng.normal(0, 0.1, 8)}),
        Layer("relu", "r1"),
        Layer("global_avg_pool", "gap"),
        Layer("flatten", "f"),
        Layer("dense", "fc", {}, {"kernel": rng.normal(0, 0.5, (8, 5)), "bias": rng.normal(0, 0.1, 5)}),
    ])


@pytest.fixture(scope="module")
def cluster():
    with LocalCluster() as c:
        yield c


@pytest.mark.parametrize("prepared", [False, True], ids=["dealt-online", "prepared"])
@pytest.mark.parametrize("make_graph,batch", [(seed_cnn, 1), (seed_cnn, 6), (other_cnn, 5), (gap_cnn, 4)])
def test_private_logits_match_plaintext_and_cost_matches_the_plan(cluster, make_graph, batch, prepared):
    rng = np.random.default_rng(batch)
    graph = make_graph(rng)
    x = rng.uniform(0, 1, (batch, *graph.input_shape))
    shared = Model(graph).share(cluster)
    logits = predict_as_queried(cluster, shared, x, prepared)
    # Protocol error: one unit per truncation, amplified by later layers; far below
    # the quantization error (run_fixed_point vs run_float) checked separately.
    np.testing.assert_allclose(logits, run_fixed_point(graph, x, F), atol=64 / 2**F)
    np.testing.assert_allclose(logits, run_float(graph, x), atol=1e-2)
    assert_traffic_is_the_plan(cluster.stats(), shared, shared.cost(batch, prepared=prepared))
    shared.stop()


def test_global_average_pool_division_joins_the_next_products_truncation():
    """GAP of a value at F owes its division; the dense layer after it pays it in its own truncation."""
    graph = gap_cnn(np.random.default_rng(0))
    planned = dict(Model(graph).cost(2))
    assert planned["gap"].rounds == 0 and planned["gap"].bytes_sent == 0, planned["gap"]
    assert planned["output"].rounds == 1, planned["output"]  # one truncation for the pool and the product


def test_private_argmax_reveals_labels(cluster):
    rng = np.random.default_rng(3)
    graph = seed_cnn(rng)
    x = rng.uniform(0, 1, (4, 28, 28, 1))
    shared = Model(graph).share(cluster)
    expected = run_float(graph, x).argmax(axis=1)
    np.testing.assert_array_equal(shared.predict(x, reveal="argmax"), expected)
    # On prepared material (masked input) too: the argmax follows the model's layers in the same call.
    shared.prepare(4, reveal="argmax")
    cluster.reset_stats()
    np.testing.assert_array_equal(shared.predict(x, reveal="argmax"), expected)
    assert shared.profile[0]["rounds"] == 0  # conv1 opened nothing: the prepared run's input mask was used
    stats = cluster.stats()
    assert sum(s["bytes_sent"] for s in stats["client"].values()) == 2 * x.size * 8  # x - A to P0 and P1
    assert stats["P2"], "P2 deals the argmax's material during the query"
    shared.stop()


@pytest.mark.parametrize("prepared", [False, True], ids=["dealt-online", "prepared"])
def test_logits_are_revealed_truncated_to_the_models_fractional_bits(cluster, prepared):
    """The client gets the output at F bits, not the 2F-bit accumulator of the last product (model extraction)."""
    rng = np.random.default_rng(11)
    graph = seed_cnn(rng)
    x = rng.uniform(0, 1, (3, 28, 28, 1))
    shared = Model(graph).share(cluster)
    if prepared:
        shared.prepare(3)
    logits = shared.predict(x)
    scaled = logits * 2**F
    np.testing.assert_array_equal(scaled, np.round(scaled), err_msg=f"logits carry more than {F} fractional bits")
    # The truncation's error is at most one unit in the last place beyond the fixed-point twin's.
    np.testing.assert_allclose(logits, run_fixed_point(graph, x, F), atol=64 / 2**F)
    assert shared.profile[-1]["name"] == "output" and shared.profile[-1]["rounds"] == 1
    shared.stop()


def test_prepared_material_is_kept_per_reveal_mode(cluster):
    # Logits material includes the output's truncation, argmax material does not: neither may serve the other.
    rng = np.random.default_rng(12)
    graph = seed_cnn(rng)
    x = rng.uniform(0, 1, (2, 28, 28, 1))
    shared = Model(graph).share(cluster)
    shared.prepare(2, reveal="argmax")
    shared.prepare(2, reveal="logits")
    for reveal in ("logits", "argmax"):
        cluster.reset_stats()
        answer = shared.predict(x, reveal=reveal)
        assert shared.profile[0]["rounds"] == 0, f"{reveal}: the prepared run's input mask was not used"
        expected = run_float(graph, x)
        if reveal == "logits":
            np.testing.assert_allclose(answer, expected, atol=1e-2)
        else:
            np.testing.assert_array_equal(answer, expected.argmax(axis=1))
    with pytest.raises(ValueError, match="reveal"):
        shared.prepare(2, reveal="softmax")
    shared.stop()


def test_bad_input_shape_is_a_clear_error(cluster):
    shared = Model(seed_cnn(np.random.default_rng(0))).share(cluster)
    with pytest.raises(ValueError, match="does not fit the model's input"):
        shared.predict(np.zeros((1, 27, 28, 1)))
    with pytest.raises(ValueError, match="reveal"):
        shared.predict(np.zeros((1, 28, 28, 1)), reveal="softmax")
    shared.stop()


def test_shipped_cnn_stays_within_its_round_and_traffic_budget():
    """Regression guard (deterministic): rounds and bytes per image of the shipped CNN.

    16 rounds on prepared material (the querier masks its input for the
    first convolution), 17 when P2 deals while the query runs; each
    includes the truncation of the logits to F bits before they are
    revealed (1 round).
    """
    from pysmpc import load_model
    from pysmpc.models import load_samples, shipped_model_path

    model = load_model(shipped_model_path())
    for batch in (1, 4):
        for prepared, budget in ((True, 16), (False, 17)):
            plan = model.cost(batch, prepared=prepared)
            rounds = sum(c.rounds for _, c in plan)
            online_per_image = 2 * sum(c.bytes_sent for _, c in plan) / batch  # P0 + P1
            assert rounds == budget, f"batch {batch}, prepared={prepared}: {rounds} rounds"
            assert online_per_image <= 0.5e6, f"batch {batch}: {online_per_image:.0f} bytes per image online"
    images, _ = load_samples()
    with LocalCluster() as cluster:
        shared = model.share(cluster)
        for prepared in (False, True):
            if prepared:
                shared.prepare(4)
            cluster.reset_stats()
            shared.predict(images[:4])
            measured = [(p["rounds"], p["bytes_sent"]) for p in shared.profile]
            assert measured == [(c.rounds, c.bytes_sent) for _, c in model.cost(4, prepared=prepared)]
            channels = sum(s["rounds"] for t, s in cluster.stats()["P1"].items() if not t.startswith("dealer")
                           and t not in ("input", "output"))
            assert channels == (16 if prepared else 17)


def test_prepared_material_is_used_only_for_its_batch_size(cluster):
    rng = np.random.default_rng(7)
    graph = seed_cnn(rng)
    shared = Model(graph).share(cluster)
    shared.prepare(batch=2, count=2)
    for batch, dealer_online in ((1, True), (2, False), (2, False), (2, True)):
        x = rng.uniform(0, 1, (batch, 28, 28, 1))
        cluster.reset_stats()
        np.testing.assert_allclose(shared.predict(x), run_float(graph, x), atol=1e-2)
        p2_sent = sum(s["bytes_sent"] for s in cluster.stats()["P2"].values())
        assert (p2_sent > 0) == dealer_online, (batch, p2_sent)
    with pytest.raises(ValueError, match="positive"):
        shared.prepare(batch=0)
    shared.stop()


def test_prepared_material_of_at_most_four_shapes_is_kept(cluster):
    # other_cnn's first convolution is padded: no input mask, so material is kept per input shape.
    rng = np.random.default_rng(8)
    shared = Model(other_cnn(rng)).share(cluster)
    held = [shared.prepare(batch)["stored_bytes"] for batch in (1, 2, 3, 4, 5)]
    assert held[-1][2] == 0  # P2 keeps nothing: it dealt it all
    for batch, dealer_online in ((1, True), (2, False)):  # batch 1's material was dropped for batch 5's
        cluster.reset_stats()
        shared.predict(rng.uniform(0, 1, (batch, 9, 9, 2)))
        assert (sum(s["bytes_sent"] for s in cluster.stats()["P2"].values()) > 0) == dealer_online
    shared.stop()


# -- DAGs: branches, multi-input layers and every layer kind ----------------------------------


def dag_cnn(rng) -> Graph:
    """Every layer kind: an inception-like fork, a residual add, batch norm, padded pools, nonlinearities."""
    def conv(name, k, cin, cout, inputs, **params):
        return Layer("conv2d", name, params, {"kernel": rng.normal(0, 0.4, (k, k, cin, cout)),
                                              "bias": rng.normal(0, 0.1, cout)}, inputs=inputs)
    return Graph((8, 8, 2), [
        Layer("batch_norm", "scale_in", {}, {"scale": np.array([1.5, 0.5]), "shift": np.array([-0.2, 0.1])}),
        conv("branch_a", 3, 2, 3, ["scale_in"], padding="same"),
        conv("branch_b", 1, 2, 3, ["scale_in"]),
        Layer("relu", "relu_a", inputs=["branch_a"]),
        Layer("clip", "relu6_b", {"lo": 0.0, "hi": 6.0}, inputs=["branch_b"]),
        Layer("add", "residual", inputs=["relu_a", "relu6_b"]),
        Layer("depthwise_conv2d", "dw", {"stride": 2, "padding": "same"},
              {"kernel": rng.normal(0, 0.4, (3, 3, 3, 2)), "bias": rng.normal(0, 0.1, 6)}),
        Layer("batch_norm", "bn", {}, {"scale": rng.uniform(0.5, 1.5, 6), "shift": rng.normal(0, 0.1, 6)}),
        Layer("max_pool2d", "mp", {"pool": 3, "stride": 2, "padding": "same"}, inputs=["residual"]),
        Layer("avg_pool2d", "ap", {"pool": 3, "stride": 2, "padding": "same"}, inputs=["residual"]),
        Layer("concat", "cat", {"axis": -1}, inputs=["bn", "mp", "ap"]),
        Layer("zero_pad", "pad", {"pads": (1, 0, 0, 1)}),
        Layer("transpose", "t", {"perm": (1, 0, 2)}),
        Layer("global_avg_pool", "gap", inputs=["t"]),
        Layer("global_max_pool", "gmp", inputs=["t"]),
        Layer("concat", "pooled", {"axis": 0}, inputs=["gap", "gmp"]),
        Layer("sigmoid", "gate"),
        Layer("reshape", "r", {"shape": (2, 12)}),
        Layer("flatten", "f"),
        Layer("dense", "fc", {}, {"kernel": rng.normal(0, 0.3, (24, 4)), "bias": rng.normal(0, 0.1, 4)}),
        Layer("tanh", "squash"),
        Layer("softmax", "probs"),
    ])


@pytest.mark.parametrize("prepared", [False, True], ids=["dealt-online", "prepared"])
def test_dag_private_run_matches_plaintext_and_plan(cluster, prepared):
    rng = np.random.default_rng(11)
    graph = dag_cnn(rng)
    x = rng.uniform(-1, 1, (3, *graph.input_shape))
    shared = Model(graph).share(cluster)
    probs = predict_as_queried(cluster, shared, x, prepared)
    # The nonlinearities' documented bounds (tanh 2^-13 through a softmax) on top of truncation units.
    np.testing.assert_allclose(probs, run_fixed_point(graph, x, F), atol=2e-3)
    np.testing.assert_allclose(probs, run_float(graph, x), atol=3e-3)
    planned = shared.cost(3, prepared=prepared)
    assert_traffic_is_the_plan(cluster.stats(), shared, planned)
    shared.stop()


def two_branch_graph(rng) -> Graph:
    """Two independent conv + relu branches of one input, joined by a concat."""
    def conv(name, k):
        return Layer("conv2d", name, {"padding": "same"}, {"kernel": rng.normal(0, 0.4, (k, k, 2, 3)),
                                                           "bias": rng.normal(0, 0.1, 3)}, inputs=["input"])
    return Graph((6, 6, 2), [
        conv("left", 3), Layer("relu", "left_relu"),
        conv("right", 1), Layer("relu", "right_relu"), Layer("max_pool2d", "right_pool", {"pool": 2, "stride": 1}),
        Layer("max_pool2d", "left_pool", {"pool": 2, "stride": 1}, inputs=["left_relu"]),
        Layer("concat", "cat", {"axis": -1}, inputs=["left_pool", "right_pool"]),
        Layer("flatten", "f"),
        Layer("dense", "fc", {}, {"kernel": rng.normal(0, 0.3, (150, 2)), "bias": np.zeros(2)}),
    ])


def test_independent_branches_share_their_rounds(cluster):
    rng = np.random.default_rng(12)
    graph = two_branch_graph(rng)
    x = rng.uniform(-1, 1, (2, 6, 6, 2))
    shared = Model(graph).share(cluster)
    planned = dict(shared.cost(2))
    # Each branch alone: conv 1 + relu 4 + max pool 2 levels x 4 = 13 rounds; together 13, not 26; dense 1;
    # the logits' truncation 1.
    assert sum(c.rounds for c in planned.values()) == 13 + 1 + 1
    assert planned["left"].rounds == 1 and planned["right"].rounds == 0  # the shared round counts for 'left'
    cluster.reset_stats()
    np.testing.assert_allclose(shared.predict(x), run_fixed_point(graph, x, F), atol=16 / 2**F)
    rounds = sum(s["rounds"] for t, s in cluster.stats()["P1"].items()
                 if not t.startswith(("dealer", "setup")) and t not in ("input", "output"))
    assert rounds == 15
    merged = [t for t in cluster.stats()["P1"] if "+" in t]
    assert any("conv2d:left" in t and "conv2d:right" in t for t in merged), merged
    assert [(p["name"], p["rounds"], p["bytes_sent"]) for p in shared.profile] == \
        [(name, c.rounds, c.bytes_sent) for name, c in shared.cost(2)]
    shared.stop()


def test_liveness_drops_a_tensor_after_its_last_reader():
    from pysmpc.graph.plan import compile_plan
    from pysmpc.graph.secure import _Values
    from pysmpc.sharing.shares import AShare

    plan = [{"kind": "relu", "name": "a", "inputs": ["input"]}, {"kind": "relu", "name": "b", "inputs": ["a"]},
            {"kind": "add", "name": "c", "inputs": ["a", "b"]}]
    values = _Values(compile_plan(plan), AShare(np.zeros(2, np.uint64), 0))
    values["a"] = AShare(np.ones(2, np.uint64), 0)
    values.take(["input"])
    assert "input" not in values
    values.take(["a"])
    assert "a" in values  # 'c' still reads it
    values["b"] = values["a"]
    values.take(["a", "b"])
    assert not values


def test_a_model_with_its_own_fractional_bits(cluster):
    """Model(graph, frac_bits=12): weights, input and every protocol at F = 12, costs planned at 12."""
    rng = np.random.default_rng(13)
    graph = dag_cnn(rng)
    x = rng.uniform(-1, 1, (2, *graph.input_shape))
    model = Model(graph, frac_bits=12)
    shared = model.share(cluster)
    assert shared.frac_bits == 12 != cluster.frac_bits
    cluster.reset_stats()
    probs = shared.predict(x)
    # The nonlinearities' bounds scale with 2^-F: 16 times those at F = 16.
    np.testing.assert_allclose(probs, run_fixed_point(graph, x, 12), atol=3e-2)
    np.testing.assert_allclose(probs, model.predict_fixed_point(x), atol=3e-2)
    assert [(p["name"], p["rounds"], p["bytes_sent"]) for p in shared.profile] == \
        [(name, c.rounds, c.bytes_sent) for name, c in model.cost(2)]
    shared.stop()


def test_masked_input_through_a_flatten(cluster):
    """A model starting with flatten -> dense takes a masked input on prepared material (the mask is flat)."""
    rng = np.random.default_rng(14)
    graph = Graph((4, 4, 1), [Layer("flatten", "f"),
                              Layer("dense", "d", {}, {"kernel": rng.normal(0, 0.3, (16, 3)), "bias": np.zeros(3)})])
    x = rng.uniform(0, 1, (2, 4, 4, 1))
    shared = Model(graph).share(cluster)
    shared.prepare(2)
    cluster.reset_stats()
    np.testing.assert_allclose(shared.predict(x), run_fixed_point(graph, x, F), atol=4 / 2**F)
    assert [p["rounds"] for p in shared.profile if p["name"] == "d"] == [0]  # the dense layer opened nothing
    shared.stop()


def test_segments_put_only_overlapping_branches_in_lockstep():
    """Steps whose rounds overlap another's run in lockstep; the rest one at a time (no scheduling cost)."""
    from pysmpc.graph.plan import _attributed_rounds
    from pysmpc.graph.secure import _segments

    # conv1 (1) -> relu (4) -> conv2 (1); shortcut conv (1) beside them; add (0); relu (4)
    rounds = [1, 4, 1, 1, 0, 4]
    deps = [[], [0], [1], [], [2, 3], [4]]
    assert _segments(rounds, deps) == [[0, 1, 2, 3], [4], [5]]
    # the identity shortcut: nothing overlaps, one step per segment
    assert _segments([1, 4, 1, 0, 4], [[], [0], [1], [2], [3]]) == [[0], [1], [2], [3], [4]]
    # a zero-round branch beside a round-taking one needs no lockstep either
    assert _segments([1, 0, 0], [[], [], [0, 1]]) == [[0], [1], [2]]
    # two parallel relus share their rounds
    segments = _segments([4, 4, 0], [[], [], [0, 1]])
    assert segments == [[0, 1], [2]]
    assert sum(_attributed_rounds([4, 4, 0], [[], [], [0, 1]])) == 4


@pytest.mark.parametrize("prepared", [False, True], ids=["dealt-online", "prepared"])
@pytest.mark.parametrize("make_graph,batch", [(seed_cnn, 2), (other_cnn, 3), (two_branch_graph, 2)])
def test_fss_relu_matches_plaintext_and_the_plan(cluster, make_graph, batch, prepared):
    """relu_protocol="fss": one round per relu (protocols.relu_fss), same answers, traffic as planned."""
    rng = np.random.default_rng(40 + batch)
    graph = make_graph(rng)
    x = rng.uniform(0, 1, (batch, *graph.input_shape))
    shared = Model(graph, relu_protocol="fss").share(cluster)
    assert all(step.get("protocol") == "fss" for step in shared.plan if step["kind"] == "relu")
    logits = predict_as_queried(cluster, shared, x, prepared)
    np.testing.assert_allclose(logits, run_fixed_point(graph, x, F), atol=64 / 2**F)
    planned = shared.cost(batch, prepared=prepared)
    relu_rounds = [c.rounds for name, c in planned if name.startswith(("relu", "r1", "r2", "left_relu"))]
    assert relu_rounds and max(relu_rounds) <= 1
    assert_traffic_is_the_plan(cluster.stats(), shared, planned)
    shared.stop()


def test_shipped_cnn_with_fss_relu_meets_the_round_and_traffic_targets():
    """Issue 16's budget: <= 8 online rounds and <= 250 kB online (P0 + P1) per image; dealer bytes as planned."""
    from pysmpc import load_model
    from pysmpc.models import load_samples, shipped_model_path

    model = load_model(shipped_model_path(), relu_protocol="fss")
    for batch in (1, 3):
        for prepared, budget in ((True, 7), (False, 8)):
            plan = model.cost(batch, prepared=prepared)
            assert sum(c.rounds for _, c in plan) == budget
            assert 2 * sum(c.bytes_sent for _, c in plan) / batch <= 250e3
    images, _ = load_samples()
    bitplane = load_model(shipped_model_path())
    with LocalCluster() as cluster:
        shared = model.share(cluster)
        cluster.reset_stats()
        shared.prepare(3)
        dealer = sum(s["bytes_sent"] for s in cluster.stats()["P2"].values())
        assert dealer == sum(c.dealer_bytes for _, c in model.cost(3, prepared=True))  # input mask included
        cluster.reset_stats()
        logits = shared.predict(images[:3])
        assert [p["rounds"] for p in shared.profile] == [c.rounds for _, c in model.cost(3, prepared=True)]
        np.testing.assert_allclose(logits, bitplane.predict_fixed_point(images[:3]), atol=64 / 2**F)
        shared.stop()



def test_pipeline_parts_split_large_batches_over_a_network_only():
    assert pipeline_parts(1, True) == [1]
    assert pipeline_parts(63, True) == [63]
    assert pipeline_parts(64, True) == [32, 32]
    assert pipeline_parts(100, True) == [34, 33, 33]
    assert pipeline_parts(256, True) == [64, 64, 64, 64]
    assert pipeline_parts(1001, True) == [251, 250, 250, 250]
    assert pipeline_parts(256, False) == [256]  # in-process: nothing to hide behind


@pytest.fixture
def small_parts(monkeypatch):
    """In-process parties pipeline batches of 4 rows or more, in parts of 2 (the workers, the dealer and
    the client share this process's graph.plan and channel class)."""
    monkeypatch.setattr(plan_module, "PIPELINE_MIN_ROWS", 2)
    monkeypatch.setattr(LocalChannel, "pipelines_batches", True)


@pytest.mark.parametrize("prepared", [False, True], ids=["dealt-online", "prepared"])
@pytest.mark.parametrize("make_graph,batch,relu_protocol,atol", [
    (seed_cnn, 5, "bitplane", 64 / 2**F), (other_cnn, 4, "fss", 64 / 2**F),
    (dag_cnn, 4, "bitplane", 2e-3), (two_branch_graph, 5, "fss", 64 / 2**F)])
def test_a_batch_in_pipelined_halves_matches_plaintext_and_the_plan(cluster, small_parts, make_graph, batch,
                                                                    relu_protocol, atol, prepared):
    """Two halves, each with its own material (and input mask), pipelined: same answers, planned traffic."""
    assert len(pipeline_parts(batch, True)) == 2
    rng = np.random.default_rng(60 + batch)
    graph = make_graph(rng)
    x = rng.uniform(0, 1, (batch, *graph.input_shape))
    shared = Model(graph, relu_protocol=relu_protocol).share(cluster)
    out = predict_as_queried(cluster, shared, x, prepared)
    np.testing.assert_allclose(out, run_fixed_point(graph, x, F), atol=atol)
    planned = shared.cost(batch, prepared=prepared)
    one_row = shared.cost(1, prepared=prepared)  # a batch of one runs whole
    assert sum(c.rounds for _, c in planned) == sum(c.rounds for _, c in one_row)  # the halves share their rounds
    stats = cluster.stats()
    assert_traffic_is_the_plan(stats, shared, planned)
    online = [s for t, s in stats["P0"].items() if not t.startswith(("dealer", "setup")) and t not in ("input", "output")]
    assert sum(s["messages_received"] for s in online) == 2 * sum(s["rounds"] for s in online)  # each half its own
    shared.stop()
