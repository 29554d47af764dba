"""Cryptographically secure pseudo-random generator: AES-128 in counter mode.

Security assumption: AES-128 is a pseudo-random function (PRF). The stream
of a PRG is AES_seed(0) || AES_seed(1) || ... (CTR mode, nonce 0, 128-bit
counter), which is then indistinguishable from uniform to anyone who does
not know the 16-byte seed, for far more output than any run produces
(the 2^64-block birthday bound is out of reach).

A seed must never be used for two purposes. Two protocols drawing from
PRGs built on the same seed get the *same* stream, and their masks cancel.
Get independent streams by name with :meth:`PRG.derive`, which runs
HKDF-SHA256 over the seed with the label as ``info``; each label must itself
name exactly one purpose.

The stream is consumed in order: two calls drawing n bytes each return the
same bytes as one call drawing 2n. Words are the keystream read as
little-endian uint64 (the native order of the platforms we run on), so a
seed gives the same words everywhere.

``numpy.random`` is never used here: it is not a cryptographic generator.
"""

from __future__ import annotations

import os
import secrets
import sys
import threading
import weakref

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = ["PRG", "SEED_BYTES", "new_seed"]

SEED_BYTES = 16
# Keystream is produced into the caller's buffer in pieces of this size,
# against a reused all-zero plaintext of the same size (CTR: ciphertext of
# zeros = keystream), so a fill allocates nothing proportional to its size.
_CHUNK = 1 << 20
# update_into needs len(data) + block_size - 1 bytes of room in the output.
_SLACK = 15
# Salt separating derive() from any other HKDF use of the same seed.
_DERIVE_SALT = b"pysmpc.sharing.prg.derive.v1"

if sys.byteorder != "little":  # pragma: no cover - no big-endian targets
    raise ImportError("pysmpc.sharing.prg assumes a little-endian platform")


def new_seed() -> bytes:
    """Return a fresh 16-byte seed from the operating system's CSPRNG."""
    return secrets.token_bytes(SEED_BYTES)


class PRG:
    """Stateful AES-128-CTR keystream generator over a 16-byte seed.

    Two instances with equal seeds produce equal streams; a stream continues
    across calls. Not thread-safe: give each thread its own (derived) PRG.

    Security: AES as a PRF; never reuse a seed for two purposes (see the
    module docstring and :meth:`derive`).
    """

    __slots__ = ("_key", "_encryptor", "_zeros", "_scratch", "__weakref__")

    def __init__(self, seed: bytes) -> None:
        if not isinstance(seed, (bytes, bytearray)):
            raise TypeError(f"PRG seed must be bytes, got {type(seed).__name__}")
        if len(seed) != SEED_BYTES:
            raise ValueError(f"PRG seed must be exactly {SEED_BYTES} bytes, got {len(seed)}")
        self._zeros: memoryview | None = None
        self._scratch: bytearray | None = None
        self._key_with(seed)

    def _key_with(self, seed: bytes) -> None:
        """Start the stream of `seed` from its beginning."""
        self._key = bytes(seed)
        cipher = Cipher(algorithms.AES(self._key), modes.CTR(bytes(16)))
        self._encryptor = cipher.encryptor()

    @classmethod
    def fresh(cls) -> PRG:
        """Return a PRG on a new private seed (new_seed()) that a forked child reseeds.

        For randomness this process alone draws: the shares a client or
        model owner deals (x0 to P0, x - x0 to P1), a party's noise. After
        os.fork() parent and child hold the same state, and two children
        sharing values x and y under the same x0 give P1 x - x0 and y - x0:
        their difference is x - y, in the clear. So every PRG made here
        gets a new seed from the OS in a forked child, before the child runs
        (os.register_at_fork). A PRG on an agreed seed (`PRG(seed)`: the
        parties' pairwise streams, which must stay aligned) is never
        reseeded, nor are PRGs `derive`d from this one before the fork.
        """
        prg = cls(new_seed())
        _register_fork_hook()
        _FORK_RESEEDED.add(prg)
        return prg

    def __repr__(self) -> str:
        # Never print the seed.
        return "PRG(<secret seed>)"

    def derive(self, label: bytes) -> PRG:
        """Return an independent PRG for the purpose named ``label``.

        The child seed is HKDF-SHA256(seed, salt=fixed, info=label), so it
        depends only on this PRG's seed and the label, not on how much of
        this stream has been drawn. Distinct labels give computationally
        independent streams (HKDF as a PRF); the same label gives the same
        stream again, so use each label for one purpose only.
        """
        if isinstance(label, str) or not isinstance(label, (bytes, bytearray)):
            raise TypeError(f"derive label must be bytes, got {type(label).__name__}")
        hkdf = HKDF(
            algorithm=hashes.SHA256(),
            length=SEED_BYTES,
            salt=_DERIVE_SALT,
            info=bytes(label),
        )
        return PRG(hkdf.derive(self._key))

    def fill(self, out: np.ndarray) -> np.ndarray:
        """Overwrite a C-contiguous uint64 array with the next keystream words.

        Returns ``out``. Consumes 8 * out.size bytes of the stream.
        """
        if not isinstance(out, np.ndarray) or out.dtype != np.uint64:
            raise TypeError(
                f"PRG.fill: out must be a uint64 ndarray, got {type(out).__name__}"
                f" of dtype {getattr(out, 'dtype', None)}"
            )
        if not out.flags.c_contiguous or not out.flags.writeable:
            raise ValueError("PRG.fill: out must be C-contiguous and writeable")
        if out.size:
            self._keystream_into(memoryview(out.reshape(-1).view(np.uint8)))
        return out

    def random_u64(self, shape) -> np.ndarray:
        """Return a new C-contiguous uint64 array of the given shape, uniform mod 2^64."""
        return self.fill(np.empty(shape, dtype=np.uint64))

    def random_bits(self, n: int) -> np.ndarray:
        """Return n uniform bits packed into ceil(n / 64) uint64 words.

        Bit t of word w is bit 64*w + t; padding bits of the last word are
        zero. Consumes 8 * ceil(n / 64) bytes of the stream.
        """
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"PRG.random_bits: n must be a non-negative int, got {n!r}")
        n = int(n)
        words = self.random_u64((n + 63) // 64)
        if n % 64:
            words[-1] &= np.uint64((1 << (n % 64)) - 1)
        return words

    def _keystream_into(self, dst: memoryview) -> None:
        if self._zeros is None:
            self._zeros = memoryview(bytes(_CHUNK))
        total = len(dst)
        pos = 0
        # update_into may demand block_size - 1 spare bytes after the piece
        # it writes (older `cryptography` releases check this), so the last
        # _SLACK bytes of dst go through a tiny scratch buffer instead.
        direct_end = max(0, total - _SLACK)
        while pos < direct_end:
            m = min(_CHUNK, direct_end - pos)
            self._encryptor.update_into(self._zeros[:m], dst[pos:])
            pos += m
        tail = total - pos
        if tail:
            if self._scratch is None:
                self._scratch = bytearray(2 * _SLACK)
            self._encryptor.update_into(self._zeros[:tail], self._scratch)
            dst[pos:] = self._scratch[:tail]


# PRGs made by PRG.fresh(), reseeded in a forked child; held weakly (a
# dropped PRG needs no reseeding).
_FORK_RESEEDED: weakref.WeakSet = weakref.WeakSet()
_fork_hook = {"registered": False, "lock": threading.Lock()}


def _register_fork_hook() -> None:
    """Register the reseeding with os.register_at_fork, once, when the first fresh PRG is made."""
    with _fork_hook["lock"]:
        if not _fork_hook["registered"] and hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=_reseed_after_fork)
            _fork_hook["registered"] = True


def _reseed_after_fork() -> None:
    for prg in list(_FORK_RESEEDED):
        prg._key_with(new_seed())
