# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
"""Thin Cython binding of the C ring kernels (csrc/ring.h).

Low level: arguments are typed memoryviews, outputs come first, sizes come
from the views and are checked (a mismatch raises ValueError, never reaches
C).  Every C call runs without the GIL.  Use pysmpc.ring, which validates
dtypes and shapes, allocates outputs and handles views; this module is
private to it and to tests.
"""
from libc.stdint cimport uint64_t

from pysmpc.kernels._ring cimport *


cdef inline void _same_len(Py_ssize_t n_out, Py_ssize_t n_in) except *:
    if n_out != n_in:
        raise ValueError(f"length mismatch: out has {n_out}, input has {n_in}")


def add(uint64_t[::1] out, const uint64_t[::1] a, const uint64_t[::1] b):
    _same_len(out.shape[0], a.shape[0])
    _same_len(out.shape[0], b.shape[0])
    cdef size_t n = out.shape[0]
    if n:
        with nogil:
            smpc_add_u64(&out[0], &a[0], &b[0], n)


def sub(uint64_t[::1] out, const uint64_t[::1] a, const uint64_t[::1] b):
    _same_len(out.shape[0], a.shape[0])
    _same_len(out.shape[0], b.shape[0])
    cdef size_t n = out.shape[0]
    if n:
        with nogil:
            smpc_sub_u64(&out[0], &a[0], &b[0], n)


def mul(uint64_t[::1] out, const uint64_t[::1] a, const uint64_t[::1] b):
    _same_len(out.shape[0], a.shape[0])
    _same_len(out.shape[0], b.shape[0])
    cdef size_t n = out.shape[0]
    if n:
        with nogil:
            smpc_mul_u64(&out[0], &a[0], &b[0], n)


def neg(uint64_t[::1] out, const uint64_t[::1] a):
    _same_len(out.shape[0], a.shape[0])
    cdef size_t n = out.shape[0]
    if n:
        with nogil:
            smpc_neg_u64(&out[0], &a[0], n)


def mul_scalar(uint64_t[::1] out, const uint64_t[::1] a, uint64_t s):
    _same_len(out.shape[0], a.shape[0])
    cdef size_t n = out.shape[0]
    if n:
        with nogil:
            smpc_mul_scalar_u64(&out[0], &a[0], s, n)


def add_scalar(uint64_t[::1] out, const uint64_t[::1] a, uint64_t s):
    _same_len(out.shape[0], a.shape[0])
    cdef size_t n = out.shape[0]
    if n:
        with nogil:
            smpc_add_scalar_u64(&out[0], &a[0], s, n)


def rshift_arith(uint64_t[::1] out, const uint64_t[::1] a, unsigned k):
    _same_len(out.shape[0], a.shape[0])
    cdef size_t n = out.shape[0]
    if n:
        with nogil:
            smpc_rshift_arith_u64(&out[0], &a[0], k, n)


def rshift_logical(uint64_t[::1] out, const uint64_t[::1] a, unsigned k):
    _same_len(out.shape[0], a.shape[0])
    cdef size_t n = out.shape[0]
    if n:
        with nogil:
            smpc_rshift_logical_u64(&out[0], &a[0], k, n)


cdef size_t _row_stride(object name, Py_ssize_t s0, Py_ssize_t s1, Py_ssize_t cols) except? 0:
    # Rows may be strided; columns must be unit stride (any stride is
    # irrelevant for a single column).
    if cols > 1 and s1 != sizeof(uint64_t):
        raise ValueError(f"{name}: columns must be contiguous (stride {s1})")
    if s0 < 0 or s0 % sizeof(uint64_t):
        raise ValueError(f"{name}: unsupported row stride {s0}")
    return <size_t>(s0 // sizeof(uint64_t))


def gemm(uint64_t[:, :] c, const uint64_t[:, :] a, const uint64_t[:, :] b):
    """c = a @ b mod 2^64.  c must not overlap a or b."""
    cdef size_t m = a.shape[0], k = a.shape[1], n = b.shape[1]
    if b.shape[0] != a.shape[1] or c.shape[0] != a.shape[0] or c.shape[1] != b.shape[1]:
        raise ValueError(f"gemm shapes: c {(c.shape[0], c.shape[1])}, a {(a.shape[0], a.shape[1])}, "
                         f"b {(b.shape[0], b.shape[1])}")
    if m == 0 or n == 0:
        return
    cdef size_t ldc = _row_stride("c", c.strides[0], c.strides[1], n)
    cdef size_t lda = 0, ldb = 0
    cdef const uint64_t *pa = NULL
    cdef const uint64_t *pb = NULL
    if k:
        lda = _row_stride("a", a.strides[0], a.strides[1], k)
        ldb = _row_stride("b", b.strides[0], b.strides[1], n)
        pa = &a[0, 0]
        pb = &b[0, 0]
    cdef int err
    with nogil:
        err = smpc_gemm_u64(&c[0, 0], ldc, pa, lda, pb, ldb, m, n, k)
    if err:
        raise MemoryError("gemm: could not allocate packing buffers")


def im2col(uint64_t[:, ::1] out, const uint64_t[:, :, :, ::1] x,
           size_t kh, size_t kw, size_t sh, size_t sw,
           size_t pad_top, size_t pad_left, size_t oh, size_t ow):
    cdef size_t n = x.shape[0], h = x.shape[1], w = x.shape[2], ch = x.shape[3]
    if <size_t>out.shape[0] != n * oh * ow or <size_t>out.shape[1] != kh * kw * ch:
        raise ValueError(f"im2col: out shape {(out.shape[0], out.shape[1])}, expected "
                         f"{(n * oh * ow, kh * kw * ch)}")
    if out.shape[0] == 0 or out.shape[1] == 0:
        return
    with nogil:
        smpc_im2col_u64(&out[0, 0], &x[0, 0, 0, 0], n, h, w, ch, kh, kw, sh, sw,
                        pad_top, pad_left, oh, ow)


def conv2d(uint64_t[:, ::1] out, uint64_t[:, ::1] col,
           const uint64_t[:, :, :, ::1] x, const uint64_t[:, ::1] wt,
           size_t kh, size_t kw, size_t sh, size_t sw,
           size_t pad_top, size_t pad_left, size_t oh, size_t ow):
    """out (n*oh*ow, o) = im2col(x) @ wt, using col (rows, kh*kw*c) as workspace."""
    cdef size_t n = x.shape[0], h = x.shape[1], w = x.shape[2], ch = x.shape[3]
    cdef size_t o = wt.shape[1], k = kh * kw * ch
    if <size_t>wt.shape[0] != k or <size_t>out.shape[0] != n * oh * ow \
            or <size_t>out.shape[1] != o or <size_t>col.shape[1] != k \
            or <size_t>col.shape[0] < oh * ow:
        raise ValueError(f"conv2d shapes: out {(out.shape[0], out.shape[1])}, col "
                         f"{(col.shape[0], col.shape[1])}, x {(x.shape[0], x.shape[1], x.shape[2], x.shape[3])}, wt "
                         f"{(wt.shape[0], wt.shape[1])}, kernel {(kh, kw)}, output {(oh, ow)}")
    if out.shape[0] == 0 or o == 0:
        return
    if k == 0:
        out[:, :] = 0
        return
    cdef int err
    with nogil:
        err = smpc_conv2d_u64(&out[0, 0], &col[0, 0], col.shape[0], &x[0, 0, 0, 0],
                              &wt[0, 0], n, h, w, ch, kh, kw, o, sh, sw,
                              pad_top, pad_left, oh, ow)
    if err:
        raise MemoryError("conv2d: could not allocate GEMM packing buffers")


def gemm_kernel():
    """Name of the GEMM micro-kernel in use: 'scalar', 'avx2' or 'avx512'."""
    return smpc_gemm_kernel_name().decode()


def gemm_kernel_available(str name):
    """True if this build and CPU can run the named GEMM kernel."""
    return bool(smpc_gemm_kernel_available(name.encode()))


def set_gemm_kernel(str name):
    """Test hook: force a GEMM kernel ('scalar', 'avx2', 'avx512') or 'auto'."""
    if smpc_gemm_set_kernel(name.encode()) != 0:
        raise ValueError(f"GEMM kernel {name!r} is unknown or not supported by this CPU")


def set_num_threads(int n):
    smpc_gemm_set_num_threads(n)


def get_num_threads():
    return smpc_gemm_get_num_threads()
