"""Numba bit-plane kernels for the comparison protocol (XOR-shared bits).

Layout: for n elements a *packed plane* is ``uint64[ceil(n / 64)]`` where
bit t of word w is the bit of element 64*w + t. Padding bits of the last
word (elements n .. 64*nwords - 1) are always zero in what these kernels
return, so XOR/AND of planes and :func:`popcount` never see stray bits.

XOR and AND of packed planes are plain NumPy ufuncs (``np.bitwise_xor``
with ``out=``); only the steps that would otherwise take several passes
(packing, the Beaver AND finish) have fused kernels here.

Kernels never modify their inputs, copy non-contiguous inputs to C order,
draw no randomness and release the GIL (nogil), so the three in-process
parties run them at the same time.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

__all__ = [
    "and_finish",
    "n_words",
    "pack_bitplanes",
    "pack_bits",
    "popcount",
    "unpack_bits",
]

# Words per call below which the serial loop is used. Parallel packing is
# ~1.5x faster on 2 idle cores, but stalls for a scheduler slice (~8 ms) when
# another process holds a core (see the note in pool.py), so only calls of
# at least 2^20 elements default to the thread pool.
_PARALLEL_MIN_WORDS = 1 << 14
# From this many planes per call the 64x64 bit-matrix transpose (about
# 6*32 swap steps per 64 elements, whatever the plane count) beats testing
# each bit separately (64 shift-and-mask steps per plane per 64 elements).
# Measured on 1M elements: transpose ~12 ms for any count, per-bit ~0.75 ms
# per plane.
_TRANSPOSE_MIN_PLANES = 16

_LOW_MASKS = np.array(
    [
        0x00000000FFFFFFFF,
        0x0000FFFF0000FFFF,
        0x00FF00FF00FF00FF,
        0x0F0F0F0F0F0F0F0F,
        0x3333333333333333,
        0x5555555555555555,
    ],
    dtype=np.uint64,
)


def n_words(n: int) -> int:
    """Return the number of uint64 words in a packed plane of n bits."""
    return (n + 63) // 64


# ---------------------------------------------------------------- packing


@njit(cache=True, inline="always")
def _pack_word_naive(x, out, w, lo, planes):
    n = x.shape[0]
    start = 64 * w
    stop = min(start + 64, n)
    for j in range(planes):
        shift = np.uint64(lo + j)
        word = np.uint64(0)
        for t in range(stop - start):
            word |= ((x[start + t] >> shift) & np.uint64(1)) << np.uint64(t)
        out[j, w] = word


@njit(cache=True, inline="always")
def _pack_word_transpose(x, out, w, lo, planes, masks, block):
    # block[t] = element 64*w + t; after an in-place 64x64 bit transpose
    # block[b] holds bit b of the 64 elements, i.e. plane b for this word.
    n = x.shape[0]
    start = 64 * w
    stop = min(start + 64, n)
    for t in range(64):
        block[t] = x[start + t] if start + t < stop else np.uint64(0)
    width = 32
    for level in range(6):
        m = masks[level]
        sh = np.uint64(width)
        for base in range(0, 64, 2 * width):
            for r in range(base, base + width):
                # Swap the high half-block of row r with the low half-block
                # of row r + width (recursive block transpose).
                t = ((block[r] >> sh) ^ block[r + width]) & m
                block[r] ^= t << sh
                block[r + width] ^= t
        width //= 2
    for j in range(planes):
        out[j, w] = block[lo + j]


@njit(cache=True, nogil=True)
def _pack_bitplanes_serial(x, out, lo, masks, transpose):
    planes = out.shape[0]
    block = np.empty(64, dtype=np.uint64)
    for w in range(out.shape[1]):
        if transpose:
            _pack_word_transpose(x, out, w, lo, planes, masks, block)
        else:
            _pack_word_naive(x, out, w, lo, planes)


@njit(cache=True, parallel=True, nogil=True)
def _pack_bitplanes_parallel(x, out, lo, masks, transpose):
    planes = out.shape[0]
    nwords = out.shape[1]
    chunk = 256
    for ci in prange((nwords + chunk - 1) // chunk):
        block = np.empty(64, dtype=np.uint64)
        for w in range(ci * chunk, min(nwords, (ci + 1) * chunk)):
            if transpose:
                _pack_word_transpose(x, out, w, lo, planes, masks, block)
            else:
                _pack_word_naive(x, out, w, lo, planes)


def pack_bitplanes(x: np.ndarray, lo: int, hi: int, parallel: bool | None = None) -> np.ndarray:
    """Split uint64 elements into packed bit planes lo .. hi-1.

    out[j, w] bit t = bit (lo + j) of x[64*w + t], for 0 <= j < hi - lo.

    Args:
        x: uint64 array of shape (n,); any strides (copied if needed).
        lo, hi: bit range, 0 <= lo <= hi <= 64.
        parallel: split words over the Numba thread pool; ``None`` decides
            by size.

    Returns:
        New C-contiguous uint64 array of shape (hi - lo, ceil(n / 64)), with
        zero padding bits.

    Cost: local; one read of x, one write of (hi - lo) * n / 64 words.
    """
    x = _as_u64_vector("pack_bitplanes", x)
    if isinstance(lo, bool) or isinstance(hi, bool):
        raise TypeError("pack_bitplanes: lo and hi must be ints")
    lo, hi = int(lo), int(hi)
    if not 0 <= lo <= hi <= 64:
        raise ValueError(f"pack_bitplanes: need 0 <= lo <= hi <= 64, got lo={lo}, hi={hi}")
    nwords = n_words(x.shape[0])
    out = np.empty((hi - lo, nwords), dtype=np.uint64)
    if out.size == 0:
        return out
    transpose = hi - lo >= _TRANSPOSE_MIN_PLANES
    if parallel is None:
        parallel = nwords >= _PARALLEL_MIN_WORDS
    kernel = _pack_bitplanes_parallel if parallel else _pack_bitplanes_serial
    kernel(x, out, lo, _LOW_MASKS, transpose)
    return out


@njit(cache=True, nogil=True)
def _pack_bits_kernel(b, out):
    n = b.shape[0]
    bad = 0
    for w in range(out.shape[0]):
        start = 64 * w
        stop = min(start + 64, n)
        word = np.uint64(0)
        for t in range(stop - start):
            v = np.uint64(b[start + t])
            if v > np.uint64(1):
                bad += 1
            word |= (v & np.uint64(1)) << np.uint64(t)
        out[w] = word
    return bad


def pack_bits(b: np.ndarray) -> np.ndarray:
    """Pack a vector of 0/1 values into one packed plane.

    Args:
        b: shape (n,), dtype bool, uint8 or uint64 (other integer dtypes are
            converted), every value 0 or 1.

    Returns:
        New uint64 array of shape (ceil(n / 64),), zero padding bits.

    Raises:
        ValueError: if any value is not 0 or 1 (a non-bit would silently
            lose its high bits otherwise).
    """
    b = np.asarray(b)
    if b.ndim != 1:
        raise ValueError(f"pack_bits: expected a 1-D array, got shape {b.shape}")
    if b.dtype == np.bool_:
        b = b.view(np.uint8)
    elif b.dtype not in (np.uint8, np.uint64):
        if b.dtype.kind not in "iu":
            raise TypeError(f"pack_bits: expected bool or integer bits, got dtype {b.dtype}")
        if b.size and (b.min() < 0 or b.max() > 1):
            raise ValueError(f"pack_bits: values must be 0 or 1, got range [{b.min()}, {b.max()}]")
        b = b.astype(np.uint8)
    b = np.ascontiguousarray(b)
    out = np.empty(n_words(b.shape[0]), dtype=np.uint64)
    if b.shape[0] == 0:
        return out
    bad = _pack_bits_kernel(b, out)
    if bad:
        raise ValueError(f"pack_bits: {bad} of {b.shape[0]} values are not 0 or 1")
    return out


@njit(cache=True, nogil=True)
def _unpack_bits_kernel(plane, out):
    for i in range(out.shape[0]):
        out[i] = (plane[i >> 6] >> np.uint64(i & 63)) & np.uint64(1)


def unpack_bits(plane: np.ndarray, n: int) -> np.ndarray:
    """Expand a packed plane into n uint64 values, each 0 or 1.

    Padding bits beyond n are ignored.

    Returns:
        New uint64 array of shape (n,).
    """
    plane = _as_u64_vector("unpack_bits", plane)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"unpack_bits: n must be a non-negative int, got {n!r}")
    n = int(n)
    if plane.shape[0] != n_words(n):
        raise ValueError(
            f"unpack_bits: a plane of {n} bits has {n_words(n)} words, got {plane.shape[0]}"
        )
    out = np.empty(n, dtype=np.uint64)
    if n:
        _unpack_bits_kernel(plane, out)
    return out


# ------------------------------------------------------------- Beaver AND


@njit(cache=True, nogil=True)
def _and_finish_kernel(d, e, u, v, w, party0, out):
    if party0:
        for i in range(out.shape[0]):
            di = d[i]
            ei = e[i]
            out[i] = w[i] ^ (di & v[i]) ^ (ei & u[i]) ^ (di & ei)
    else:
        for i in range(out.shape[0]):
            out[i] = w[i] ^ (d[i] & v[i]) ^ (e[i] & u[i])


def and_finish(
    d: np.ndarray,
    e: np.ndarray,
    u: np.ndarray,
    v: np.ndarray,
    w: np.ndarray,
    party0: bool,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Finish a Beaver AND on XOR-shared packed bits, in one pass.

    With a triple (u, v, w), w = u & v, and opened d_open = x ^ u,
    e_open = y ^ v, each party computes its share of z = x & y as
    [z] = [w] ^ (d_open & [v]) ^ (e_open & [u]) ^ (party 0 only: d_open & e_open).

    Args:
        d, e: the opened masks ``d_open``, ``e_open`` (same on all parties).
        u, v, w: this party's shares of the triple.
        party0: whether this party adds the public term d_open & e_open.
        out: optional C-contiguous uint64 buffer of the common shape; it may
            be one of the inputs (each element is read before it is written).

    All arrays are uint64 of one shape (any shape, any strides: copied to C
    order if needed). Returns ``out`` or a new array of that shape.

    Cost: local; one pass over five inputs.
    Ref: Beaver, CRYPTO 1991 (over GF(2)).
    """
    arrays = []
    for name, a in (("d", d), ("e", e), ("u", u), ("v", v), ("w", w)):
        if not isinstance(a, np.ndarray) or a.dtype != np.uint64:
            raise TypeError(f"and_finish: {name} must be a uint64 ndarray")
        arrays.append(a)
    shape = d.shape
    for name, a in zip("euvw", arrays[1:]):
        if a.shape != shape:
            raise ValueError(f"and_finish: {name} has shape {a.shape}, d has {shape}")
    if out is None:
        out = np.empty(shape, dtype=np.uint64)
    else:
        if not isinstance(out, np.ndarray) or out.dtype != np.uint64:
            raise TypeError("and_finish: out must be a uint64 ndarray")
        if out.shape != shape:
            raise ValueError(f"and_finish: out has shape {out.shape}, d has {shape}")
        if not out.flags.c_contiguous or not out.flags.writeable:
            raise ValueError("and_finish: out must be C-contiguous and writeable")
    if out.size == 0:
        return out
    # ascontiguousarray returns the same memory for C-contiguous inputs, so
    # out aliasing an input stays an exact alias (safe: elementwise loop).
    flat = [np.ascontiguousarray(a).reshape(-1) for a in arrays]
    _and_finish_kernel(*flat, bool(party0), out.reshape(-1))
    return out


# --------------------------------------------------------------- popcount


@njit(cache=True, nogil=True)
def _popcount_kernel(words):
    total = 0
    m1 = np.uint64(0x5555555555555555)
    m2 = np.uint64(0x3333333333333333)
    m4 = np.uint64(0x0F0F0F0F0F0F0F0F)
    h01 = np.uint64(0x0101010101010101)
    for i in range(words.shape[0]):
        x = words[i]
        x = x - ((x >> np.uint64(1)) & m1)
        x = (x & m2) + ((x >> np.uint64(2)) & m2)
        x = (x + (x >> np.uint64(4))) & m4
        total += np.int64((x * h01) >> np.uint64(56))
    return total


def popcount(words: np.ndarray) -> int:
    """Return the total number of set bits in a uint64 array of any shape."""
    if not isinstance(words, np.ndarray) or words.dtype != np.uint64:
        raise TypeError("popcount: words must be a uint64 ndarray")
    if words.size == 0:
        return 0
    return int(_popcount_kernel(np.ascontiguousarray(words).reshape(-1)))


def _as_u64_vector(fname: str, x) -> np.ndarray:
    if not isinstance(x, np.ndarray) or x.dtype != np.uint64:
        raise TypeError(
            f"{fname}: expected a uint64 ndarray, got {type(x).__name__}"
            f" of dtype {getattr(x, 'dtype', None)}"
        )
    if x.ndim != 1:
        raise ValueError(f"{fname}: expected a 1-D array, got shape {x.shape}")
    return np.ascontiguousarray(x)
