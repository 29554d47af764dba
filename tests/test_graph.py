"""Graph: shape inference, summary, validation errors; plaintext executors on hand-made graphs."""

from __future__ import annotations

import numpy as np
import pytest

from pysmpc.graph import (Graph, GraphError, Layer, conv_padding, fixed_point_trace, fold_batch_norms, run_fixed_point,
                          run_float)


def conv(name, kh, kw, cin, cout, seed=0, **params):
    rng = np.random.default_rng(seed)
    return Layer("conv2d", name, params, {"kernel": rng.normal(0, 0.3, (kh, kw, cin, cout)),
                                          "bias": rng.normal(0, 0.1, cout)})


def dense(name, n_in, n_out, seed=0):
    rng = np.random.default_rng(seed)
    return Layer("dense", name, {}, {"kernel": rng.normal(0, 0.3, (n_in, n_out)), "bias": rng.normal(0, 0.1, n_out)})


def mnist_like() -> Graph:
    """The user's MNIST CNN architecture with random weights."""
    return Graph((28, 28, 1), [
        conv("conv1", 3, 3, 1, 16, 1), Layer("avg_pool2d", "pool1", {"pool": 2}), Layer("relu", "relu1"),
        conv("conv2", 3, 3, 16, 32, 2), Layer("avg_pool2d", "pool2", {"pool": 2}), Layer("relu", "relu2"),
        conv("conv3", 3, 3, 32, 64, 3), Layer("avg_pool2d", "pool3", {"pool": 2}), Layer("relu", "relu3"),
        Layer("flatten", "flatten"), dense("logits", 64, 10, 4),
    ], source="test")


def test_mnist_shapes_and_params():
    g = mnist_like()
    assert g.shapes() == [(28, 28, 1), (26, 26, 16), (13, 13, 16), (13, 13, 16), (11, 11, 32), (5, 5, 32),
                          (5, 5, 32), (3, 3, 64), (1, 1, 64), (1, 1, 64), (64,), (10,)]
    assert g.output_shape() == (10,)
    assert g.param_count() == 160 + 4640 + 18496 + 650


def test_summary_lists_layers_shapes_and_counts():
    text = mnist_like().summary()
    for needle in ("conv1", "avg_pool2d", "(26, 26, 16)", "(10,)", "18496", "Total params: 23946"):
        assert needle in text, f"{needle!r} missing from summary:\n{text}"


def test_same_padding_and_stride_follow_tensorflow():
    layer = conv("c", 3, 3, 1, 2, stride=2, padding="same")
    assert conv_padding(layer, (8, 8, 1)) == (0, 1, 0, 1)
    assert conv_padding(layer, (7, 7, 1)) == (1, 1, 1, 1)
    assert layer.output_shape((8, 8, 1)) == (4, 4, 2)
    assert layer.output_shape((7, 7, 1)) == (4, 4, 2)
    explicit = conv("e", 3, 3, 1, 2, stride=2, padding=(1, 1, 1, 1))
    assert explicit.output_shape((8, 8, 1)) == (4, 4, 2)


def test_pool_with_stride_and_non_square_window():
    layer = Layer("max_pool2d", "p", {"pool": (3, 2), "stride": (1, 2)})
    assert layer.output_shape((5, 6, 3)) == (3, 3, 3)


@pytest.mark.parametrize("build, message", [
    (lambda: Layer("gelu", "g"), "unknown kind 'gelu'"),
    (lambda: Layer("conv2d", "c", {}, {"kernel": np.zeros((3, 3, 1, 2))}), "expected weights"),
    (lambda: Layer("conv2d", "c", {}, {"kernel": np.zeros((3, 3, 2)), "bias": np.zeros(2)}), "kernel must be"),
    (lambda: Layer("dense", "d", {}, {"kernel": np.zeros((4, 3)), "bias": np.zeros(4)}), "bias (out,)"),
    (lambda: Layer("avg_pool2d", "p", {}), "missing param 'pool'"),
    (lambda: Layer("avg_pool2d", "p", {"pool": 2, "padding": "full"}), "padding must be"),
    (lambda: conv("c", 3, 3, 1, 2, padding="full"), "padding must be"),
    (lambda: Layer("dense", "d", {}, {"kernel": np.full((2, 2), np.nan), "bias": np.zeros(2)}), "NaN"),
    (lambda: Graph((28, 28, 1), [conv("c", 3, 3, 3, 4)]), "expects 3 input channels, got 1"),
    (lambda: Graph((28, 28, 1), [conv("c", 3, 3, 1, 4), dense("d", 10, 2)]), "add a flatten layer"),
    (lambda: Graph((4, 4, 1), [conv("c", 5, 5, 1, 4)]), "larger than the (padded) input"),
    (lambda: Graph((4, 4, 1), [Layer("relu", "r"), Layer("relu", "r")]), "duplicate layer name 'r'"),
    (lambda: Graph((4, 4, 1), []), "no layers"),
    (lambda: Graph((0, 4, 1), [Layer("relu", "r")]), "positive sizes"),
])
def test_validation_errors(build, message):
    with pytest.raises(GraphError, match=None) as info:
        build()
    assert message in str(info.value), str(info.value)


def test_error_names_the_layer_index():
    with pytest.raises(GraphError, match=r"layer 1: layer 'd' \(dense\)"):
        Graph((8,), [Layer("relu", "r"), dense("d", 9, 2)])


def naive_conv(x, kernel, bias, stride, pads):
    t, b, l, r = pads
    x = np.pad(x, ((0, 0), (t, b), (l, r), (0, 0)))
    kh, kw, _, cout = kernel.shape
    oh, ow = (x.shape[1] - kh) // stride[0] + 1, (x.shape[2] - kw) // stride[1] + 1
    out = np.zeros((x.shape[0], oh, ow, cout))
    for i in range(oh):
        for j in range(ow):
            patch = x[:, i * stride[0]: i * stride[0] + kh, j * stride[1]: j * stride[1] + kw, :]
            out[:, i, j, :] = np.tensordot(patch, kernel, axes=([1, 2, 3], [0, 1, 2]))
    return out + bias


@pytest.mark.parametrize("stride, padding", [((1, 1), "valid"), ((2, 2), "same"), ((2, 1), "same"),
                                             ((1, 2), (1, 0, 2, 1))])
def test_run_float_conv_matches_naive(stride, padding):
    layer = conv("c", 3, 2, 3, 4, seed=5, stride=stride, padding=padding)
    g = Graph((7, 6, 3), [layer])
    x = np.random.default_rng(0).normal(size=(3, 7, 6, 3))
    want = naive_conv(x, layer.weights["kernel"], layer.weights["bias"], stride, conv_padding(layer, (7, 6, 3)))
    np.testing.assert_allclose(run_float(g, x), want, atol=1e-12)


def test_run_float_pools_flatten_and_unbatched_input():
    g = Graph((4, 4, 2), [Layer("max_pool2d", "m", {"pool": 2}), Layer("flatten", "f")])
    x = np.arange(32, dtype=float).reshape(4, 4, 2)
    want = x.reshape(2, 2, 2, 2, 2).max(axis=(1, 3)).reshape(-1)
    np.testing.assert_array_equal(run_float(g, x), want)
    g = Graph((4, 4, 2), [Layer("avg_pool2d", "a", {"pool": 2})])
    np.testing.assert_allclose(run_float(g, x[None])[0], x.reshape(2, 2, 2, 2, 2).mean(axis=(1, 3)))


def test_run_float_rejects_wrong_input_shape():
    with pytest.raises(ValueError, match=r"input shape \(5, 5\) does not match"):
        run_float(mnist_like(), np.zeros((5, 5)))


def test_run_float_batch_size_does_not_change_results():
    g, x = mnist_like(), np.random.default_rng(1).random((7, 28, 28, 1))
    # BLAS may sum in a different order per batch size: float results agree to rounding, fixed point exactly.
    np.testing.assert_allclose(run_float(g, x, batch_size=3), run_float(g, x, batch_size=100), rtol=1e-12)
    np.testing.assert_array_equal(run_fixed_point(g, x, batch_size=2), run_fixed_point(g, x))


def test_fixed_point_close_to_float():
    g, x = mnist_like(), np.random.default_rng(2).random((20, 28, 28, 1))
    diff = np.abs(run_fixed_point(g, x, frac_bits=16) - run_float(g, x)).max()
    assert diff < 1e-2, diff


def test_fixed_point_steps_are_exact_integer_arithmetic():
    """Check each documented step on a tiny graph against hand-computed integers."""
    frac = 4
    kernel = np.array([0.5, -0.25, 1.0, 0.3]).reshape(2, 2, 1, 1)
    g = Graph((3, 3, 1), [
        Layer("conv2d", "c", {}, {"kernel": kernel, "bias": np.array([0.1])}),
        Layer("relu", "r"),
        Layer("avg_pool2d", "p", {"pool": 2}),
    ])
    x = np.array([0.2, 0.7, -0.1, 0.33, 0.5, 0.9, -0.6, 0.05, 0.4]).reshape(1, 3, 3, 1)
    trace = fixed_point_trace(g, x, frac_bits=frac)
    x_int = np.rint(x * 16).astype(np.int64)
    w_int = np.rint(kernel * 16).astype(np.int64)[..., 0, 0]
    bias_int = int(np.rint(0.1 * 16))
    conv_int = np.zeros((2, 2), dtype=np.int64)
    for i in range(2):
        for j in range(2):
            conv_int[i, j] = ((x_int[0, i:i + 2, j:j + 2, 0] * w_int).sum() >> frac) + bias_int
    np.testing.assert_array_equal(trace[0].view(np.int64), x_int)
    np.testing.assert_array_equal(trace[1].view(np.int64)[0, ..., 0], conv_int)
    relu_int = np.maximum(conv_int, 0)
    np.testing.assert_array_equal(trace[2].view(np.int64)[0, ..., 0], relu_int)
    assert trace[3].view(np.int64)[0, 0, 0, 0] == relu_int.sum() >> 2  # 2x2 window: shift by 2
    logits, ring = run_fixed_point(g, x, frac_bits=frac, return_ring=True)
    assert ring.dtype == np.uint64 and logits[0, 0, 0] == (relu_int.sum() >> 2) / 16


def test_fixed_point_avg_pool_non_power_of_two_window():
    frac = 8
    g = Graph((3, 3, 1), [Layer("avg_pool2d", "p", {"pool": 3})])
    x = np.linspace(-1, 1, 9).reshape(1, 3, 3, 1)
    total = int(np.rint(x * 256).astype(np.int64).sum())
    want = (total * round(256 / 9)) >> frac
    assert fixed_point_trace(g, x, frac)[-1].view(np.int64)[0, 0, 0, 0] == want


def test_fixed_point_negative_values_floor_and_wrap():
    """Negative products wrap mod 2^64 and truncation floors (towards -inf)."""
    g = Graph((1,), [Layer("dense", "d", {}, {"kernel": np.array([[-0.75]]), "bias": np.array([0.0])})])
    ring = fixed_point_trace(g, np.array([[0.3125]]), frac_bits=4)[-1]  # 5/16 * -12/16 = -60/256
    assert ring.dtype == np.uint64 and int(ring.view(np.int64)[0, 0]) == -60 >> 4 == -4


def test_fixed_point_max_pool_is_exact():
    g = Graph((2, 2, 1), [Layer("max_pool2d", "m", {"pool": 2})])
    x = np.array([-0.5, -0.25, -1.0, -0.125]).reshape(1, 2, 2, 1)
    assert run_fixed_point(g, x, frac_bits=8)[0, 0, 0, 0] == -0.125


def test_fixed_point_rejects_bad_frac_bits():
    with pytest.raises(ValueError, match="frac_bits"):
        run_fixed_point(mnist_like(), np.zeros((28, 28, 1)), frac_bits=40)


# -- DAGs: named tensors, several inputs, the new layer kinds --------------------------------


def residual_graph(seed=0) -> Graph:
    """conv -> [relu6 -> depthwise -> batch_norm] + skip -> concat with a pooled branch -> head."""
    rng = np.random.default_rng(seed)
    return Graph((8, 8, 3), [
        conv("stem", 3, 3, 3, 4, seed, padding="same"),
        Layer("clip", "stem_relu6", {"lo": 0.0, "hi": 6.0}),
        Layer("depthwise_conv2d", "dw", {"padding": "same"},
              {"kernel": rng.normal(0, 0.3, (3, 3, 4, 1)), "bias": rng.normal(0, 0.1, 4)}),
        Layer("batch_norm", "bn", {}, {"scale": rng.uniform(0.5, 1.5, 4), "shift": rng.normal(0, 0.1, 4)}),
        Layer("add", "residual", inputs=["bn", "stem_relu6"]),
        Layer("max_pool2d", "mp", {"pool": 3, "stride": 2, "padding": "same"}, inputs=["stem"]),
        Layer("avg_pool2d", "ap", {"pool": 3, "stride": 2, "padding": "same"}, inputs=["residual"]),
        Layer("concat", "cat", {"axis": -1}, inputs=["ap", "mp"]),
        Layer("sigmoid", "gate"),
        Layer("global_avg_pool", "gap"),
        dense("head", 8, 5, seed),
        Layer("tanh", "squash"),
        Layer("softmax", "probs"),
    ], source="test")


def test_dag_shapes_summary_and_liveness():
    g = residual_graph()
    shapes = g.tensor_shapes()
    assert shapes["residual"] == (8, 8, 4) and shapes["mp"] == (4, 4, 4) and shapes["cat"] == (4, 4, 8)
    assert g.output_shape() == (5,) and not g.is_sequential() and mnist_like().is_sequential()
    assert g.layers[0].inputs == ["input"] and g.layers[4].inputs == ["bn", "stem_relu6"]
    text = g.summary()
    assert "inputs" in text and "bn, stem_relu6" in text, text
    frees = dict(zip([layer.name for layer in g.layers], g.last_uses()))
    # 'stem' is read by stem_relu6 and mp: freed after mp, its last reader; the output is never freed.
    assert "stem" in frees["mp"] and "stem" not in frees["stem_relu6"]
    assert "stem_relu6" in frees["residual"] and all("probs" not in f for f in frees.values())


@pytest.mark.parametrize("build, message", [
    (lambda: Graph((4,), [Layer("relu", "r", inputs=["nope"])]), "reads 'nope', which is not the input"),
    (lambda: Graph((4,), [Layer("relu", "a", inputs=["b"]), Layer("relu", "b")]), "reads 'b'"),
    (lambda: Graph((4,), [Layer("add", "a", inputs=["input"])]), "two or more inputs"),
    (lambda: Graph((4,), [Layer("relu", "r"), Layer("relu", "s", inputs=["input", "r"])]), "takes one input"),
    (lambda: Graph((4,), [Layer("relu", "r"), Layer("relu", "s", inputs=["input"])]), "never used"),
    (lambda: Graph((4,), [Layer("relu", "input")]), "the graph input's name"),
    (lambda: Graph((4, 4, 2), [Layer("max_pool2d", "m", {"pool": 2}),
                               Layer("add", "a", inputs=["m", "input"])]), "all inputs must have one shape"),
    (lambda: Graph((4, 4, 2), [Layer("max_pool2d", "m", {"pool": 2}),
                               Layer("concat", "c", {"axis": 2}, inputs=["m", "input"])]), "except along axis 2"),
    (lambda: Graph((4, 4, 2), [Layer("batch_norm", "b", {}, {"scale": np.ones(3), "shift": np.ones(3)})]),
     "do not broadcast"),
    (lambda: Graph((4, 4, 2), [Layer("reshape", "r", {"shape": (5, -1)})]), "cannot reshape 32 elements"),
    (lambda: Graph((4, 4, 2), [Layer("transpose", "t", {"perm": (0, 0, 1)})]), "not a permutation"),
    (lambda: Layer("clip", "c", {}), "needs a bound"),
    (lambda: Layer("clip", "c", {"lo": 2, "hi": 1}), "lo 2.0 is above hi 1.0"),
    (lambda: Layer("depthwise_conv2d", "d", {}, {"kernel": np.zeros((3, 3, 2, 2)), "bias": np.zeros(2)}),
     "(cin * multiplier,)"),
])
def test_dag_validation_errors(build, message):
    with pytest.raises(GraphError) as info:
        build()
    assert message in str(info.value), str(info.value)


def test_run_float_new_kinds_match_pytorch():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 7, 6, 4))
    xt = torch.tensor(x.transpose(0, 3, 1, 2))

    def nhwc(t):
        return t.numpy().transpose(0, 2, 3, 1)

    kernel, bias = rng.normal(size=(3, 3, 4, 2)), rng.normal(size=8)
    dw = Layer("depthwise_conv2d", "dw", {"stride": 2, "padding": (1, 1, 1, 1)}, {"kernel": kernel, "bias": bias})
    weight = torch.tensor(kernel.reshape(3, 3, 8).transpose(2, 0, 1)[:, None])  # (C*M, 1, kh, kw)
    want = F.conv2d(xt, weight, torch.tensor(bias), stride=2, padding=1, groups=4)
    np.testing.assert_allclose(run_float(Graph((7, 6, 4), [dw]), x), nhwc(want), atol=1e-12)
    avg = Layer("avg_pool2d", "a", {"pool": 3, "stride": 2, "padding": (1, 1, 1, 1)})
    want = F.avg_pool2d(xt, 3, 2, padding=1, count_include_pad=False)
    np.testing.assert_allclose(run_float(Graph((7, 6, 4), [avg]), x), nhwc(want), atol=1e-12)
    mx = Layer("max_pool2d", "m", {"pool": 3, "stride": 2, "padding": (1, 1, 1, 1)})
    np.testing.assert_allclose(run_float(Graph((7, 6, 4), [mx]), x), nhwc(F.max_pool2d(xt, 3, 2, padding=1)))
    for kind, fn in (("sigmoid", torch.sigmoid), ("tanh", torch.tanh), ("softmax", lambda t: t.softmax(-1))):
        np.testing.assert_allclose(run_float(Graph((7, 6, 4), [Layer(kind, "f")]), x),
                                   fn(torch.tensor(x)).numpy(), atol=1e-12)
    g = Graph((7, 6, 4), [Layer("transpose", "t", {"perm": (2, 0, 1)}), Layer("reshape", "r", {"shape": (4, -1)})])
    np.testing.assert_array_equal(run_float(g, x), x.transpose(0, 3, 1, 2).reshape(2, 4, 42))
    g = Graph((7, 6, 4), [Layer("zero_pad", "z", {"pads": (1, 0, 2, 3)}), Layer("global_max_pool", "g")])
    np.testing.assert_array_equal(run_float(g, x), np.maximum(x.max(axis=(1, 2)), 0))


def test_same_pooling_follows_keras_windows():
    layer = Layer("avg_pool2d", "a", {"pool": 3, "stride": 2, "padding": "same"})
    assert layer.output_shape((8, 7, 1)) == (4, 4, 1)
    g = Graph((8, 7, 1), [layer])
    x = np.ones((1, 8, 7, 1))
    np.testing.assert_array_equal(run_float(g, x), np.ones((1, 4, 4, 1)))  # padding is not averaged in


def test_dag_fixed_point_close_to_float_and_batch_independent():
    g, x = residual_graph(), np.random.default_rng(4).uniform(-1, 1, (6, 8, 8, 3))
    assert np.abs(run_fixed_point(g, x) - run_float(g, x)).max() < 2e-4
    np.testing.assert_array_equal(run_fixed_point(g, x, batch_size=4), run_fixed_point(g, x))
    trace = fixed_point_trace(g, x)
    assert len(trace) == len(g.layers) + 1 and trace[5].shape == (6, 8, 8, 4)


def test_fixed_point_clip_is_exact_and_padded_max_ignores_padding():
    g = Graph((2, 2, 1), [Layer("clip", "c", {"lo": -0.5, "hi": 0.25}),
                          Layer("max_pool2d", "m", {"pool": 3, "padding": "same"})])
    x = np.array([-3.0, -2.0, -1.0, -0.75]).reshape(1, 2, 2, 1)
    trace = fixed_point_trace(g, x, frac_bits=8)
    np.testing.assert_array_equal(trace[1].view(np.int64).ravel(), [-128, -128, -128, -128])
    assert trace[2].view(np.int64).max() == -128  # -0.5, not the padding


def test_fold_batch_norms_keeps_the_function_and_notes_it():
    rng = np.random.default_rng(5)
    g = Graph((6, 6, 2), [
        conv("c", 3, 3, 2, 3, 1, padding="same"),
        Layer("batch_norm", "bn1", {}, {"scale": rng.uniform(0.5, 2, 3), "shift": rng.normal(size=3)}),
        Layer("depthwise_conv2d", "dw", {}, {"kernel": rng.normal(size=(3, 3, 3, 2)), "bias": rng.normal(size=6)}),
        Layer("batch_norm", "bn2", {}, {"scale": rng.uniform(0.5, 2, 6), "shift": rng.normal(size=6)}),
        Layer("relu", "r"),
        Layer("batch_norm", "bn3", {}, {"scale": rng.uniform(0.5, 2, 6), "shift": rng.normal(size=6)}),
    ])
    folded = fold_batch_norms(g)
    assert [layer.kind for layer in folded.layers] == ["conv2d", "depthwise_conv2d", "relu", "batch_norm"]
    assert "batch normalization 'bn2' folded into 'dw'" in folded.notes
    x = rng.normal(size=(2, 6, 6, 2))
    np.testing.assert_allclose(run_float(folded, x), run_float(g, x), atol=1e-12)


def test_batch_norm_before_an_unpadded_product_folds_into_it():
    rng = np.random.default_rng(6)

    def bn(name, n, inputs=None):
        return Layer("batch_norm", name, {}, {"scale": rng.uniform(0.5, 2, n), "shift": rng.normal(size=n)},
                     inputs=inputs)
    g = Graph((6, 6, 2), [
        bn("rescale", 2),
        conv("valid", 3, 3, 2, 3, 1),
        bn("bn_dw", 3),
        Layer("depthwise_conv2d", "dw", {}, {"kernel": rng.normal(size=(2, 2, 3, 2)), "bias": rng.normal(size=6)}),
        Layer("relu", "r"),
        bn("bn_same", 6),
        conv("same", 3, 3, 6, 2, 2, padding="same"),  # padded: the border would hold the shift's image
        Layer("flatten", "f"),
        bn("bn_fc", 18),
        dense("fc", 18, 3),
    ])
    folded = fold_batch_norms(g)
    assert [layer.name for layer in folded.layers if layer.kind == "batch_norm"] == ["bn_same"]
    assert "batch normalization 'rescale' folded into 'valid' (it reads it)" in folded.notes
    x = rng.normal(size=(3, 6, 6, 2))
    np.testing.assert_allclose(run_float(folded, x), run_float(g, x), atol=1e-10)
