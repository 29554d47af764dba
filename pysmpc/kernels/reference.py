"""Plain reference twins of the native kernels, for tests.

Each function computes what its kernel computes, as simply as possible and
independently of it: the ring twins below work on object arrays of Python
integers reduced mod 2^64, so they cannot share a wrap-around bug with the
C code.  Slow; use small inputs.  Inputs and outputs are numpy.uint64 arrays.
"""

from __future__ import annotations

import math

import numpy as np

MOD = 1 << 64
HALF = 1 << 63


def _ints(a) -> np.ndarray:
    """numpy.uint64 array -> object array of Python ints."""
    return np.asarray(a, dtype=np.uint64).astype(object)


def _u64(o) -> np.ndarray:
    """Object array of Python ints -> numpy.uint64 array, reduced mod 2^64."""
    o = np.asarray(o, dtype=object)
    flat = [int(v) % MOD for v in o.reshape(-1)]
    return np.array(flat, dtype=np.uint64).reshape(o.shape)


def _signed(o: np.ndarray) -> np.ndarray:
    """Read ring elements as two's-complement int64 values (Python ints)."""
    return np.where(o >= HALF, o - MOD, o)


# ---- twins of pysmpc.ring / csrc (ring.c, gemm.c, conv.c) -------------------


def ring_add(a, b) -> np.ndarray:
    """a + b mod 2^64; b an array or an integer."""
    return _u64(_ints(a) + (_ints(b) if isinstance(b, np.ndarray) else int(b)))


def ring_sub(a, b) -> np.ndarray:
    """a - b mod 2^64; b an array or an integer."""
    return _u64(_ints(a) - (_ints(b) if isinstance(b, np.ndarray) else int(b)))


def ring_mul(a, b) -> np.ndarray:
    """a * b mod 2^64 elementwise; b an array or an integer."""
    return _u64(_ints(a) * (_ints(b) if isinstance(b, np.ndarray) else int(b)))


def ring_neg(a) -> np.ndarray:
    """-a mod 2^64."""
    return _u64(-_ints(a))


def ring_rshift_arith(a, shift: int) -> np.ndarray:
    """floor(signed(a) / 2^shift) mod 2^64 (Python's >> floors)."""
    return _u64(_signed(_ints(a)) >> shift)


def ring_rshift_logical(a, shift: int) -> np.ndarray:
    """a >> shift on the unsigned value."""
    return _u64(_ints(a) >> shift)


def ring_matmul(a, b) -> np.ndarray:
    """a @ b mod 2^64, a (m, k) and b (k, n), by the textbook triple sum."""
    oa, ob = _ints(a), _ints(b)
    m, k = oa.shape
    n = ob.shape[1]
    out = np.zeros((m, n), dtype=object)
    for p in range(k):
        out += np.multiply.outer(oa[:, p], ob[p, :])
    return _u64(out)


def conv_padding(in_hw, k_hw, stride, padding: str):
    """(oh, ow, pad_top, pad_left) by Keras / TensorFlow's rules."""
    (h, w), (kh, kw), (sh, sw) = in_hw, k_hw, stride
    if padding == "valid":
        return (h - kh) // sh + 1, (w - kw) // sw + 1, 0, 0
    oh, ow = math.ceil(h / sh), math.ceil(w / sw)
    ph = max((oh - 1) * sh + kh - h, 0)
    pw = max((ow - 1) * sw + kw - w, 0)
    return oh, ow, ph // 2, pw // 2


def ring_im2col(x, kh: int, kw: int, stride=(1, 1), padding: str = "valid") -> np.ndarray:
    """Patch matrix (N*OH*OW, KH*KW*C), element by element."""
    n, h, w, c = x.shape
    sh, sw = stride
    oh, ow, pt, pl = conv_padding((h, w), (kh, kw), (sh, sw), padding)
    out = np.zeros((n * oh * ow, kh * kw * c), dtype=np.uint64)
    for b in range(n):
        for y in range(oh):
            for xo in range(ow):
                row = (b * oh + y) * ow + xo
                for i in range(kh):
                    for j in range(kw):
                        yy, xx = y * sh + i - pt, xo * sw + j - pl
                        if 0 <= yy < h and 0 <= xx < w:
                            out[row, (i * kw + j) * c : (i * kw + j + 1) * c] = x[b, yy, xx]
    return out


def ring_conv2d(x, w, stride=(1, 1), padding: str = "valid") -> np.ndarray:
    """NHWC x HWIO -> NHWC convolution mod 2^64 as a direct sum over taps."""
    n, h, wd, c = x.shape
    kh, kw, _, o = w.shape
    sh, sw = stride
    oh, ow, pt, pl = conv_padding((h, wd), (kh, kw), (sh, sw), padding)
    # Zero-pad generously; only taps inside [pt, pt + h) x [pl, pl + wd) are nonzero.
    xp = np.zeros((n, pt + h + kh + sh * oh, pl + wd + kw + sw * ow, c), dtype=object)
    xp[:, pt : pt + h, pl : pl + wd, :] = _ints(x)
    ow_ints = _ints(w)
    out = np.zeros((n, oh, ow, o), dtype=object)
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, i : i + sh * (oh - 1) + 1 : sh, j : j + sw * (ow - 1) + 1 : sw, :]
            for ch in range(c):
                out += np.multiply.outer(patch[..., ch], ow_ints[i, j, ch, :])
    return _u64(out)
