"""SharedTensor: the caller's handle on a tensor secret-shared in a cluster."""

from __future__ import annotations

import numpy as np

from pysmpc.protocols.conv2d import output_shape as _conv_output_shape
from pysmpc.protocols.pool import pool_output_shape
from pysmpc.sharing.fixedpoint import FixedPoint

__all__ = ["SharedTensor", "relu", "conv2d"]


class SharedTensor:
    """A fixed-point tensor whose shares live on the cluster's parties.

    The handle holds no share: only the cluster, an id, the shape and the
    number of fractional bits. Local operations (+, -, * by a public value)
    run without communication; `*` and `@` between two shared tensors,
    comparisons, relu, pooling by max and truncation run protocols and
    communicate (see docs/PROTOCOL.md for each cost). Products are
    truncated back to the cluster's fractional bits automatically.
    """

    __array_priority__ = 1000  # so numpy defers `ndarray @ SharedTensor` to us

    def __init__(self, cluster, tid: int, shape: tuple, frac_bits: int):
        self.cluster = cluster
        self.tid = tid
        self.shape = tuple(int(s) for s in shape)
        self.frac_bits = frac_bits

    # -- helpers -----------------------------------------------------------------
    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def _new(self, op: str, *args, shape=None, frac_bits=None, **kwargs) -> "SharedTensor":
        tid = self.cluster.new_id()
        results, _ = self.cluster.call(op, tid, *args, **kwargs)
        out_shape = results[0] if shape is None else shape
        return SharedTensor(self.cluster, tid, out_shape, self.frac_bits if frac_bits is None else frac_bits)

    def _same_cluster(self, other: "SharedTensor") -> None:
        if other.cluster is not self.cluster:
            raise ValueError("shared tensors live in different clusters")

    def _public(self, value, frac_bits: int) -> np.ndarray:
        """Encode a public operand at `frac_bits` fractional bits."""
        value = np.asarray(value)
        fmt = FixedPoint(frac_bits=frac_bits, int_bits=self.cluster.fixed_point.int_bits)
        return fmt.encode(value)

    def _rescale(self, t: "SharedTensor") -> "SharedTensor":
        """Truncate a product back to the cluster's fractional bits (1 round)."""
        extra = t.frac_bits - self.cluster.frac_bits
        if extra <= 0:
            return t
        return t._new("truncate", t.tid, extra, shape=t.shape, frac_bits=t.frac_bits - extra)

    def _align(self, other: "SharedTensor") -> tuple["SharedTensor", "SharedTensor"]:
        """Bring two tensors to one scale for addition (integers are scaled up)."""
        a, b = self, other
        if a.frac_bits < b.frac_bits:
            a = a._new("mul_public", a.tid, np.uint64(1 << (b.frac_bits - a.frac_bits)), shape=a.shape,
                       frac_bits=b.frac_bits)
        elif b.frac_bits < a.frac_bits:
            b = b._new("mul_public", b.tid, np.uint64(1 << (a.frac_bits - b.frac_bits)), shape=b.shape,
                       frac_bits=a.frac_bits)
        return a, b

    # -- reveal ---------------------------------------------------------------------
    def reveal(self, to: str = "caller") -> np.ndarray:
        """Reconstruct the value and return it.

        to="caller": only this caller learns it (P0 and P1 send it their
        shares; no party learns anything). to="parties": P0 and P1 open it to
        each other (1 round) and P0 hands it to the caller too.
        """
        if to == "caller":
            ring = self.cluster.reveal_ring(self)
        elif to == "parties":
            results, _ = self.cluster.call("open", self.tid)
            ring = results[0].reshape(self.shape)
        else:
            raise ValueError(f"reveal to 'caller' or 'parties', got {to!r}")
        if self.frac_bits == 0:
            return ring.view(np.int64).copy()
        return FixedPoint(frac_bits=self.frac_bits, int_bits=self.cluster.fixed_point.int_bits).decode(ring)

    def free(self) -> None:
        self.cluster.call("free", [self.tid])

    # -- local arithmetic ----------------------------------------------------------
    def __add__(self, other):
        if isinstance(other, SharedTensor):
            self._same_cluster(other)
            a, b = self._align(other)
            return a._new("add", a.tid, b.tid, shape=np.broadcast_shapes(a.shape, b.shape))
        public = self._public(other, self.frac_bits)
        return self._new("add_public", self.tid, public, shape=np.broadcast_shapes(self.shape, public.shape))

    __radd__ = __add__

    def __sub__(self, other):
        if isinstance(other, SharedTensor):
            self._same_cluster(other)
            a, b = self._align(other)
            return a._new("sub", a.tid, b.tid, shape=np.broadcast_shapes(a.shape, b.shape))
        return self + (-np.asarray(other))

    def __rsub__(self, other):
        return (-self) + other

    def __neg__(self):
        return self._new("neg", self.tid, shape=self.shape)

    def __mul__(self, other):
        """Elementwise product; with another SharedTensor this runs Beaver's protocol (1 round) and truncation (1 round)."""
        if isinstance(other, SharedTensor):
            self._same_cluster(other)
            shape = np.broadcast_shapes(self.shape, other.shape)
            product = self._new("mul", self.tid, other.tid, shape=shape, frac_bits=self.frac_bits + other.frac_bits)
            return self._rescale(product)
        other = np.asarray(other)
        scale = 0 if np.issubdtype(other.dtype, np.integer) else self.cluster.frac_bits
        public = self._public(other, scale)
        shape = np.broadcast_shapes(self.shape, public.shape)
        product = self._new("mul_public", self.tid, public, shape=shape, frac_bits=self.frac_bits + scale)
        return self._rescale(product)

    __rmul__ = __mul__

    def __matmul__(self, other):
        """Matrix product; communicates (Beaver matmul, then truncation)."""
        if isinstance(other, SharedTensor):
            self._same_cluster(other)
            _check_matmul(self.shape, other.shape)
            product = self._new("matmul", self.tid, other.tid, shape=(self.shape[0], other.shape[1]),
                                frac_bits=self.frac_bits + other.frac_bits)
        else:
            public = self._public(other, self.cluster.frac_bits)
            _check_matmul(self.shape, public.shape)
            product = self._new("matmul_public", self.tid, public, shape=(self.shape[0], public.shape[1]),
                                frac_bits=self.frac_bits + self.cluster.frac_bits)
        return self._rescale(product)

    def __rmatmul__(self, other):
        public = self._public(other, self.cluster.frac_bits)
        _check_matmul(public.shape, self.shape)
        product = self._new("matmul_public", self.tid, public, True, shape=(public.shape[0], self.shape[1]),
                            frac_bits=self.frac_bits + self.cluster.frac_bits)
        return self._rescale(product)

    # -- shape -------------------------------------------------------------------
    def reshape(self, *shape) -> "SharedTensor":
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        new_shape = np.empty(self.shape, dtype=np.uint8).reshape(shape).shape
        return self._new("reshape", self.tid, new_shape, shape=new_shape)

    def transpose(self, *axes) -> "SharedTensor":
        axes = axes or tuple(reversed(range(self.ndim)))
        new_shape = np.empty(self.shape, dtype=np.uint8).transpose(*axes).shape
        return self._new("transpose", self.tid, tuple(axes), shape=new_shape)

    @property
    def T(self) -> "SharedTensor":
        return self.transpose()

    def sum(self, axis=None, keepdims=False) -> "SharedTensor":
        new_shape = np.empty(self.shape, dtype=np.uint8).sum(axis=axis, keepdims=keepdims).shape
        return self._new("sum", self.tid, axis, keepdims, shape=new_shape)

    # -- protocols ----------------------------------------------------------------
    def truncate(self, bits: int) -> "SharedTensor":
        """Divide by 2^bits (rounding down, error at most one unit): 1 round."""
        return self._new("truncate", self.tid, bits, shape=self.shape, frac_bits=self.frac_bits)

    def relu(self) -> "SharedTensor":
        """max(x, 0) by secure comparison: 4 rounds, the sign is never opened."""
        return self._new("relu", self.tid, shape=self.shape)

    def conv2d(self, w, stride=1, padding="valid") -> "SharedTensor":
        """Convolve (NHWC) with w (HWIO), shared or public; truncates back to F."""
        if isinstance(w, SharedTensor):
            self._same_cluster(w)
            shape = _conv_output_shape(self.shape, w.shape, stride, padding)
            product = self._new("conv2d", self.tid, w.tid, stride, padding, shape=shape,
                                frac_bits=self.frac_bits + w.frac_bits)
        else:
            public = self._public(w, self.cluster.frac_bits)
            shape = _conv_output_shape(self.shape, public.shape, stride, padding)
            product = self._new("conv2d_public", self.tid, public, stride, padding, shape=shape,
                                frac_bits=self.frac_bits + self.cluster.frac_bits)
        return self._rescale(product)

    def sum_pool2d(self, k: int, stride: int | None = None) -> "SharedTensor":
        return self._new("sum_pool2d", self.tid, k, stride, shape=pool_output_shape(self.shape, k, stride))

    def avg_pool2d(self, k: int, stride: int | None = None) -> "SharedTensor":
        """Average over k x k windows: local sum, then one truncation (1 round)."""
        return self._new("avg_pool2d", self.tid, k, stride, self.frac_bits,
                         shape=pool_output_shape(self.shape, k, stride))

    def max_pool2d(self, k: int, stride: int | None = None) -> "SharedTensor":
        """Max over k x k windows by comparisons: 4 rounds per tournament level."""
        return self._new("max_pool2d", self.tid, k, stride, shape=pool_output_shape(self.shape, k, stride))

    def argmax(self) -> "SharedTensor":
        """One-hot (integer) shares of the argmax over axis 1 of (N, C) values."""
        if self.ndim != 2:
            raise ValueError(f"argmax takes (N, C), got {self.shape}")
        return self._new("argmax", self.tid, shape=self.shape, frac_bits=0)

    def _compare(self, other, swap: bool) -> "SharedTensor":
        if isinstance(other, SharedTensor):
            self._same_cluster(other)
            a, b = self._align(other)
            if swap:
                a, b = b, a
            shape = np.broadcast_shapes(a.shape, b.shape)
            return a._new("less_than", a.tid, b.tid, shape=shape, frac_bits=0)
        public = self._public(other, self.frac_bits)
        if swap:  # x > c  <=>  -x < -c
            neg = -self
            return neg._new("less_than", neg.tid, None, public=np.negative(public), shape=self.shape, frac_bits=0)
        return self._new("less_than", self.tid, None, public=public, shape=self.shape, frac_bits=0)

    def __lt__(self, other):
        """[self < other] as shared integers 0/1 (comparison and conversion, 4 rounds)."""
        return self._compare(other, swap=False)

    def __gt__(self, other):
        return self._compare(other, swap=True)

    def __le__(self, other):
        return 1 - self._compare(other, swap=True)

    def __ge__(self, other):
        return 1 - self._compare(other, swap=False)

    def __repr__(self) -> str:
        return f"SharedTensor(shape={self.shape}, frac_bits={self.frac_bits})"


def _check_matmul(a, b) -> None:
    if len(a) != 2 or len(b) != 2 or a[1] != b[0]:
        raise ValueError(f"matmul needs (m,k) @ (k,n), got {a} @ {b}")


def relu(t: SharedTensor) -> SharedTensor:
    """max(t, 0) on a shared tensor (secure comparison; communicates)."""
    return t.relu()


def conv2d(t: SharedTensor, w, stride=1, padding="valid") -> SharedTensor:
    """2-D convolution of a shared NHWC tensor with HWIO weights (shared or public)."""
    return t.conv2d(w, stride=stride, padding=padding)
