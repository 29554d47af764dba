"""Distributed comparison functions (DCF): function secret sharing of x -> beta * [x < alpha].

A DCF key pair (k0, k1) for a secret threshold alpha on L-bit inputs and a
secret payload beta (a vector of w ring elements mod 2^64) lets each holder
evaluate its key on a public x and get an additive share of
beta * [x < alpha]: Eval(0, k0, x) + Eval(1, k1, x) = beta if x < alpha,
else 0 (mod 2^64, elementwise). Each key alone is pseudorandom: it reveals
neither alpha nor beta.

The construction is the tree DCF of Boyle, Chandran, Gilboa, Gupta, Ishai,
Kumar and Rathee, "Function Secret Sharing for Mixed-Mode and Fixed-Point
Secure Computation", EUROCRYPT 2021, Fig. 1 (with Convert the identity on
64-bit words). Everything here is vectorized over n independent keys: a
level of the tree is a handful of numpy passes and one AES call over all
elements.

PRG. G(s) = AES_K(s ^ T) ^ s ^ T (Matyas-Meyer-Oseas with a fixed public
key K, one tweak T per output block): the standard fixed-key construction,
secure if fixed-key AES behaves as a random permutation (correlation
robustness; Guo et al., "Efficient and Secure Multiparty Computation from
Fixed-Key Block Ciphers", S&P 2020). AES is OpenSSL's through
`cryptography` (ECB over one buffer holding every element's block). Each
side (left, right) of a node expands to a seed (127 bits; its lowest bit
is the control bit t) and w payload words; the leaf expands to w words.

Key size per element: L x (16 + 8w) bytes of correction words, plus 2L
bits of control corrections, 8w bytes for the leaf, and a 16-byte root
seed (drawn from the holder's stream with the dealer, so it never travels).
"""

from __future__ import annotations

import hashlib

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from pysmpc.kernels import dcf as kernels

__all__ = ["DcfKey", "dcf_gen", "dcf_eval", "dcf_gen_reference", "dcf_eval_reference", "key_words", "cw_shapes",
           "pack_public", "unpack_public"]

_U64 = np.uint64
_ONE = _U64(1)
_NOT_LSB = _U64(0xFFFFFFFFFFFFFFFE)
# The fixed public AES key of the MMO PRG (nothing secret: a label's hash).
_FIXED_KEY = hashlib.sha256(b"pysmpc.sharing.dcf fixed AES key v1").digest()[:16]
_LEFT, _RIGHT, _LEAF = 0, 1, 2
_EVAL_CHUNK = 4096  # elements evaluated through all levels at a time (see dcf_eval)
_MAX_TWEAKS = 8  # output blocks per side: 1 seed block + up to 7 payload blocks (w <= 14)


def _tweak_table() -> np.ndarray:
    """(3 sides, _MAX_TWEAKS blocks, 2 words): distinct constants XORed into the seed before AES."""
    t = np.zeros((3, _MAX_TWEAKS, 2), np.uint64)
    for side in range(3):
        for block in range(_MAX_TWEAKS):
            t[side, block, 1] = _U64((side << 8) | (block + 1))
    return t


_TWEAKS = _tweak_table()


def _mmo(blocks: np.ndarray) -> np.ndarray:
    """AES_K(b) ^ b for every 16-byte block of a uint64 array (last axis 2)."""
    blocks = np.ascontiguousarray(blocks)
    # update_into wants block_size - 1 spare bytes after the output (older `cryptography`).
    flat = np.empty(blocks.size + 2, np.uint64)
    if blocks.size:
        enc = Cipher(algorithms.AES(_FIXED_KEY), modes.ECB()).encryptor()
        enc.update_into(memoryview(blocks.reshape(-1).view(np.uint8)), memoryview(flat.view(np.uint8)))
    out = flat[: blocks.size].reshape(blocks.shape)
    out ^= blocks
    return out


def _payload_blocks(w: int) -> int:
    return (w + 1) // 2


def _expand(seeds: np.ndarray, sides: np.ndarray | int, w: int, with_seed: bool = True):
    """G on one side per element: (seed, t, v) for each of the seeds (..., 2), side 0/1/2 per element.

    Returns seed' (..., 2) with its control bit cleared, t (...,) uint64 0/1
    and v (..., w) payload words (seed' and t are None when with_seed is False).
    """
    first = 0 if with_seed else 1
    nblocks = 1 + _payload_blocks(w)
    tweaks = _TWEAKS[sides][..., first:nblocks, :] if not np.isscalar(sides) else _TWEAKS[sides, first:nblocks]
    inputs = seeds[..., None, :] ^ tweaks
    out = _mmo(inputs)
    v = out[..., (1 - first):, :].reshape(out.shape[:-2] + (-1,))[..., :w]
    if not with_seed:
        return None, None, v
    seed = out[..., 0, :].copy()
    t = seed[..., 0] & _ONE
    seed[..., 0] &= _NOT_LSB
    return seed, t, v


class DcfKey:
    """One party's keys for n comparisons: root seeds and the correction words both keys share.

    root (n, 2); cw (L, n, 2 + w) (or any sequence of L arrays (n, 2 + w)):
    per level the seed correction (2 words) and the payload correction (w
    words); t_cw (L, 2, n) uint8: the left and
    right control-bit corrections; leaf (n, w).
    """

    __slots__ = ("root", "cw", "t_cw", "leaf")

    def __init__(self, root, cw, t_cw, leaf):
        self.root, self.cw, self.t_cw, self.leaf = root, cw, t_cw, leaf

    @property
    def levels(self) -> int:
        return len(self.cw)

    @property
    def width(self) -> int:
        return self.leaf.shape[1]


def cw_shapes(n: int, levels: int, w: int) -> tuple[tuple, tuple]:
    """Shapes of the two uint64 arrays a DCF's public part travels in: (words, packed control bits)."""
    return (levels, n, 2 + w), (levels * 2 * ((n + 63) // 64) + n * w,)


def key_words(n: int, levels: int, w: int) -> int:
    """uint64 words of the correction words (what the dealer sends each evaluator) for n keys."""
    a, b = cw_shapes(n, levels, w)
    return int(np.prod(a)) + int(np.prod(b))


def pack_public(cw: np.ndarray, t_cw: np.ndarray, leaf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The key's public part as two uint64 arrays: (cw, packed control bits + leaf words)."""
    levels, _, n = t_cw.shape
    nw = (n + 63) // 64
    bits = np.zeros((levels, 2, nw * 64), np.uint8)
    bits[..., :n] = t_cw
    packed = np.packbits(bits, axis=-1, bitorder="little").view(np.uint64).reshape(-1)
    return np.ascontiguousarray(cw), np.concatenate([packed, leaf.reshape(-1)])


def unpack_public(root, cw: np.ndarray, tail: np.ndarray, w: int) -> DcfKey:
    levels, n = len(cw), cw[0].shape[0]
    nw = (n + 63) // 64
    packed = tail[: levels * 2 * nw]
    bits = np.unpackbits(np.ascontiguousarray(packed).view(np.uint8), bitorder="little")
    t_cw = bits.reshape(levels, 2, nw * 64)[..., :n]
    leaf = tail[levels * 2 * nw:].reshape(n, w)
    return DcfKey(root, cw, t_cw, leaf)


def _negate_where(values: np.ndarray, flag: np.ndarray) -> np.ndarray:
    """values * (-1)^flag mod 2^64 (flag 0/1 per row, broadcast over the last axis)."""
    return np.where(flag[..., None].astype(bool), _U64(0) - values, values)


def dcf_gen_reference(alpha: np.ndarray, beta: np.ndarray, levels: int, root0: np.ndarray, root1: np.ndarray):
    """NumPy twin of `dcf_gen` (the kernels' reference in tests).

    alpha (n,) uint64 below 2^levels; beta (n, w) uint64; root0, root1
    (n, 2) uint64: the two parties' root seeds (uniform, caller's PRG).
    Returns (cw, t_cw, leaf), the part both keys share (DcfKey's fields).
    Draws no randomness.
    """
    alpha = np.asarray(alpha, np.uint64)
    n, w = beta.shape
    if levels < 1 or levels > 63:
        raise ValueError(f"DCF input bits must be in 1..63, got {levels}")
    if np.any(alpha >> _U64(levels)):
        raise ValueError(f"alpha must be below 2^{levels}")
    s = np.stack([root0, root1]).astype(np.uint64)  # (2, n, 2)
    s[..., 0] &= _NOT_LSB
    t = np.zeros((2, n), np.uint64)
    t[1] = _ONE
    v_alpha = np.zeros((n, w), np.uint64)
    cw = np.empty((levels, n, 2 + w), np.uint64)
    t_cw = np.empty((levels, 2, n), np.uint8)
    sides = np.array([_LEFT, _RIGHT])[None, None, :]  # broadcast: (2 parties, n, 2 sides)
    for i in range(levels):
        a = (alpha >> _U64(levels - 1 - i)) & _ONE  # (n,)
        seeds, ts, vs = _expand(np.broadcast_to(s[:, :, None, :], (2, n, 2, 2)), sides, w)
        # seeds (2, n, 2 sides, 2), ts (2, n, 2), vs (2, n, 2, w)
        keep = a.astype(np.intp)
        lose = 1 - keep
        rows = np.arange(n)
        s_lose = seeds[:, rows, lose]  # (2, n, 2)
        s_keep = seeds[:, rows, keep]
        v_lose = vs[:, rows, lose]  # (2, n, w)
        v_keep = vs[:, rows, keep]
        t_keep = ts[:, rows, keep]  # (2, n)
        s_cw = s_lose[0] ^ s_lose[1]
        sign1 = t[1]
        v_cw = v_lose[1] - v_lose[0] - v_alpha
        v_cw = v_cw + np.where(a[:, None].astype(bool), beta, _U64(0))  # lose = left: x < alpha below here
        v_cw = _negate_where(v_cw, sign1)
        v_alpha = v_alpha - v_keep[1] + v_keep[0] + _negate_where(v_cw, sign1)
        tl_cw = ts[0, :, 0] ^ ts[1, :, 0] ^ a ^ _ONE
        tr_cw = ts[0, :, 1] ^ ts[1, :, 1] ^ a
        cw[i, :, :2] = s_cw
        cw[i, :, 2:] = v_cw
        t_cw[i, 0] = tl_cw
        t_cw[i, 1] = tr_cw
        t_keep_cw = np.where(keep.astype(bool), tr_cw, tl_cw)
        s = s_keep ^ (s_cw[None] * t[..., None])  # t is 0/1: the product selects
        t = t_keep ^ (t * t_keep_cw[None])
    _, _, conv = _expand(s, _LEAF, w, with_seed=False)  # (2, n, w)
    leaf = _negate_where(conv[1] - conv[0] - v_alpha, t[1])
    return cw, t_cw, leaf


def dcf_eval_reference(party_bit: int, key: DcfKey, x: np.ndarray) -> np.ndarray:
    """NumPy twin of `dcf_eval` (the kernels' reference in tests)."""
    x = np.asarray(x, np.uint64)
    levels, n, w = key.levels, key.leaf.shape[0], key.width
    if x.shape != (n,):
        raise ValueError(f"DCF evaluation needs {n} inputs, got shape {x.shape}")
    s = np.array(key.root, np.uint64)
    s[..., 0] &= _NOT_LSB
    t = np.full(n, party_bit, np.uint64)
    acc = np.zeros((n, w), np.uint64)
    rows = np.arange(n)
    for i in range(levels):
        side = ((x >> _U64(levels - 1 - i)) & _ONE).astype(np.intp)
        seed, t_new, v = _expand(s, side, w)
        level = key.cw[i]
        mask = t.astype(bool)
        seed[mask] ^= level[mask, :2]
        t_new ^= t & key.t_cw[i, side, rows].astype(np.uint64)
        v[mask] += level[mask, 2:]
        acc += v
        s, t = seed, t_new
    _, _, conv = _expand(s, _LEAF, w, with_seed=False)
    conv[t.astype(bool)] += key.leaf[t.astype(bool)]
    acc += conv
    return _U64(0) - acc if party_bit else acc


def _check_gen(alpha, beta, levels, root0, root1):
    n, w = beta.shape
    if not 1 <= levels <= 63:
        raise ValueError(f"DCF input bits must be in 1..63, got {levels}")
    if not 1 <= w <= 2 * (_MAX_TWEAKS - 1):
        raise ValueError(f"DCF payload width must be in 1..{2 * (_MAX_TWEAKS - 1)}, got {w}")
    if alpha.shape != (n,) or root0.shape != (n, 2) or root1.shape != (n, 2):
        raise ValueError(f"DCF gen: alpha {alpha.shape}, roots {root0.shape} {root1.shape} do not fit {n} keys")
    if n and np.any(alpha >> _U64(levels)):
        raise ValueError(f"alpha must be below 2^{levels}")


def dcf_gen(alpha: np.ndarray, beta: np.ndarray, levels: int, root0: np.ndarray, root1: np.ndarray):
    """Make n key pairs for f(x) = beta * [x < alpha] on `levels`-bit inputs.

    alpha (n,) uint64 below 2^levels; beta (n, w) uint64; root0, root1
    (n, 2) uint64: the two parties' root seeds (uniform, from the caller's
    PRG). Returns (cw, t_cw, leaf), the part both keys share (DcfKey's
    fields). Draws no randomness. Per level: one AES call over 2 x 2 x
    (1 + ceil(w/2)) blocks per key, then one kernel pass; all levels of
    one chunk of keys at a time (cache-resident, as dcf_eval).
    """
    alpha = np.ascontiguousarray(alpha, np.uint64)
    beta = np.ascontiguousarray(beta, np.uint64)
    _check_gen(alpha, beta, levels, root0, root1)
    n, w = beta.shape
    cw = np.empty((levels, n, 2 + w), np.uint64)
    t_cw = np.empty((levels, 2, n), np.uint8)
    leaf = np.empty((n, w), np.uint64)
    enc = Cipher(algorithms.AES(_FIXED_KEY), modes.ECB()).encryptor()
    for start in range(0, n, _EVAL_CHUNK):
        end = min(n, start + _EVAL_CHUNK)
        _gen_chunk(alpha[start:end], beta[start:end], levels, root0[start:end], root1[start:end], enc,
                   cw[:, start:end], t_cw[:, :, start:end], leaf[start:end])
    return cw, t_cw, leaf


def _gen_chunk(alpha, beta, levels, root0, root1, enc, cw_out, t_cw_out, leaf_out) -> None:
    n, w = beta.shape
    nb = 1 + _payload_blocks(w)
    s = np.stack([root0, root1]).astype(np.uint64)
    s[..., 0] &= _NOT_LSB
    t = np.zeros((2, n), np.uint64)
    t[1] = _ONE
    v_alpha = np.zeros((n, w), np.uint64)
    t_cw = np.empty((2, n), np.uint8)
    blocks = np.empty((2, n, 2, nb, 2), np.uint64)
    np.bitwise_xor(s[:, :, None, None, :], _TWEAKS[:2, :nb][None, None], out=blocks)
    flat = np.empty(blocks.size + 2, np.uint64)  # 15 spare bytes for update_into (older `cryptography`)
    g = flat[: blocks.size].reshape(blocks.shape)
    src, dst = memoryview(blocks.reshape(-1).view(np.uint8)), memoryview(flat.view(np.uint8))
    for i in range(levels):
        enc.update_into(src, dst)
        kernels.gen_level(g, blocks, alpha, levels - 1 - i, beta, s, t, v_alpha, cw_out[i], t_cw, _TWEAKS)
        t_cw_out[i] = t_cw
    _, _, conv = _expand(s, _LEAF, w, with_seed=False)
    leaf_out[:] = _negate_where(conv[1] - conv[0] - v_alpha, t[1])


def dcf_eval(party_bit: int, key: DcfKey, x: np.ndarray) -> np.ndarray:
    """This party's additive shares (n, w) of beta * [x < alpha] at public inputs x (n,) uint64.

    Per level: one kernel pass building the AES inputs of the side each
    element takes, one AES call over n (1 + ceil(w/2)) blocks, one kernel
    pass applying the corrections.
    """
    x = np.ascontiguousarray(x, np.uint64)
    n, w = key.leaf.shape[0], key.width
    if x.shape != (n,):
        raise ValueError(f"DCF evaluation needs {n} inputs, got shape {x.shape}")
    if party_bit not in (0, 1):
        raise ValueError(f"DCF evaluator must be 0 or 1, got {party_bit}")
    acc = np.empty((n, w), np.uint64)
    t_cw = np.ascontiguousarray(key.t_cw)
    enc = Cipher(algorithms.AES(_FIXED_KEY), modes.ECB()).encryptor()
    # All levels for one chunk of elements at a time: the chunk's seeds,
    # blocks and sums stay in cache, and only the correction words stream
    # from memory (level by level over all elements would be memory-bound).
    for start in range(0, n, _EVAL_CHUNK):
        end = min(n, start + _EVAL_CHUNK)
        acc[start:end] = _eval_chunk(party_bit, key, t_cw, x, start, end, enc)
    return _U64(0) - acc if party_bit else acc


def _eval_chunk(party_bit: int, key: DcfKey, t_cw: np.ndarray, x: np.ndarray, start: int, end: int, enc):
    levels, w = key.levels, key.width
    n = end - start
    nb = 1 + _payload_blocks(w)
    s = np.array(key.root[start:end], np.uint64)
    s[..., 0] &= _NOT_LSB
    t = np.full(n, party_bit, np.uint64)
    acc = np.zeros((n, w), np.uint64)
    x = x[start:end]
    blocks = np.empty((n, nb, 2), np.uint64)
    # update_into wants block_size - 1 spare bytes after the output (older `cryptography`).
    flat = np.empty(blocks.size + 2, np.uint64)
    aes_out = flat[: blocks.size].reshape(blocks.shape)
    src, dst = memoryview(blocks.reshape(-1).view(np.uint8)), memoryview(flat.view(np.uint8))
    kernels.eval_inputs(s, x, levels - 1, _TWEAKS, -1, blocks)
    for i in range(levels):
        enc.update_into(src, dst)
        kernels.eval_level(aes_out, blocks, key.cw[i][start:end], np.ascontiguousarray(t_cw[i, :, start:end]), x, levels - 1 - i, s, t,
                           acc, levels - 2 - i, _TWEAKS)
    # blocks now hold the leaf's inputs (side 2): its payload blocks give Convert(s).
    enc.update_into(src, dst)
    kernels.eval_leaf(aes_out, blocks, t, key.leaf[start:end], acc)
    return acc
