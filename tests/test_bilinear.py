"""Beaver products of operands masked once (protocols.bilinear) against the ring products, with cost."""

import numpy as np
import pytest

from helpers import assert_cost, run_shared
from pysmpc import ring
from pysmpc.kernels import backprop
from pysmpc.protocols import bilinear
from pysmpc.protocols.cost import Cost

RNG = np.random.default_rng(3)


def _rand(shape):
    return RNG.integers(0, 2**64, size=shape, dtype=np.uint64)


def _program(maps):
    """Mask x, w, g once (1 round), then every product of `maps` from the openings (no round)."""
    def program(party, x, w, g):
        mx, mw, mg = bilinear.mask_and_open(party, [x, w, g], [("t", 0), ("t", 1), ("t", 2)])
        masked = {"x": mx, "w": mw, "g": mg}
        out = [bilinear.product(party, masked[a], masked[b], fn, shape, tag=f"p{k}")
               for k, (a, b, fn, shape) in enumerate(maps)]
        bilinear.forget(party, [mx, mw, mg])
        return out
    return program


@pytest.mark.parametrize("stride,pads", [(1, (0, 0, 0, 0)), (2, (1, 1, 1, 1)), ((1, 2), (0, 1, 2, 0))])
def test_conv_forward_and_both_gradients_from_one_opening_each(stride, pads):
    x, w = _rand((2, 7, 6, 3)), _rand((3, 3, 3, 4))
    y_shape = backprop.conv2d_forward(x, w, stride, pads).shape
    g = _rand(y_shape)
    maps = [("x", "w", lambda a, b: backprop.conv2d_forward(a, b, stride, pads), y_shape),
            ("x", "g", lambda a, b: backprop.conv2d_weight_grad(a, b, w.shape, stride, pads), w.shape),
            ("g", "w", lambda a, b: backprop.conv2d_input_grad(a, b, x.shape, stride, pads), x.shape)]
    (y, dw, dx), parties = run_shared(_program(maps), x, w, g, record=True)
    np.testing.assert_array_equal(y, backprop.conv2d_forward(x, w, stride, pads))
    np.testing.assert_array_equal(dw, backprop.conv2d_weight_grad(x, g, w.shape, stride, pads))
    np.testing.assert_array_equal(dx, backprop.conv2d_input_grad(g, w, x.shape, stride, pads))
    expected = bilinear.cost_mask([x.shape, w.shape, g.shape])
    for _, _, _, shape in maps:
        expected = expected + bilinear.cost_product(shape)
    assert_cost(parties, expected, f"conv stride {stride} pads {pads}")
    assert not parties[2].store, "P2 kept masks after forget"


def test_dense_products_and_cost():
    x, w, g = _rand((5, 7)), _rand((7, 3)), _rand((5, 3))
    maps = [("x", "w", ring.matmul, (5, 3)), ("x", "g", backprop.dense_weight_grad, (7, 3)),
            ("g", "w", backprop.dense_input_grad, (5, 7))]
    (y, dw, dx), parties = run_shared(_program(maps), x, w, g, record=True)
    np.testing.assert_array_equal(y, ring.matmul(x, w))
    np.testing.assert_array_equal(dw, ring.matmul(np.ascontiguousarray(x.T), g))
    np.testing.assert_array_equal(dx, ring.matmul(g, np.ascontiguousarray(w.T)))
    assert_cost(parties, Cost(1, 8 * (35 + 21 + 15), 8 * (15 + 21 + 35)))


def test_backprop_kernels_match_float_reference():
    """The ring maps are graph.backward's float maps on small integers (exact in both)."""
    from pysmpc.graph import backward as plain

    xi = RNG.integers(-4, 5, size=(2, 9, 8, 2))
    wi = RNG.integers(-4, 5, size=(3, 3, 2, 3))
    pads, stride = (1, 0, 2, 1), (2, 1)
    y, cache = plain.conv2d_forward(xi.astype(float), wi.astype(float), np.zeros(3), stride, pads)
    gi = RNG.integers(-4, 5, size=y.shape)
    dx, grads = plain.conv2d_backward(cache, gi.astype(float), wi.astype(float))
    u = lambda a: a.astype(np.int64).view(np.uint64)  # noqa: E731
    s = lambda a: a.view(np.int64)  # noqa: E731
    np.testing.assert_array_equal(s(backprop.conv2d_forward(u(xi), u(wi), stride, pads)), y)
    np.testing.assert_array_equal(s(backprop.conv2d_weight_grad(u(xi), u(gi), wi.shape, stride, pads)),
                                  grads["kernel"])
    np.testing.assert_array_equal(s(backprop.conv2d_input_grad(u(gi), u(wi), xi.shape, stride, pads)), dx)
    # Average-pool adjoint: the float backward times the window size.
    pooled = RNG.integers(-4, 5, size=(2, 4, 4, 3))
    up = plain.avg_pool2d_backward(((2, 9, 8, 3), (2, 2), (2, 2)), pooled.astype(float)) * 4
    np.testing.assert_array_equal(s(backprop.upsample_windows(u(pooled), (2, 2), (2, 2), (9, 8))), up)


def test_mismatched_keys_are_refused():
    with pytest.raises(ValueError, match="2 tensors but 1 keys"):
        run_shared(lambda p, x, y: bilinear.mask_and_open(p, [x, y], [("k", 0)]), _rand((2,)), _rand((2,)))


def test_stacked_products_equal_two_products():
    """stack_axes: one pass over (d | [a]) and ([y] | e) gives the same shares' sum as two products."""
    x, w = _rand((3, 6, 6, 2)), _rand((3, 3, 2, 5))
    fn = lambda a, b: backprop.conv2d_forward(a, b, 1, (1, 1, 1, 1))  # noqa: E731
    shape = fn(x, w).shape

    def program(party, xs, ws):
        mx, mw = bilinear.mask_and_open(party, [xs, ws], [("s", 0), ("s", 1)])
        out = bilinear.product(party, mx, mw, fn, shape, stack_axes=(3, 2))
        bilinear.forget(party, [mx, mw])
        return out

    z, _ = run_shared(program, x, w)
    np.testing.assert_array_equal(z, fn(x, w))


@pytest.mark.parametrize("x_hw, kernel, stride, pads, pool, pool_stride", [
    ((28, 28), (3, 3), (1, 1), (0, 0, 0, 0), (2, 2), (2, 2)),  # the seed CNN's first layer
    ((11, 12), (3, 3), (2, 2), (1, 1, 0, 1), (2, 2), (2, 2)),  # strided, padded, windows leave a row out
    ((12, 12), (3, 3), (1, 1), (0, 0, 0, 0), (3, 3), (1, 1)),  # overlapping windows
    ((14, 13), (2, 3), (2, 1), (1, 0, 1, 0), (2, 3), (1, 2)),
])
def test_pooled_gradients_equal_upsampled(x_hw, kernel, stride, pads, pool, pool_stride):
    """The pooled maps give the same ring values as upsampling g first (backward) or summing the conv's output
    (forward), and leave their inputs alone."""
    cin, cout = 3, 4
    x, w = _rand((2,) + x_hw + (cin,)), _rand(kernel + (cin, cout))
    oh = (x_hw[0] + pads[0] + pads[1] - kernel[0]) // stride[0] + 1
    ow = (x_hw[1] + pads[2] + pads[3] - kernel[1]) // stride[1] + 1
    g = _rand((2, (oh - pool[0]) // pool_stride[0] + 1, (ow - pool[1]) // pool_stride[1] + 1, cout))
    before = [a.copy() for a in (x, w, g)]
    up = backprop.upsample_windows(g, pool, pool_stride, (oh, ow))
    np.testing.assert_array_equal(
        backprop.conv2d_weight_grad_pooled(x, g, w.shape, stride, pads, pool, pool_stride),
        backprop.conv2d_weight_grad(x, up, w.shape, stride, pads), err_msg=f"x {x.shape} g {g.shape}")
    np.testing.assert_array_equal(
        backprop.conv2d_input_grad_pooled(g, w, x.shape, stride, pads, pool, pool_stride),
        backprop.conv2d_input_grad(up, w, x.shape, stride, pads), err_msg=f"x {x.shape} g {g.shape}")
    y = backprop.conv2d_forward(x, w, stride, pads)
    ph, pw = g.shape[1:3]
    pooled = sum(y[:, i : i + pool_stride[0] * (ph - 1) + 1 : pool_stride[0],
                   j : j + pool_stride[1] * (pw - 1) + 1 : pool_stride[1]]
                 for i in range(pool[0]) for j in range(pool[1]))
    np.testing.assert_array_equal(backprop.conv2d_forward_pooled(x, w, stride, pads, pool, pool_stride, (ph, pw)),
                                  pooled, err_msg=f"x {x.shape} pooled {pooled.shape}")
    for a, b in zip((x, w, g), before):
        np.testing.assert_array_equal(a, b)
