"""Share types: what one party holds of a secret-shared array.

The scheme (docs/PROTOCOL.md): P0 and P1 hold 2-out-of-2 shares; P2 is the
dealer and holds no share of data, only the shape, so that every party can
run the same program. Operators here are local only: adding two shares, or a
share and a public value, never communicates. Multiplying two shares does, so
`x * y` on two shares raises TypeError: call a protocol.
"""

from __future__ import annotations

import math

import numpy as np

from pysmpc.sharing.prg import PRG

__all__ = [
    "AShare",
    "BShare",
    "share",
    "reconstruct",
    "share_bits",
    "reconstruct_bits",
    "stack_shares",
    "concat_shares",
]

_U64 = np.uint64



def _broadcast(a: tuple, b: tuple) -> tuple:
    # np.broadcast_shapes costs ~10 us; equal shapes, scalars and trailing
    # axes of a (the usual cases: a public scale, a per-channel bias added
    # to an NHWC share) need no work.
    if a == b or not b or (len(b) < len(a) and a[len(a) - len(b):] == b):
        return a
    return np.broadcast_shapes(a, b)

def _as_ring(value) -> np.ndarray | int:
    """A public operand as uint64 (arrays) or a Python int mod 2^64 (scalars)."""
    if isinstance(value, np.ndarray):
        if value.dtype != _U64:
            raise TypeError(f"public ring operand must be uint64, got {value.dtype}")
        return value
    if isinstance(value, (int, np.integer)):
        return _U64(int(value) % (1 << 64))
    raise TypeError(f"unsupported public operand {type(value).__name__}; encode it to the ring first")


class AShare:
    """An additive share mod 2^64 held by one party.

    `value` is this party's uint64 share; on the dealer (P2) it is None and
    only `shape` is known. `party` is the holder's index: a public constant is
    added by party 0 alone.
    """

    __slots__ = ("value", "shape", "party")

    def __init__(self, value: np.ndarray | None, party: int, shape: tuple | None = None):
        if value is not None:
            if value.dtype != _U64:
                raise TypeError(f"AShare value must be uint64, got {value.dtype}")
            shape = value.shape
        elif shape is None:
            raise ValueError("a share without a value (the dealer's view) needs a shape")
        self.value = value
        self.shape = tuple(shape)
        self.party = party

    @property
    def is_dealer_view(self) -> bool:
        return self.value is None

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def _new(self, value, shape=None) -> "AShare":
        return AShare(value, self.party, self.shape if shape is None else shape)

    def _check_peer(self, other: "AShare") -> None:
        if other.party != self.party:
            raise ValueError(f"shares of different parties ({self.party}, {other.party}) cannot be combined")

    # -- share (+-) share: local ---------------------------------------------
    def __add__(self, other):
        if isinstance(other, AShare):
            self._check_peer(other)
            shape = _broadcast(self.shape, other.shape)
            if self.value is None:
                return self._new(None, shape)
            return self._new(self.value + other.value)
        return self.add_public(other)

    __radd__ = __add__

    def __sub__(self, other):
        if isinstance(other, AShare):
            self._check_peer(other)
            shape = _broadcast(self.shape, other.shape)
            if self.value is None:
                return self._new(None, shape)
            return self._new(self.value - other.value)
        return self.add_public(_neg_public(other))

    def __rsub__(self, other):
        return (-self).add_public(other)

    def __neg__(self):
        if self.value is None:
            return self._new(None)
        return self._new(np.negative(self.value))

    def add_public(self, public) -> "AShare":
        """Add a public value: party 0 adds it, party 1 keeps its share."""
        public = _as_ring(public)
        shape = _broadcast(self.shape, np.shape(public))
        if self.value is None:
            return self._new(None, shape)
        if self.party == 0:
            return self._new(self.value + public)
        return self._new(np.broadcast_to(self.value, shape).copy() if shape != self.shape else self.value)

    # -- share * public: local ------------------------------------------------
    def __mul__(self, other):
        if isinstance(other, AShare):
            raise TypeError("AShare * AShare needs a round of communication: call protocols.mul(party, x, y)")
        public = _as_ring(other)
        shape = _broadcast(self.shape, np.shape(public))
        if self.value is None:
            return self._new(None, shape)
        return self._new(self.value * public)

    __rmul__ = __mul__

    def __matmul__(self, other):
        raise TypeError("AShare @ ... is not local: call protocols.matmul(party, x, w)")

    # -- shape ops: local -----------------------------------------------------
    def reshape(self, *shape) -> "AShare":
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        if self.value is None:
            return self._new(None, np.empty(self.shape, dtype=np.uint8).reshape(shape).shape)
        return self._new(self.value.reshape(shape))

    def transpose(self, *axes) -> "AShare":
        if self.value is None:
            return self._new(None, np.empty(self.shape, dtype=np.uint8).transpose(*axes).shape)
        return self._new(np.ascontiguousarray(self.value.transpose(*axes)))

    def __getitem__(self, key) -> "AShare":
        if self.value is None:
            return self._new(None, np.empty(self.shape, dtype=np.uint8)[key].shape)
        return self._new(np.ascontiguousarray(self.value[key]))

    def pad_spatial(self, top: int, bottom: int, left: int, right: int) -> "AShare":
        """Zero-pad an NHWC share along H and W (zeros are a sharing of zero)."""
        n, h, w, c = self.shape
        shape = (n, h + top + bottom, w + left + right, c)
        if self.value is None:
            return self._new(None, shape)
        return self._new(np.pad(self.value, ((0, 0), (top, bottom), (left, right), (0, 0))))

    def sum(self, axis=None, keepdims=False) -> "AShare":
        if self.value is None:
            return self._new(None, np.empty(self.shape, dtype=np.uint8).sum(axis=axis, keepdims=keepdims).shape)
        return self._new(np.asarray(self.value.sum(axis=axis, keepdims=keepdims, dtype=_U64)))

    def __repr__(self) -> str:
        return f"AShare(party={self.party}, shape={self.shape}{', dealer view' if self.value is None else ''})"


def _neg_public(public):
    public = _as_ring(public)
    return np.negative(public) if isinstance(public, np.ndarray) else _U64((-int(public)) % (1 << 64))


class BShare:
    """An XOR share of packed bits held by one party.

    `words` is uint64 of any shape whose last axis packs 64 elements per
    word (bit t of word w is element 64*w+t); `n` is the element count of that
    last axis. On the dealer, `words` is None.
    """

    __slots__ = ("words", "n", "party", "shape")

    def __init__(self, words: np.ndarray | None, n: int, party: int, shape: tuple | None = None):
        if words is not None:
            if words.dtype != _U64:
                raise TypeError(f"BShare words must be uint64, got {words.dtype}")
            shape = words.shape
        self.words = words
        self.n = int(n)
        self.party = party
        self.shape = tuple(shape)

    def __xor__(self, other):
        if isinstance(other, BShare):
            if self.words is None:
                return BShare(None, self.n, self.party, self.shape)
            return BShare(self.words ^ other.words, self.n, self.party)
        public = _as_ring(other)
        if self.words is None:
            return BShare(None, self.n, self.party, self.shape)
        if self.party == 0:
            return BShare(self.words ^ public, self.n, self.party)
        return BShare(self.words, self.n, self.party)

    __rxor__ = __xor__

    def __and__(self, other):
        if isinstance(other, BShare):
            raise TypeError("BShare & BShare needs a round of communication: call an AND protocol")
        public = _as_ring(other)
        if self.words is None:
            return BShare(None, self.n, self.party, self.shape)
        return BShare(self.words & public, self.n, self.party)

    def __repr__(self) -> str:
        return f"BShare(party={self.party}, n={self.n}, words={self.shape})"


def share(value_ring: np.ndarray, prg: PRG) -> tuple[np.ndarray, np.ndarray]:
    """Split a ring-encoded array into two additive shares with a fresh mask.

    share_0 is uniform from `prg`; share_1 = value - share_0 mod 2^64, so each
    share alone is uniform and independent of the value.
    """
    value_ring = np.ascontiguousarray(value_ring)
    if value_ring.dtype != _U64:
        raise TypeError(f"share() takes ring-encoded uint64 values, got {value_ring.dtype}")
    mask = prg.random_u64(value_ring.shape)
    return mask, value_ring - mask


def reconstruct(share_0: np.ndarray, share_1: np.ndarray) -> np.ndarray:
    """Add two additive shares mod 2^64."""
    if share_0.shape != share_1.shape:
        raise ValueError(f"share shapes differ: {share_0.shape} vs {share_1.shape}")
    return share_0 + share_1


def share_bits(words: np.ndarray, prg: PRG) -> tuple[np.ndarray, np.ndarray]:
    """Split packed bits into two XOR shares."""
    mask = prg.random_u64(words.shape)
    return mask, words ^ mask


def reconstruct_bits(words_0: np.ndarray, words_1: np.ndarray) -> np.ndarray:
    return words_0 ^ words_1


def stack_shares(shares: list[AShare], axis: int = 0) -> AShare:
    """Stack shares of one party along a new axis (local)."""
    first = shares[0]
    if first.value is None:
        shape = np.stack([np.empty(s.shape, dtype=np.uint8) for s in shares], axis=axis).shape
        return AShare(None, first.party, shape)
    return AShare(np.stack([s.value for s in shares], axis=axis), first.party)


def concat_shares(shares: list[AShare], axis: int = 0) -> AShare:
    """Concatenate shares of one party along an existing axis (local)."""
    first = shares[0]
    if first.value is None:
        shape = np.concatenate([np.empty(s.shape, dtype=np.uint8) for s in shares], axis=axis).shape
        return AShare(None, first.party, shape)
    return AShare(np.concatenate([s.value for s in shares], axis=axis), first.party)
