"""Arithmetic in the ring Z_(2^64) on numpy.uint64 arrays.

Every function takes numpy.uint64 arrays and returns numpy.uint64 arrays;
results wrap mod 2^64 exactly as the ring does.  Inputs are never modified,
except an array passed as ``out``, which may also be one of the inputs (in
place).  Public scalars are Python ints or numpy integers, reduced mod 2^64
(so ``-1`` means 2^64 - 1).

The work runs in the native kernels of ``pysmpc.kernels._ring`` (C, no GIL):
elementwise ops, a cache-blocked GEMM with a CPU-specific micro-kernel, and
convolution as im2col + GEMM.  Kernels are exact, so results never depend on
the kernel or thread count chosen.
"""

from __future__ import annotations

import math
import numbers
import os

import numpy as np

# The GEMM's OpenMP threads must sleep, not spin, between parallel regions:
# the parties share the host's cores, and a spinning thread of one party
# takes the core its peer needs (batch-1 latency over TCP doubled). Read by
# libgomp when it loads, so set before the kernels import; a value the user
# set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

def _missing_kernels_message(error: ImportError) -> str:
    """Say why pysmpc.kernels._ring did not import, and the command that fixes it.

    The usual cause: Python runs in a source checkout (the REPL, a script or
    `python -m pysmpc` in the repository root), so the uncompiled source tree
    comes first on sys.path and shadows the installed package.
    """
    from importlib import metadata
    from pathlib import Path

    here = Path(__file__).resolve().parent
    installed = None
    try:
        candidate = Path(str(metadata.distribution("pysmpc").locate_file("pysmpc"))).resolve()
        if candidate != here and candidate.is_dir():
            installed = candidate
    except metadata.PackageNotFoundError:
        pass
    message = (f"pysmpc's compiled kernels (pysmpc.kernels._ring) are not built in {here / 'kernels'} "
               f"({type(error).__name__}: {error}). ")
    if installed is not None:
        message += (f"Python found pysmpc in the source tree {here.parent} before the installed copy in "
                    f"{installed.parent}: run Python from another directory, or make a development install "
                    "of this tree, whose imports work from anywhere: pip install -e .")
    else:
        message += ("Install pysmpc: `pip install .` (a C compiler and CMake >= 3.18), a wheel from "
                    ".ci/build_wheel (no compiler), or, in a source checkout, the development install "
                    "`pip install -e .`")
    return message


try:
    from pysmpc.kernels import _ring
except ImportError as exc:  # pragma: no cover - depends on how pysmpc was found
    raise ImportError(_missing_kernels_message(exc)) from exc

__all__ = [
    "add",
    "sub",
    "mul",
    "neg",
    "rshift_arith",
    "rshift_logical",
    "matmul",
    "im2col",
    "depthwise_conv2d",
    "conv2d",
    "conv_output_shape",
    "int_pair",
    "gemm_kernel",
    "set_num_threads",
    "get_num_threads",
]

_MOD = 1 << 64
_U64 = np.dtype(np.uint64)
# im2col workspace per convolution chunk: at most this many rows and bytes.
# 2 MiB stays in cache for the GEMM that reads it right after, and is too
# small for malloc to map fresh (page-faulted, zeroed) memory on every call:
# ResNet-20's batch-64 convolutions took 19-75 MB chunks at 16384 rows, and
# ran 10-30% slower (one core, thread CPU time, a loaded host).
_CONV_CHUNK_ROWS = 16384
_CONV_CHUNK_BYTES = 2 << 20


# ---- validation ------------------------------------------------------------


def _check_array(name: str, a) -> np.ndarray:
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy.uint64 array, got {type(a).__name__}")
    if a.dtype != _U64:
        raise TypeError(f"{name} must have dtype uint64, got {a.dtype}")
    return a


def _is_scalar(b) -> bool:
    return isinstance(b, numbers.Integral) and not isinstance(b, np.ndarray)


def _scalar(name: str, s) -> int:
    if isinstance(s, (bool, np.bool_)) or not isinstance(s, numbers.Integral):
        raise TypeError(f"{name} must be a uint64 array or an integer scalar, got {type(s).__name__}")
    return int(s) % _MOD


def _same_shape(op: str, a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{op}: shape mismatch {a.shape} vs {b.shape}")


def _output(
    op: str, out, shape: tuple, inputs: tuple, in_place: bool = True
) -> tuple[np.ndarray, np.ndarray | None]:
    """Return (buffer the kernel writes, array to copy it into afterwards or None).

    The kernels need a C-contiguous output that is disjoint from their
    inputs or, for elementwise kernels (in_place), exactly one of them;
    anything else is computed into a fresh buffer and copied into ``out``.
    """
    if out is None:
        return np.empty(shape, _U64), None
    _check_array("out", out)
    if out.shape != shape:
        raise ValueError(f"{op}: out has shape {out.shape}, expected {shape}")
    if not out.flags.writeable:
        raise ValueError(f"{op}: out is read-only")
    if out.flags.c_contiguous and all(
        not np.may_share_memory(out, x)
        or (in_place and x.flags.c_contiguous and x.shape == out.shape and x.ctypes.data == out.ctypes.data)
        for x in inputs
    ):
        return out, None
    return np.empty(shape, _U64), out


def _finish(buf: np.ndarray, target: np.ndarray | None) -> np.ndarray:
    if target is None:
        return buf
    target[...] = buf
    return target


def _contiguous(a: np.ndarray) -> np.ndarray:
    # Not np.ascontiguousarray: it turns 0-d arrays into shape (1,).
    return a if a.flags.c_contiguous else a.copy(order="C")


def _flat(a: np.ndarray) -> np.ndarray:
    return a.reshape(-1)


# ---- elementwise -----------------------------------------------------------


def _binary(op: str, kernel, scalar_kernel, a, b, out):
    a = _contiguous(_check_array("a", a))
    if _is_scalar(b):
        s = scalar_kernel[1](_scalar("b", b))
        buf, target = _output(op, out, a.shape, (a,))
        scalar_kernel[0](_flat(buf), _flat(a), s)
        return _finish(buf, target)
    b = _contiguous(_check_array("b", b))
    _same_shape(op, a, b)
    buf, target = _output(op, out, a.shape, (a, b))
    kernel(_flat(buf), _flat(a), _flat(b))
    return _finish(buf, target)


def add(a: np.ndarray, b, out: np.ndarray | None = None) -> np.ndarray:
    """Return a + b mod 2^64; b is a same-shape uint64 array or a public integer."""
    return _binary("add", _ring.add, (_ring.add_scalar, lambda s: s), a, b, out)


def sub(a: np.ndarray, b, out: np.ndarray | None = None) -> np.ndarray:
    """Return a - b mod 2^64; b is a same-shape uint64 array or a public integer."""
    return _binary("sub", _ring.sub, (_ring.add_scalar, lambda s: (_MOD - s) % _MOD), a, b, out)


def mul(a: np.ndarray, b, out: np.ndarray | None = None) -> np.ndarray:
    """Return a * b mod 2^64 elementwise; b is a same-shape uint64 array or a public integer."""
    return _binary("mul", _ring.mul, (_ring.mul_scalar, lambda s: s), a, b, out)


def neg(a: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Return -a mod 2^64."""
    a = _contiguous(_check_array("a", a))
    buf, target = _output("neg", out, a.shape, (a,))
    _ring.neg(_flat(buf), _flat(a))
    return _finish(buf, target)


def _shift(op: str, kernel, a, shift: int, out):
    a = _contiguous(_check_array("a", a))
    if isinstance(shift, (bool, np.bool_)) or not isinstance(shift, numbers.Integral):
        raise TypeError(f"{op}: shift must be an integer, got {type(shift).__name__}")
    if not 0 <= int(shift) <= 63:
        raise ValueError(f"{op}: shift must be in [0, 63], got {shift}")
    buf, target = _output(op, out, a.shape, (a,))
    kernel(_flat(buf), _flat(a), int(shift))
    return _finish(buf, target)


def rshift_arith(a: np.ndarray, shift: int, out: np.ndarray | None = None) -> np.ndarray:
    """Return a >> shift reading a as two's-complement int64 (sign fill).

    This is floor(a / 2^shift) on signed values: the local step of
    fixed-point truncation.
    """
    return _shift("rshift_arith", _ring.rshift_arith, a, shift, out)


def rshift_logical(a: np.ndarray, shift: int, out: np.ndarray | None = None) -> np.ndarray:
    """Return a >> shift reading a as unsigned (zero fill)."""
    return _shift("rshift_logical", _ring.rshift_logical, a, shift, out)


# ---- matrix product --------------------------------------------------------


def _gemm_operand(a: np.ndarray) -> np.ndarray:
    """Return a itself if the kernel can read it in place (unit column stride,
    non-negative row stride), else a C-contiguous copy (O(size), small next
    to the O(m n k) product)."""
    rows, cols = a.shape
    s0, s1 = a.strides
    if (cols <= 1 or s1 == _U64.itemsize) and s0 >= 0 and s0 % _U64.itemsize == 0:
        return a
    return np.ascontiguousarray(a)


def matmul(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Return a @ b mod 2^64 for 2-D a (m, k) and b (k, n).

    Any strides are accepted (transposed or sliced views are copied only if
    their columns are not contiguous).  k = 0 gives zeros.  ``out`` may not
    be a or b; if it overlaps them the product goes through a temporary.
    """
    _check_array("a", a)
    _check_array("b", b)
    if a.ndim != 2 or b.ndim != 2:
        raise ValueError(f"matmul: operands must be 2-D, got shapes {a.shape} and {b.shape}")
    if a.shape[1] != b.shape[0]:
        raise ValueError(f"matmul: inner dimensions differ: {a.shape} @ {b.shape}")
    shape = (a.shape[0], b.shape[1])
    a = _gemm_operand(a)
    b = _gemm_operand(b)
    buf, target = _output("matmul", out, shape, (a, b), in_place=False)
    _ring.gemm(buf, a, b)
    return _finish(buf, target)


# ---- convolution -----------------------------------------------------------


def int_pair(name: str, v) -> tuple[int, int]:
    """(a, b) from an int or a pair of ints, both positive (a stride, a kernel size); a clear error otherwise."""
    if isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_)):
        pair = (int(v), int(v))
    elif isinstance(v, (tuple, list)) and len(v) == 2 and all(
        isinstance(x, numbers.Integral) and not isinstance(x, (bool, np.bool_)) for x in v
    ):
        pair = (int(v[0]), int(v[1]))
    else:
        raise TypeError(f"{name} must be an int or a pair of ints, got {v!r}")
    if pair[0] < 1 or pair[1] < 1:
        raise ValueError(f"{name} must be positive, got {v!r}")
    return pair


def conv_output_shape(in_hw, k_hw, stride=1, padding: str = "valid") -> tuple[int, int, int, int]:
    """Return (oh, ow, pad_top, pad_left) of a 2-D convolution or pooling window.

    "valid": no padding, out = (in - k) // stride + 1.
    "same" (TensorFlow's rule): out = ceil(in / stride),
    pad_total = max((out - 1) * stride + k - in, 0), pad_before = pad_total // 2
    (the extra row / column, if any, goes after).
    """
    if not (
        isinstance(in_hw, (tuple, list))
        and len(in_hw) == 2
        and all(isinstance(v, numbers.Integral) and int(v) >= 0 for v in in_hw)
    ):
        raise TypeError(f"in_hw must be a pair of non-negative ints, got {in_hw!r}")
    h, w = int(in_hw[0]), int(in_hw[1])
    kh, kw = int_pair("k_hw", k_hw)
    sh, sw = int_pair("stride", stride)
    mode = padding.lower() if isinstance(padding, str) else padding
    if mode == "valid":
        if kh > h or kw > w:
            raise ValueError(f"conv: kernel {(kh, kw)} larger than input {(h, w)} with 'valid' padding")
        return (h - kh) // sh + 1, (w - kw) // sw + 1, 0, 0
    if mode == "same":
        oh, ow = math.ceil(h / sh), math.ceil(w / sw)
        pad_h = max((oh - 1) * sh + kh - h, 0)
        pad_w = max((ow - 1) * sw + kw - w, 0)
        return oh, ow, pad_h // 2, pad_w // 2
    raise ValueError(f"padding must be 'valid' or 'same', got {padding!r}")


def _conv_input(x) -> np.ndarray:
    _check_array("x", x)
    if x.ndim != 4:
        raise ValueError(f"conv: x must be NHWC (4-D), got shape {x.shape}")
    return np.ascontiguousarray(x)


def im2col(x: np.ndarray, kh: int, kw: int, stride=1, padding: str = "valid") -> np.ndarray:
    """Return the (N*OH*OW, KH*KW*C) patch matrix of NHWC x.

    Row (n, oh, ow) holds the window x[n, oh*sh - pad_top + i, ow*sw - pad_left + j, c]
    flattened in (i, j, c) order, zeros in the padding: the row order of HWIO
    weights reshaped to (KH*KW*C, O), so conv2d = im2col(x) @ w.reshape(-1, O).
    """
    x = _conv_input(x)
    n, h, w, c = x.shape
    sh, sw = int_pair("stride", stride)
    oh, ow, pt, pl = conv_output_shape((h, w), (kh, kw), (sh, sw), padding)
    out = np.empty((n * oh * ow, kh * kw * c), _U64)
    _ring.im2col(out, x, kh, kw, sh, sw, pt, pl, oh, ow)
    return out


def conv2d(x: np.ndarray, w: np.ndarray, stride=1, padding: str = "valid") -> np.ndarray:
    """Return the 2-D convolution (cross-correlation) of x and w mod 2^64.

    x is NHWC (N, H, W, C), w is HWIO (KH, KW, C, O); the result is NHWC
    (N, OH, OW, O).  stride is an int or (sh, sw); padding is "valid" or
    TensorFlow's "same".  Computed as im2col + GEMM, a chunk of images at a
    time.
    """
    x = _conv_input(x)
    _check_array("w", w)
    if w.ndim != 4:
        raise ValueError(f"conv2d: w must be HWIO (4-D), got shape {w.shape}")
    n, h, wd, c = x.shape
    kh, kw, wc, o = w.shape
    if wc != c:
        raise ValueError(f"conv2d: x has {c} channels {x.shape} but w expects {wc} {w.shape}")
    sh, sw = int_pair("stride", stride)
    oh, ow, pt, pl = conv_output_shape((h, wd), (kh, kw), (sh, sw), padding)
    out = np.empty((n, oh, ow, o), _U64)
    rows = oh * ow
    if out.size == 0:
        return out
    if c == 0:
        out[...] = 0
        return out
    w2 = np.ascontiguousarray(w).reshape(kh * kw * c, o)
    chunk_rows = min(_CONV_CHUNK_ROWS, _CONV_CHUNK_BYTES // (8 * kh * kw * c))
    col_rows = min(n, max(1, chunk_rows // rows)) * rows
    col = np.empty((col_rows, kh * kw * c), _U64)
    _ring.conv2d(out.reshape(n * rows, o), col, x, w2, kh, kw, sh, sw, pt, pl, oh, ow)
    return out


def depthwise_conv2d(x: np.ndarray, w: np.ndarray, stride=1) -> np.ndarray:
    """Return the depthwise convolution of NHWC x with w (KH, KW, C, M) mod 2^64, 'valid' windows.

    Output channel c*M + m is input channel c convolved with w[:, :, c, m]
    (Keras DepthwiseConv2D's order, and ONNX Conv with group = C). Pad x
    first for other paddings. Computed as KH*KW broadcast multiply-adds
    (NumPy's uint64 arithmetic wraps mod 2^64): no GEMM fits a per-channel
    product, and depthwise layers are a small part of a network's work.
    """
    x = _conv_input(x)
    _check_array("w", w)
    if w.ndim != 4 or w.shape[2] != x.shape[3]:
        raise ValueError(f"depthwise_conv2d: w must be (KH, KW, C, M) with C = {x.shape[3]}, got {w.shape}")
    n, h, wd, c = x.shape
    kh, kw, _, m = w.shape
    sh, sw = int_pair("stride", stride)
    oh, ow, _, _ = conv_output_shape((h, wd), (kh, kw), (sh, sw), "valid")
    out = np.zeros((n, oh, ow, c, m), _U64)
    for a in range(kh):
        for b in range(kw):
            tap = x[:, a : a + sh * (oh - 1) + 1 : sh, b : b + sw * (ow - 1) + 1 : sw, :, None]
            out += tap * w[a, b]
    return out.reshape(n, oh, ow, c * m)


# ---- kernel control --------------------------------------------------------


def gemm_kernel() -> str:
    """Return the GEMM micro-kernel in use: "scalar", "avx2" or "avx512".

    Chosen on first use: PYSMPC_GEMM_KERNEL if set and supported, else the
    fastest available here (AVX-512 if present; otherwise a one-time timing
    of the AVX2 and scalar kernels, since AVX2's emulated 64-bit multiply
    loses to scalar imul on some CPUs, AMD Zen1 among them).
    """
    return _ring.gemm_kernel()


def set_num_threads(n: int) -> None:
    """Set the threads used by large matmul / conv2d calls (n <= 0: OpenMP default)."""
    _ring.set_num_threads(int(n))


def get_num_threads() -> int:
    """Return the threads used by large matmul / conv2d calls."""
    return _ring.get_num_threads()
