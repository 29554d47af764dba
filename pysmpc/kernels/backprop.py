"""Ring (mod 2^64) twins of the plaintext backward pass: bilinear maps of two operands.

Each function is bilinear in its two array arguments (or linear in one), so
it can be the `product` of a Beaver triple: the dealer applies it to masks,
the parties to openings and shares. Inputs are uint64 NHWC tensors and HWIO
kernels; arithmetic wraps mod 2^64 (numpy uint64 and the C GEMM), so the
results are exact ring values. No function draws randomness or keeps state.
The float versions are in `pysmpc.graph.backward`.
"""

from __future__ import annotations

import numpy as np

from pysmpc import ring

__all__ = ["pad_nhwc", "conv2d_forward", "conv2d_weight_grad", "conv2d_input_grad", "upsample_windows",
           "conv2d_forward_pooled", "conv2d_weight_grad_pooled", "conv2d_input_grad_pooled", "dense_weight_grad", "dense_input_grad"]

_U64 = np.uint64


def pad_nhwc(x: np.ndarray, pads) -> np.ndarray:
    """Zero-pad H and W by (top, bottom, left, right); x itself when no padding."""
    top, bottom, left, right = pads
    if not any(pads):
        return x
    return np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))


def conv2d_forward(x: np.ndarray, w: np.ndarray, stride, pads) -> np.ndarray:
    """conv(pad(x), w) for explicit pads: (N, OH, OW, O)."""
    return ring.conv2d(pad_nhwc(x, pads), w, stride, "valid")


def conv2d_weight_grad(x: np.ndarray, dy: np.ndarray, kernel_shape, stride, pads) -> np.ndarray:
    """dW = im2col(pad(x))^T @ dy: the kernel gradient (KH, KW, C, O), summed over the batch."""
    kh, kw, cin, cout = kernel_shape
    cols = ring.im2col(pad_nhwc(x, pads), kh, kw, stride, "valid")
    return _transposed_product(cols, dy.reshape(-1, cout)).reshape(kh, kw, cin, cout)


def _transposed_product(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a^T @ b for tall a (m, k) and b (m, n): the GEMM reads rows, so copy the narrower operand transposed."""
    if a.shape[1] <= b.shape[1]:
        return ring.matmul(np.ascontiguousarray(a.T), b)
    return np.ascontiguousarray(ring.matmul(np.ascontiguousarray(b.T), a).T)


def conv2d_input_grad(dy: np.ndarray, w: np.ndarray, x_shape, stride, pads) -> np.ndarray:
    """dX: dy @ W^T scattered back onto the (padded) input windows, then cropped to x_shape."""
    top, bottom, left, right = pads
    padded_hw = (x_shape[1] + top + bottom, x_shape[2] + left + right)
    return _crop(_scatter_windows(dy, w, padded_hw, ring.int_pair("stride", stride)), pads)


def _scatter_windows(dy: np.ndarray, w: np.ndarray, out_hw, step) -> np.ndarray:
    """Form dy @ W^T once per output position and add each window's columns onto an (N, *out_hw, C) grid
    at `step`: the adjoint of im2col."""
    kh, kw, cin, cout = w.shape
    n, oh, ow, _ = dy.shape
    sh, sw = step
    dcols = ring.matmul(dy.reshape(-1, cout), np.ascontiguousarray(w.reshape(-1, cout).T))
    dcols = dcols.reshape(n, oh, ow, kh, kw, cin)
    out = np.zeros((n, out_hw[0], out_hw[1], cin), _U64)
    for i in range(kh):
        for j in range(kw):
            out[:, i : i + sh * (oh - 1) + 1 : sh, j : j + sw * (ow - 1) + 1 : sw, :] += dcols[:, :, :, i, j, :]
    return out


def _crop(dx: np.ndarray, pads) -> np.ndarray:
    """dx without the rows and columns that `pads` (top, bottom, left, right) added."""
    if not any(pads):
        return dx
    top, bottom, left, right = pads
    return np.ascontiguousarray(dx[:, top : dx.shape[1] - bottom, left : dx.shape[2] - right, :])


def upsample_windows(dy: np.ndarray, pool, stride, in_hw) -> np.ndarray:
    """Copy each pooled gradient onto its window (sum where windows overlap): linear in dy.

    The adjoint of 'valid' sum pooling; positions no window covers get 0.
    Average pooling's 1/k^2 is left to the caller (a truncation).
    """
    ph, pw = pool
    sh, sw = stride
    n, oh, ow, c = dy.shape
    dx = np.zeros((n, in_hw[0], in_hw[1], c), _U64)
    overlap = sh < ph or sw < pw
    for i in range(ph):
        for j in range(pw):
            window = dx[:, i : i + sh * (oh - 1) + 1 : sh, j : j + sw * (ow - 1) + 1 : sw, :]
            if overlap:
                window += dy
            else:  # each position in at most one window: a copy, no addition
                window[...] = dy
    return dx


def _pooled_geometry(kernel_hw, stride, pool, pool_stride, pooled_hw):
    """(step, span): the pooled grid's step on the padded input and the height/width of the window sums read."""
    sh, sw = ring.int_pair("stride", stride)
    (ph, pw), (qh, qw) = pool, pool_stride
    step = (sh * qh, sw * qw)
    span = (step[0] * (pooled_hw[0] - 1) + kernel_hw[0], step[1] * (pooled_hw[1] - 1) + kernel_hw[1])
    return (sh, sw), (ph, pw), step, span


def _window_sums(x, stride, pads, pool, span):
    """s[h, w] = sum_{di, dj} pad(x)[h + sh*di, w + sw*dj] over a pool window of conv outputs, cropped to span."""
    sh, sw = stride
    (ph, pw), (hs, ws) = pool, span
    xp = pad_nhwc(x, pads)
    sums = np.zeros((x.shape[0], hs, ws, x.shape[3]), _U64)
    for di in range(ph):
        for dj in range(pw):
            sums += xp[:, sh * di : sh * di + hs, sw * dj : sw * dj + ws, :]
    return sums


def conv2d_forward_pooled(x: np.ndarray, w: np.ndarray, stride, pads, pool, pool_stride, pooled_hw) -> np.ndarray:
    """sum_pool(conv(pad(x), w)) over 'valid' pool windows: (N, PH, PW, O) = pooled_hw.

    Each pooled output is w applied to the sum of the inputs under its
    windows, so this is a convolution of the window sums (see
    conv2d_weight_grad_pooled) at the pooled grid's step: ph*pw times fewer
    multiply-adds than convolving then pooling, the same ring value.
    """
    kh, kw = w.shape[:2]
    sc, pool, step, span = _pooled_geometry((kh, kw), stride, pool, pool_stride, pooled_hw)
    return ring.conv2d(_window_sums(x, sc, pads, pool, span), w, step, "valid")


def conv2d_weight_grad_pooled(x: np.ndarray, g: np.ndarray, kernel_shape, stride, pads, pool,
                              pool_stride) -> np.ndarray:
    """conv2d_weight_grad(x, upsample_windows(g, pool, pool_stride, ...)) for a gradient g of a sum pool's output.

    Every pooled value multiplies the sum of the conv windows it was pooled
    from, so the product contracts g (N, PH, PW, O) with im2col of the
    window sums s[h, w] = sum_{di, dj} pad(x)[h + sh*di, w + sw*dj] taken at
    the pooled grid's step: ph*pw times fewer multiply-adds than on the
    upsampled gradient, and the same ring value (sums reordered mod 2^64).
    """
    kh, kw, cin, cout = kernel_shape
    n, oh, ow, _ = g.shape
    sc, pool, step, span = _pooled_geometry((kh, kw), stride, pool, pool_stride, (oh, ow))
    cols = ring.im2col(_window_sums(x, sc, pads, pool, span), kh, kw, step, "valid")
    return _transposed_product(cols, g.reshape(-1, cout)).reshape(kh, kw, cin, cout)


def conv2d_input_grad_pooled(g: np.ndarray, w: np.ndarray, x_shape, stride, pads, pool, pool_stride) -> np.ndarray:
    """conv2d_input_grad(upsample_windows(g, pool, pool_stride, ...), w) for a gradient g of a sum pool's output.

    The upsampled rows are copies of g's rows, so g @ W^T is formed once per
    pooled position (ph*pw times fewer multiply-adds), scattered onto the
    window sums' grid, then spread over each pool window (the adjoint of
    the window sum in conv2d_weight_grad_pooled): the same ring value.
    """
    kh, kw, cin, _ = w.shape
    n, oh, ow, _ = g.shape
    (sh, sw), (ph, pw), step, (hs, ws) = _pooled_geometry((kh, kw), stride, pool, pool_stride, (oh, ow))
    top, bottom, left, right = pads
    hp, wp = x_shape[1] + top + bottom, x_shape[2] + left + right
    sums = _scatter_windows(g, w, (hs, ws), step)
    dx = np.zeros((n, hp, wp, cin), _U64)
    for di in range(ph):
        for dj in range(pw):
            dx[:, sh * di : sh * di + hs, sw * dj : sw * dj + ws, :] += sums
    return _crop(dx, pads)


def dense_weight_grad(x: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """dW = x^T @ dy (in, out), summed over the batch."""
    return _transposed_product(x, dy)


def dense_input_grad(dy: np.ndarray, w: np.ndarray) -> np.ndarray:
    """dX = dy @ W^T."""
    return ring.matmul(dy, np.ascontiguousarray(w.T))
